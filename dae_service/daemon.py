"""
L{Daemon}: a named service that listens on a Common TCP endpoint and answers
the built-in commands (C{dae}, C{whois}, C{options}) and those its author
declares with L{dae_service.command}.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .commands import CommandSpec, collectCommands
from .errors import Fault
from .interfaces import ICommandRouter, IDaemon
from .listening import ListenOutcome
from .stats import CommandStats
from .protocol import DEFAULT_MAX_PENDING, CommonTCPServerFactory

__all__ = ["Daemon", "DEFAULT_LISTEN"]

#: Where a daemon listens unless told otherwise: loopback, any free port.
DEFAULT_LISTEN = "tcp:0:interface=127.0.0.1"

#: Seconds of quiet after which a draining connection with nothing pending
#: is closed.
DRAIN_QUIET = 0.2

#: Seconds a stopping daemon gives its clients' pending commands.
DEFAULT_DRAIN_TIMEOUT = 5.0

_BUILTINS = frozenset({"dae", "whois", "options"})
_BUILTIN_REPLIES = frozenset({"credential", "commands", "fault", "error"})


def _isCoroutine(value: object) -> bool:
    return hasattr(value, "__await__") and hasattr(value, "send")


@implementer(IDaemon, ICommandRouter)
class Daemon(Service):
    """
    Subclass this and declare commands with L{dae_service.command}::

        class Store(Daemon):
            @command
            def get(self, key):
                return self.data.get(key)

    @ivar name: the daemon's name (the service name); the class name by
        default.
    @ivar listen: the server endpoint string it listens on.
    @ivar settings: the C{settings} table of its configuration (a dict).
    @ivar port: the bound TCP port once listening, else L{None}.
    @ivar created: ms since the epoch when it started (Node's C{created}).
    @ivar endpoint: an L{IStreamServerEndpoint} to listen on instead of
        parsing C{listen}, or L{None}: set before C{startService} by whoever
        runs the daemon (a pool worker adopts the pool's listening socket
        this way, and TLS wraps the endpoint here).
    """

    log = Logger()

    #: The commands declared on this class, by wire name (filled per class).
    commands: Mapping[str, CommandSpec] = {}

    endpoint: Optional[IStreamServerEndpoint] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.commands = collectCommands(cls, _BUILTINS)

    def __init__(
        self,
        name: Optional[str] = None,
        listen: str = DEFAULT_LISTEN,
        reactor: Any = None,
        *,
        settings: Optional[Mapping[str, Any]] = None,
        maxLength: int = wire.DEFAULT_MAX_LENGTH,
        maxPending: int = DEFAULT_MAX_PENDING,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.name = name or type(self).__name__
        self.listen = listen
        self.settings = dict(settings or {})
        self.maxLength = maxLength
        self.maxPending = maxPending
        self.drainTimeout = drainTimeout
        self.port: Optional[int] = None
        self.created: Optional[int] = None
        self._reactor = reactor
        self._environ = os.environ if environ is None else environ
        self._listen = ListenOutcome()
        #: Commands answered and faults sent, for the manager's metrics.
        self.commandStats = CommandStats()
        self._factory: Optional[CommonTCPServerFactory] = None
        self._bound: dict[str, Callable[..., Any]] = {}

    @property
    def reactor(self) -> Any:
        """
        The reactor this daemon runs on (the global one unless given).
        """
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # Lifecycle

    def startService(self) -> None:
        Service.startService(self)
        self.created = int(time.time() * 1000)
        self._bound = {
            spec.name: getattr(self, spec.attribute) for spec in self.commands.values()
        }
        self._factory = CommonTCPServerFactory(
            self, self.maxLength, self.maxPending, self.commandStats
        )
        endpoint = self.endpoint
        if endpoint is None:
            endpoint = serverFromString(self.reactor, self.listen)
        endpoint.listen(self._factory).addCallbacks(self._listened, self._listenFailed)

    def _listened(self, port: IListeningPort) -> None:
        self.port = getattr(port.getHost(), "port", None)
        self.log.info(
            "{name} listening on {address}", name=self.name, address=port.getHost()
        )
        self._listen.succeeded(port)

    def _listenFailed(self, failure: Failure) -> None:
        self.log.failure(
            "{name} cannot listen on {listen}", failure, name=self.name, listen=self.listen
        )
        self._listen.failed(failure)

    def whenListening(self) -> Deferred:
        """
        @return: a Deferred firing with the listening port, or failing with
            why it could not listen.
        """
        return self._listen.when()

    def stopService(self) -> Deferred:
        """
        Stop listening, let every client's pending commands finish (up to
        C{drainTimeout}), then close the connections.
        """
        Service.stopService(self)
        port = self._listen.release()
        # IListeningPort.stopListening may return a Deferred or None.
        stopped = succeed(None) if port is None else maybeDeferred(port.stopListening)
        connections = list(self._factory.connections) if self._factory else []
        closed = [c.whenClosed() for c in connections]
        for c in connections:
            # A connection accepted just before the stop may have its first
            # request in flight: give it a moment of quiet before closing.
            c.drain(self.reactor, DRAIN_QUIET)
        drained = DeferredList(closed)
        if connections:
            timer = self.reactor.callLater(self.drainTimeout, self._abort, connections)
            drained.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        self.port = None
        return DeferredList([stopped, drained]).addCallback(lambda _: None)

    def _abort(self, connections: list) -> None:
        for c in connections:
            if not c.closed:
                self.log.warn("{name}: aborting a connection still busy", name=self.name)
                c.transport.abortConnection()

    # ICommandRouter

    def dispatch(self, connection: Any, name: str, args: list) -> Any:
        spec = self.commands.get(name)
        if spec is None:
            builtin = _BUILTIN_HANDLERS.get(name)
            if builtin is None:
                raise Fault(wire.UNKNOWN_COMMAND, f"unknown command {name!r}", name)
            if args:
                raise Fault(wire.BAD_ARGS, f"{name} takes 0 arguments ({len(args)} given)", name)
            return builtin(self)
        n = len(args)
        if n < spec.required or (spec.maximum is not None and n > spec.maximum):
            raise Fault(wire.BAD_ARGS, spec.countProblem(n), name)
        handler = self._bound[name]
        if spec.connection:
            result = handler(connection, *args)
        else:
            result = handler(*args)
        reply = spec.reply
        if isinstance(result, Deferred):
            return result.addCallback(_encodeReply, reply)
        if _isCoroutine(result):
            return ensureDeferred(result).addCallback(_encodeReply, reply)
        return _encodeReply(result, reply)

    def closesConnection(self, name: str) -> bool:
        return name == "dae"

    def isEventName(self, name: str) -> bool:
        if name in _BUILTIN_REPLIES:
            return False
        return not any(spec.reply == name for spec in self.commands.values())

    # Built-ins

    def credential(self) -> dict:
        """
        The C{whois} entry (never a secret).
        """
        return {
            "name": self.name,
            "pid": os.getpid(),
            "port": self.port,
            "created": self.created,
        }

    def _dae(self) -> bytes:
        secret = self._environ.get("DAE_SECRET")
        return wire.encode("credential", [self.name, os.getpid(), self.port, secret])

    def _whois(self) -> bytes:
        return wire.encode("credential", [self.credential()])

    def _options(self) -> bytes:
        table = {"whois": 0, "options": 0, "dae": 0}
        for spec in self.commands.values():
            table[spec.name] = spec.required
        return wire.encode("commands", [table])

    def broadcast(self, name: str, *args: Any) -> int:
        """
        Send event C{name} to every connected client.

        @return: how many clients it was sent to.
        """
        connections = list(self._factory.connections) if self._factory else []
        for c in connections:
            c.sendEvent(name, list(args))
        return len(connections)


_BUILTIN_HANDLERS = {
    "dae": Daemon._dae,
    "whois": Daemon._whois,
    "options": Daemon._options,
}

_dumps = wire._dumps


def _encodeReply(value: Any, name: str) -> bytes:
    """
    The reply packet C{name [value]}; an unencodable value is the handler's
    bug, reported as an internal fault by the protocol.
    """
    return b"%s [%s]\n" % (name.encode("utf-8"), _dumps(value).encode("ascii"))

