"""
Finding daemon classes: C{"package.module:Class"} references, and daemon
types that installed packages offer as Twisted plugins.
"""

from __future__ import annotations

import importlib
from typing import Optional

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from .interfaces import IDaemonType

__all__ = ["DaemonType", "LoadError", "resolveDaemon", "resolveClasses", "daemonTypes"]


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


def _importReference(reference: str) -> type:
    from .daemon import Daemon

    moduleName, _, className = reference.partition(":")
    try:
        module = importlib.import_module(moduleName)
    except Exception as e:
        raise LoadError(f"cannot import {moduleName!r}: {type(e).__name__}: {e}") from e
    cls = module
    for part in className.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise LoadError(f"module {moduleName!r} has no attribute {className!r}")
    if not (isinstance(cls, type) and issubclass(cls, Daemon)):
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


def resolveClasses(config) -> dict[str, type]:
    """
    The Daemon subclass of every C{daemon = ...} entry of a
    L{dae_service.config.DaeConfig}, by daemon name.

    @raise LoadError: naming the file and key of every entry that cannot be
        resolved, one per line.
    """
    classes = {}
    problems = []
    types = None
    for d in config.daemons:
        if d.daemon is None:
            continue
        if ":" not in d.daemon and types is None:
            types = daemonTypes()
        try:
            classes[d.name] = resolveDaemon(d.daemon, types)
        except LoadError as e:
            problems.append(f"{config.path}: daemons.{d.name}.daemon: {e}")
    if problems:
        raise LoadError("\n".join(problems))
    return classes
