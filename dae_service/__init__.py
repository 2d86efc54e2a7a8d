"""
dae_service: a Twisted-native environment for long-running network daemons
that speak Common TCP.

The public API::

    from dae_service import Daemon, command, Guest, Fault

Names are imported on first use, so that C{python -m dae_service.child} can
detach into its own process group before Twisted is imported.
"""

import importlib

_PUBLIC = {
    "Daemon": ".daemon",
    "command": ".commands",
    "Guest": ".guest",
    "Fault": ".errors",
    "DaeError": ".errors",
    "CallTimeout": ".errors",
    "GuestConnectionLost": ".errors",
    "TooManyPending": ".errors",
}

__all__ = list(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dae_service' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
