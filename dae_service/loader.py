"""
Finding what a config runs: daemon classes (C{"package.module:Class"}
references, and daemon types that installed packages offer as Twisted
plugins) and plain Twisted server factories (C{factory = "module:name"}, or
a C{daemon} reference that names a protocol factory).

A factory reference names one of:

  - an object providing L{IProtocolFactory} (a module-level C{Site}), used
    as it is;
  - a class implementing L{IProtocolFactory} (a C{Factory} subclass),
    instantiated with no arguments;
  - for C{factory} only, any other callable, called with the daemon's
    C{settings} dict and returning an L{IProtocolFactory} provider.
"""

from __future__ import annotations

import importlib
from typing import Optional

from typing import Any, Mapping

from twisted.internet.interfaces import IProtocolFactory
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from .interfaces import IDaemonType

__all__ = [
    "DaemonType",
    "LoadError",
    "resolveDaemon",
    "resolveServer",
    "resolveClasses",
    "daemonTypes",
    "isDaemonClass",
    "makeFactory",
]


class LoadError(Exception):
    """
    A daemon reference could not be turned into a Daemon subclass; the
    message says why.
    """


@implementer(IPlugin, IDaemonType)
class DaemonType:
    """
    A daemon type offered by a plugin.  Lazy: the module is imported only
    when a config uses it.  In C{yourpackage/../twisted/plugins/yours.py}::

        from dae_service.loader import DaemonType
        store = DaemonType("store", "yourpackage.store:Store", "A key-value store")
    """

    def __init__(self, name: str, reference: str, description: str = "") -> None:
        self.name = name
        self.reference = reference
        self.description = description

    def load(self) -> type:
        return _importReference(self.reference)


def daemonTypes() -> dict[str, IDaemonType]:
    """
    Every daemon type offered by installed plugins, by name.
    """
    return {t.name: t for t in getPlugins(IDaemonType)}


def _importObject(reference: str) -> Any:
    moduleName, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(moduleName)
    except Exception as e:
        raise LoadError(f"cannot import {moduleName!r}: {type(e).__name__}: {e}") from e
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise LoadError(f"module {moduleName!r} has no attribute {attribute!r}")
    return found


def isDaemonClass(value: Any) -> bool:
    """
    Is C{value} a L{dae_service.Daemon} subclass?
    """
    from .daemon import Daemon

    return isinstance(value, type) and issubclass(value, Daemon)


def _isFactory(value: Any) -> bool:
    if isinstance(value, type):
        return IProtocolFactory.implementedBy(value)
    return IProtocolFactory.providedBy(value)


def _importReference(reference: str) -> type:
    cls = _importObject(reference)
    if not isDaemonClass(cls):
        raise LoadError(f"{reference!r} is not a dae_service.Daemon subclass")
    return cls


def resolveDaemon(reference: str, types: Optional[dict] = None) -> type:
    """
    The Daemon subclass a config's C{daemon} value names: C{"module:Class"},
    or the name of a plugin daemon type.

    @raise LoadError: with a message fit for a config error.
    """
    if ":" in reference:
        return _importReference(reference)
    types = daemonTypes() if types is None else types
    daemonType = types.get(reference)
    if daemonType is None:
        known = ", ".join(sorted(types)) or "none installed"
        raise LoadError(f"no daemon type named {reference!r} (known: {known})")
    return daemonType.load()


def resolveServer(reference: str, types: Optional[dict] = None, *, factory: bool = False) -> Any:
    """
    What a config's C{daemon} value (or, with C{factory=True}, its
    C{factory} value) names: a Daemon subclass, or a protocol factory
    source (see the module docstring) for L{makeFactory}.

    @raise LoadError: with a message fit for a config error.
    """
    if not factory and ":" not in reference:
        return resolveDaemon(reference, types)
    found = _importObject(reference)
    if isDaemonClass(found) or _isFactory(found):
        return found
    if factory and callable(found):
        return found
    if factory:
        raise LoadError(
            f"{reference!r} is neither a protocol factory nor a callable returning one"
        )
    raise LoadError(
        f"{reference!r} is not a dae_service.Daemon subclass nor a protocol factory"
    )


def makeFactory(source: Any, settings: Mapping[str, Any]) -> Any:
    """
    The L{IProtocolFactory} that C{source} (from L{resolveServer}, not a
    Daemon class) stands for: itself, an instance of it, or what calling it
    with C{settings} returns.

    @raise LoadError: if a callable returns something else.
    """
    if isinstance(source, type) and IProtocolFactory.implementedBy(source):
        return source()
    if IProtocolFactory.providedBy(source):
        return source
    made = source(dict(settings))
    if not IProtocolFactory.providedBy(made):
        raise LoadError(f"{source!r} returned {made!r}, which is not a protocol factory")
    return made


def resolveClasses(config) -> dict[str, Any]:
    """
    What every C{daemon = ...} and C{factory = ...} entry of a
    L{dae_service.config.DaeConfig} names (a Daemon subclass or a factory
    source, see L{resolveServer}), by daemon name.

    @raise LoadError: naming the file and key of every entry that cannot be
        resolved, one per line.
    """
    classes = {}
    problems = []
    types = None
    for d in config.daemons:
        reference = d.daemon if d.daemon is not None else d.factory
        if reference is None:
            continue
        key = "daemon" if d.daemon is not None else "factory"
        if d.daemon is not None and ":" not in d.daemon and types is None:
            types = daemonTypes()
        try:
            classes[d.name] = resolveServer(reference, types, factory=d.factory is not None)
        except LoadError as e:
            problems.append(f"{config.path}: daemons.{d.name}.{key}: {e}")
    if problems:
        raise LoadError("\n".join(problems))
    return classes
