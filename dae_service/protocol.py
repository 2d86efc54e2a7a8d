"""
The server side of a Common TCP connection: framing (through
L{dae_service.wire}), one reply per command in command order, faults,
half-close, and backpressure.  What a command I{does} is the router's job
(L{dae_service.interfaces.ICommandRouter}).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .errors import Fault
from .interfaces import IConnection
from .stats import CommandStats

__all__ = ["CommonTCPServerProtocol", "CommonTCPServerFactory", "DEFAULT_MAX_PENDING"]

#: Commands a connection may have unanswered before the daemon stops reading
#: from it.  Reading resumes when half of them are answered.
DEFAULT_MAX_PENDING = 1000

#: Bytes of events a client may leave unread (queued while its send buffer
#: is full) before it is disconnected.
MAX_EVENT_BACKLOG = 1024 * 1024

_PENDING = object()


@implementer(IPushProducer)
class _WriteBackpressure:
    """
    Registered with the transport as its producer, so that a client that does
    not read its replies stops being read from.
    """

    def __init__(self, protocol: "CommonTCPServerProtocol") -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol._pauseReading("writes")

    def resumeProducing(self) -> None:
        self._protocol._resumeReading("writes")

    def stopProducing(self) -> None:
        pass


@implementer(IConnection, IHalfCloseableProtocol)
class CommonTCPServerProtocol(Protocol):
    """
    One client connection to a daemon.

    @ivar router: the L{ICommandRouter} that runs commands.
    """

    log = Logger()

    def __init__(
        self,
        router,
        maxLength: int = wire.DEFAULT_MAX_LENGTH,
        maxPending: int = DEFAULT_MAX_PENDING,
        stats: Optional[CommandStats] = None,
    ) -> None:
        """
        @param stats: where to count every command received and every fault
            sent (wire faults included), if anywhere.
        """
        self.router = router
        self.stats = stats
        self.maxPending = maxPending
        self._parser = wire.PacketParser(maxLength)
        # Replies not yet written, in command order: bytes, or _PENDING while
        # the handler's Deferred runs.  Only non-empty while something waits.
        self._slots: deque = deque()
        self._deferreds: set[Deferred] = set()
        self._pauses: set[str] = set()
        self._closeWhenFlushed = False
        self._readClosed = False
        self._closedWaiters: list[Deferred] = []
        self.closed = False
        self.peer = None
        # Set while draining with a quiet period (see drain).
        self._drainClock: Any = None
        self._drainQuiet = 0.0
        self._lastActivity = 0.0
        self._drainCall: Any = None
        # Bytes of events written while the client was not reading.
        self._eventBacklog = 0
        self._producer: Optional[_WriteBackpressure] = None

    # IProtocol

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        # Replies are small and awaited: never hold them back for Nagle.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:
                pass
        self._producer = _WriteBackpressure(self)
        self.transport.registerProducer(self._producer, True)

    def dataReceived(self, data: bytes) -> None:
        if self._drainClock is not None:
            self._lastActivity = self._drainClock.seconds()
        if not self._closeWhenFlushed:
            self._handle(self._parser.feed(data))

    def readConnectionLost(self) -> None:
        """
        The client half-closed: the end of input ends its last packet; answer
        everything it sent, then close.
        """
        self._readClosed = True
        if not self._closeWhenFlushed:
            self._handle(self._parser.finish())
        self._flush()

    def writeConnectionLost(self) -> None:
        self._close()

    def connectionLost(self, reason: Failure = None) -> None:
        self.closed = True
        if self._drainCall is not None and self._drainCall.active():
            self._drainCall.cancel()
        self._drainCall = None
        deferreds = list(self._deferreds)
        self._deferreds.clear()
        self._slots.clear()
        for d in deferreds:
            d.cancel()
        waiters, self._closedWaiters = self._closedWaiters, []
        for w in waiters:
            w.callback(None)

    def _handle(self, items: list) -> None:
        """
        Answer decoded packets in order: synchronous replies are batched into
        one write; a Deferred reply holds a slot that later ones queue behind.
        """
        out: list[bytes] = []
        slots = self._slots
        router = self.router
        stats = self.stats
        Packet = wire.Packet
        for item in items:
            if type(item) is Packet:
                name = item.name
                if stats is not None:
                    stats.command(name)
                try:
                    result = router.dispatch(self, name, item.args)
                except Fault as f:
                    result = wire.encodeFault(f.command or name, f.code, f.message)
                    if stats is not None:
                        stats.fault(f.code)
                except Exception:
                    result = self._internal(name, Failure())
                else:
                    # Node's dae: its reply is the last one on this connection
                    # (a fault, e.g. "dae [1]", never closes it).
                    if router.closesConnection(name):
                        self._closeWhenFlushed = True
            else:
                name = item.command
                result = wire.encodeFault(name, item.code, item.message)
                if stats is not None:
                    stats.fault(item.code)
                if item.code == wire.TOO_LONG:
                    self._closeWhenFlushed = True
            if type(result) is bytes and not slots:
                out.append(result)
            else:
                if out:
                    self.transport.write(b"".join(out))
                    out = []
                self._enqueue(name, result)
            if self._closeWhenFlushed:
                break
        if out:
            self.transport.write(b"".join(out))
        if self._closeWhenFlushed:
            self._pauseReading("closing")
            self._flush()
        elif len(slots) >= self.maxPending:
            self._pauseReading("pending")

    # IConnection

    def sendEvent(self, name: str, args: list) -> None:
        """
        Push an event now.  A client that does not read its events is not
        buffered for without bound: once L{MAX_EVENT_BACKLOG} bytes of
        events were queued while its send buffer was full, it is
        disconnected (like a Redis client over its output buffer limit).
        """
        if not self.router.isEventName(name):
            raise ValueError(f"{name!r} is a reply name and cannot be used for an event")
        if self.closed:
            return
        data = wire.encode(name, args)
        if "writes" in self._pauses:
            self._eventBacklog += len(data)
            if self._eventBacklog > MAX_EVENT_BACKLOG:
                self.log.warn(
                    "Disconnecting {peer}: it does not read its events "
                    "({size} bytes queued)",
                    peer=self.peer,
                    size=self._eventBacklog,
                )
                self.transport.abortConnection()
                return
        self.transport.write(data)

    @property
    def writeBlocked(self) -> bool:
        """
        Is the transport's send buffer full (the client is not reading)?
        Pushers of events use it to drop rather than buffer without bound.
        """
        return "writes" in self._pauses

    def whenClosed(self) -> Deferred:
        d = Deferred()
        if self.closed:
            d.callback(None)
        else:
            self._closedWaiters.append(d)
        return d

    def drain(self, clock: Any = None, quiet: float = 0.0) -> None:
        """
        Answer what was received, then close.

        With a C{clock} and C{quiet} seconds, keep reading until the client
        has been quiet that long (and everything is answered) before
        closing: a client that connected just before a drain began has its
        request in flight, and closing at once would lose it.  Whoever
        drains bounds the whole with a deadline of its own.
        """
        if clock is None or quiet <= 0:
            self._closeNow()
            return
        self._drainClock = clock
        self._drainQuiet = quiet
        self._lastActivity = clock.seconds()
        self._drainCheck()

    def _closeNow(self) -> None:
        self._closeWhenFlushed = True
        self._pauseReading("closing")
        self._flush()

    def _drainCheck(self) -> None:
        self._drainCall = None
        if self.closed or self._closeWhenFlushed:
            return
        quietFor = self._drainClock.seconds() - self._lastActivity
        if not self._slots and quietFor >= self._drainQuiet:
            self._closeNow()
            return
        wait = max(self._drainQuiet - quietFor, self._drainQuiet / 4)
        self._drainCall = self._drainClock.callLater(wait, self._drainCheck)

    # Internals

    def _internal(self, name: str, failure: Failure) -> bytes:
        if self.stats is not None:
            self.stats.fault(wire.INTERNAL)
        self.log.failure(
            "Command {command} from {peer} raised", failure, command=name, peer=self.peer
        )
        return wire.encodeFault(
            name, wire.INTERNAL, f"{name} failed: {failure.type.__name__}"
        )

    def _enqueue(self, name: Optional[str], result) -> None:
        """
        Queue a reply behind the ones still pending.  Each slot is a
        one-element list, filled in place when its Deferred fires.
        """
        if not isinstance(result, Deferred):
            self._slots.append([result])
            return
        slot = [_PENDING]
        self._slots.append(slot)
        self._deferreds.add(result)

        def done(value):
            self._deferreds.discard(result)
            if type(value) is not bytes:
                raise TypeError(f"router returned {type(value).__name__} for {name}")
            slot[0] = value

        def failed(f: Failure):
            self._deferreds.discard(result)
            if f.check(CancelledError) and self.closed:
                return
            if f.check(Fault):
                slot[0] = wire.encodeFault(f.value.command or name, f.value.code, f.value.message)
                if self.stats is not None:
                    self.stats.fault(f.value.code)
            else:
                slot[0] = self._internal(name, f)

        result.addCallback(done).addErrback(failed).addCallback(lambda _: self._flush())

    def _flush(self) -> None:
        slots = self._slots
        out = []
        while slots and slots[0][0] is not _PENDING:
            out.append(slots.popleft()[0])
        if self.closed:
            return
        if out:
            self.transport.write(b"".join(out))
        if slots:
            if len(slots) <= self.maxPending // 2:
                self._resumeReading("pending")
            return
        self._resumeReading("pending")
        if self._closeWhenFlushed or self._readClosed:
            self._close()

    def _close(self) -> None:
        # A transport with a registered producer never closes (and one whose
        # producer is paused would resume it instead): unregister it first.
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _pauseReading(self, reason: str) -> None:
        if not self._pauses:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def _resumeReading(self, reason: str) -> None:
        if reason == "writes":
            self._eventBacklog = 0
        if reason in self._pauses:
            self._pauses.discard(reason)
            if not self._pauses and not self.closed:
                self.transport.resumeProducing()


class CommonTCPServerFactory(Factory):
    """
    Builds a L{CommonTCPServerProtocol} per connection and keeps track of
    the open ones, so the daemon can drain them when it stops.
    """

    noisy = False

    def __init__(
        self, router, maxLength: int, maxPending: int, stats: Optional[CommandStats] = None
    ) -> None:
        self.router = router
        self.maxLength = maxLength
        self.maxPending = maxPending
        self.stats = stats
        self.connections: set[CommonTCPServerProtocol] = set()

    def buildProtocol(self, addr) -> CommonTCPServerProtocol:
        p = CommonTCPServerProtocol(self.router, self.maxLength, self.maxPending, self.stats)
        p.factory = self
        self.connections.add(p)
        p.whenClosed().addCallback(lambda _: self.connections.discard(p))
        return p
