"""
L{FactoryServer}: any Twisted server factory (a C{twisted.web} C{Site}, a
plain C{Factory}) run the way the manager runs a L{dae_service.Daemon}: a
named service that listens on an endpoint string (or on the C{endpoint} a
pool worker adopted), says when it listens, and on stop drains: it stops
accepting, lets the open connections finish up to C{drainTimeout}, then
aborts what is left.

Draining knows HTTP: a C{twisted.web} connection answers its request in
progress, and any request that arrives during the drain, with
C{Connection: close} and then closes, so a client under load never sees a
connection drop between two requests; a connection idle for a whole
L{IDLE_TICK} is closed.  Any other protocol is left to finish (or the
client to close) until the deadline.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IDaemon
from .listening import ListenOutcome

__all__ = ["FactoryServer", "IDLE_TICK"]

#: Seconds between two looks at a draining server's idle HTTP connections:
#: one idle at two looks in a row (so for at least this long) is closed.
IDLE_TICK = 0.5


@implementer(IProtocolFactory)
class _TrackingFactory:
    """
    Builds protocols with C{wrapped} and keeps the open ones in
    C{connections}, for an endpoint whose ports do not count them (a pool
    worker's do, see L{dae_service.workerport}).  It adds nothing on the
    data path: each protocol's own C{connectionLost} is hooked once, at
    build time.
    """

    def __init__(self, wrapped: Any, onEmpty: Any) -> None:
        self.wrapped = wrapped
        self.connections: set = set()
        self._onEmpty = onEmpty

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if callable(prefix) else type(self.wrapped).__name__

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        self.connections.add(protocol)
        lost = protocol.connectionLost

        def connectionLost(reason: Any) -> Any:
            # Back to the class's method, then the bookkeeping.
            del protocol.connectionLost
            try:
                return lost(reason)
            finally:
                self.connections.discard(protocol)
                if not self.connections:
                    self._onEmpty()

        protocol.connectionLost = connectionLost
        return protocol


def _httpChannel(protocol: Any) -> Any:
    """
    The L{HTTPChannel} serving C{protocol}'s connection, or L{None}.  Under
    TLS the protocol is in the TLS protocol's C{wrappedProtocol}; and a
    C{Site} builds its channels inside a wrapper that can switch to HTTP/2
    (C{_GenericHTTPChannelProtocol}, which keeps the channel in
    C{_channel}).  An HTTP/2 connection is drained like any other protocol.
    """
    from twisted.web.http import HTTPChannel

    for _ in range(3):
        if isinstance(protocol, HTTPChannel):
            return protocol
        protocol = getattr(protocol, "wrappedProtocol", None) or getattr(
            protocol, "_channel", None
        )
        if protocol is None:
            return None
    return None


def _closeAfterResponse(request: Any, version: bytes) -> bool:
    """
    C{HTTPChannel.checkPersistence} for a draining server: every response
    says C{Connection: close}, and the channel closes after it.
    """
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    return False


def _drainHTTP(channel: Any) -> None:
    channel.checkPersistence = _closeAfterResponse
    if channel.requests:
        channel.persistent = False
        for request in channel.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])


@implementer(IDaemon)
class FactoryServer(Service):
    """
    Serves C{factory} on C{listen} (or on C{endpoint}, when set before
    C{startService}), like a L{dae_service.Daemon} without Common TCP.

    @ivar port: the bound TCP port once listening, else L{None}.
    @ivar created: ms since the epoch when it started.
    """

    log = Logger()

    endpoint: Optional[IStreamServerEndpoint] = None

    def __init__(
        self,
        name: str,
        listen: str,
        reactor: Any,
        factory: Any,
        *,
        drainTimeout: float = 5.0,
        settings: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.reactor = reactor
        self.factory = factory
        self.drainTimeout = drainTimeout
        self.settings = dict(settings or {})
        self.port: Optional[int] = None
        self.created: Optional[int] = None
        self._tracking: Optional[_TrackingFactory] = None
        self._countingPort: Any = None
        self._listen = ListenOutcome()
        self._emptyWaiters: list[Deferred] = []
        self._timers: list[Any] = []
        self._idleAtLastTick: set = set()

    @property
    def connections(self) -> set:
        """
        The protocols of the open connections (under TLS, the TLS
        protocols).
        """
        if self._countingPort is not None:
            return {t.protocol for t in self._countingPort.connections}
        return self._tracking.connections if self._tracking is not None else set()

    def startService(self) -> None:
        Service.startService(self)
        self.created = int(time.time() * 1000)
        endpoint = self.endpoint
        if endpoint is None:
            endpoint = serverFromString(self.reactor, self.listen)
        if getattr(endpoint, "countsConnections", False):
            factory = self.factory
        else:
            factory = self._tracking = _TrackingFactory(self.factory, self._maybeEmpty)
        endpoint.listen(factory).addCallbacks(self._listened, self._failedToListen)

    def _listened(self, port: Any) -> None:
        if self._tracking is None:
            self._countingPort = port
            port.observers.append(lambda count: None if count else self._maybeEmpty())
        self.port = getattr(port.getHost(), "port", None)
        self.log.info("{name} listening on {address}", name=self.name, address=port.getHost())
        self._listen.succeeded(port)

    def _failedToListen(self, failure: Failure) -> None:
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

    def credential(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "port": self.port, "created": self.created}

    # Stopping

    def stopService(self) -> Deferred:
        """
        Stop accepting, drain the open connections (see the module
        docstring) for up to C{drainTimeout} seconds, abort what is left.

        @return: a Deferred that fires once every connection is closed.
        """
        Service.stopService(self)
        port = self._listen.release()
        stopped = succeed(None) if port is None else maybeDeferred(port.stopListening)
        self.port = None
        connections = list(self.connections)
        if not connections:
            return stopped
        drained: Deferred = Deferred()
        self._emptyWaiters.append(drained)
        for protocol in connections:
            channel = _httpChannel(protocol)
            if channel is not None:
                _drainHTTP(channel)
        self._idleAtLastTick = {p for p in connections if self._idleHTTP(p)}
        self._timers = [
            self.reactor.callLater(self.drainTimeout, self._abortAll),
            self.reactor.callLater(IDLE_TICK, self._tick),
        ]
        return stopped.addCallback(lambda _: drained)

    def _idleHTTP(self, protocol: Any) -> bool:
        channel = _httpChannel(protocol)
        return channel is not None and not channel.requests

    def _tick(self) -> None:
        idle = {p for p in self.connections if self._idleHTTP(p)}
        for protocol in idle & self._idleAtLastTick:
            _httpChannel(protocol).loseConnection()
        self._idleAtLastTick = idle
        self._timers = [t for t in self._timers if t.active()]
        if self.connections:
            self._timers.append(self.reactor.callLater(IDLE_TICK, self._tick))

    def _abortAll(self) -> None:
        left = list(self.connections)
        if left:
            self.log.warn(
                "{name}: aborting {count} connections still open after {timeout:g} s",
                name=self.name,
                count=len(left),
                timeout=self.drainTimeout,
            )
        for protocol in left:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()

    def _maybeEmpty(self) -> None:
        if self.connections or not self._emptyWaiters:
            return
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        waiters, self._emptyWaiters = self._emptyWaiters, []
        for d in waiters:
            d.callback(None)
