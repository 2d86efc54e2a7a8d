"""
twistd integration: C{twistd -n dae --config FILE}.

L{Options} validates the whole config (and resolves every daemon class)
before anything starts, so a bad file exits non-zero with a message naming
the file, the key and the problem.  L{makeService} builds the tree.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .config import ConfigError, DaeConfig, loadConfig
from .loader import LoadError, resolveClasses
from .manager import Dae

__all__ = ["Options", "makeService", "buildTree"]


class Options(usage.Options):
    """
    Command line of C{twistd dae}.
    """

    synopsis = "--config FILE"
    longdesc = "Run the tree of Common TCP daemons described by a TOML file."
    optParameters = [
        ["config", "c", None, "The TOML file describing the tree (required)."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if not path:
            raise usage.UsageError("--config FILE is required")
        try:
            config = loadConfig(path)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e
        except OSError as e:
            raise usage.UsageError(f"{path}: cannot read the config: {e.strerror}") from e
        try:
            self["classes"] = resolveClasses(config)
        except LoadError as e:
            raise usage.UsageError(str(e)) from e
        self["tree"] = config


def buildTree(config: DaeConfig, classes: dict[str, type], reactor: Any) -> IService:
    """
    The service tree for C{config}: the L{Dae} manager, which runs every
    daemon as a supervised child process.
    """
    return Dae(config, classes, reactor)


def makeService(options: Options) -> IService:
    """
    twistd's entry point.
    """
    from twisted.internet import reactor

    return buildTree(options["tree"], options["classes"], reactor)
