"""
In-memory testing helpers for daemon authors: talk to a L{Daemon} through a
real L{GuestProtocol} and the daemon's real server protocol, connected by
L{twisted.test.iosim} instead of sockets, on a L{task.Clock} instead of real
time.

Example, in a trial test::

    from twisted.trial.unittest import SynchronousTestCase
    from dae_service import Daemon, Fault, command
    from dae_service.testing import callCommand, connectDaemon

    class Store(Daemon):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.data = {}

        @command
        def set(self, key, value):
            self.data[key] = value
            return True

        @command
        def get(self, key):
            if key not in self.data:
                raise Fault("not_found", f"no key {key!r}")
            return self.data[key]

    class StoreTests(SynchronousTestCase):
        def test_roundTrip(self):
            conn = connectDaemon(Store())
            self.assertTrue(self.successResultOf(conn.call("set", "k", 1)))
            self.assertEqual(self.successResultOf(conn.call("get", "k")), 1)

        def test_missing(self):
            f = self.failureResultOf(callCommand(Store(), "get", "nope"), Fault)
            self.assertEqual(f.value.code, "not_found")

By default a connection pumps itself: whatever either side writes is
delivered at once, so a synchronous handler's reply is already there when
C{call} returns, and a handler's Deferred fired later by the test delivers
its reply when it fires.  Pass C{autoPump=False} to move bytes only when you
call L{DaemonConnection.pump} (e.g. to have several replies arrive in one
read).  Timeouts run on C{conn.clock}: C{conn.clock.advance(30)}.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.test import iosim

from .guest import GuestProtocol
from .protocol import CommonTCPServerFactory, CommonTCPServerProtocol

__all__ = ["DaemonConnection", "connectDaemon", "callCommand"]


def _prepareDaemon(daemon: Any, reactor: Any) -> CommonTCPServerFactory:
    """
    Make C{daemon} ready to answer connections without a socket.

    A daemon made without a reactor is given C{reactor}; when that is a
    L{MemoryReactor} (the default is a L{MemoryReactorClock}) the daemon is
    really started, so the author's C{startService} runs and its listen is
    only recorded.  Otherwise its handlers are bound without starting it.
    """
    if daemon._factory is None:
        if daemon._reactor is None:
            daemon._reactor = reactor
        if not daemon.running and isinstance(daemon._reactor, MemoryReactor):
            daemon.startService()
            return daemon._factory
        if daemon.created is None:
            daemon.created = int(time.time() * 1000)
        daemon._bound = {
            spec.name: getattr(daemon, spec.attribute) for spec in daemon.commands.values()
        }
        daemon._factory = CommonTCPServerFactory(
            daemon, daemon.maxLength, daemon.maxPending, daemon.commandStats
        )
    return daemon._factory


class _PumpingTransport(iosim.FakeTransport):
    """
    An iosim transport that asks its connection to pump whenever something is
    written or the connection is closed.
    """

    connection: Optional["DaemonConnection"] = None

    def write(self, data: bytes) -> None:
        super().write(data)
        self._kick()

    def loseConnection(self) -> None:
        super().loseConnection()
        self._kick()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._kick()

    def _kick(self) -> None:
        if self.connection is not None:
            self.connection._written()


class _RecordingGuestProtocol(GuestProtocol):
    """
    A L{GuestProtocol} that keeps every byte it receives.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receivedChunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.receivedChunks.append(data)
        super().dataReceived(data)


class DaemonConnection:
    """
    One in-memory connection from a guest to a daemon.

    @ivar daemon: the daemon.
    @ivar client: the L{GuestProtocol} making the calls.
    @ivar server: the daemon's L{CommonTCPServerProtocol} for this
        connection (an L{IConnection}: what a C{connection=True} handler is
        given).
    @ivar clock: the reactor used for call timeouts (a L{task.Clock} unless
        another was given).
    @ivar events: every event the guest received, as C{(name, args)}.
    @ivar autoPump: whether writes are delivered at once.
    """

    def __init__(self, daemon: Any, reactor: Any = None, *, autoPump: bool = True) -> None:
        self.daemon = daemon
        self.clock = MemoryReactorClock() if reactor is None else reactor
        self.autoPump = autoPump
        self.events: list[tuple[str, list]] = []
        factory = _prepareDaemon(daemon, self.clock)
        self.server: CommonTCPServerProtocol = factory.buildProtocol(iosim.FakeAddress())
        self.client = _RecordingGuestProtocol(self.clock)
        self.client.addEventListener("*", lambda name, args: self.events.append((name, args)))
        self._serverTransport = _PumpingTransport(self.server, isServer=True)
        self._clientTransport = _PumpingTransport(self.client, isServer=False)
        self._pumping = False
        # IOPump advances its clock by 0 on every pump, running callLater(0)s.
        pumpClock = self.clock if hasattr(self.clock, "advance") else None
        self._pump = iosim.connect(
            self.server,
            self._serverTransport,
            self.client,
            self._clientTransport,
            greet=False,
            clock=pumpClock,
        )
        self._serverTransport.connection = self
        self._clientTransport.connection = self
        self.pump()

    def call(
        self, name: str, *args: Any, timeout: Optional[float] = None, reply: Optional[str] = None
    ) -> Deferred:
        """
        Call command C{name} with C{args} and pump, as
        L{GuestProtocol.call}.
        """
        d = self.client.call(name, *args, timeout=timeout, reply=reply)
        self.pump()
        return d

    def sendRaw(self, data: bytes) -> None:
        """
        Send C{data} to the daemon as is, bypassing the guest's call
        matching: replies to it show up in L{received} (and, when they answer
        no call, in L{events}).  Avoid mixing this with L{call}s on the same
        connection.
        """
        self._clientTransport.write(data)
        self.pump()

    @property
    def received(self) -> bytes:
        """
        Every byte the guest has received from the daemon.
        """
        return b"".join(self.client.receivedChunks)

    @property
    def closed(self) -> bool:
        """
        Is the connection gone (on the guest's side)?
        """
        return not self.client.connected

    def pump(self) -> bool:
        """
        Deliver everything written so far, both ways, until nothing moves.

        @return: whether any bytes (or a disconnection) moved.
        """
        if self._pumping:
            return False
        self._pumping = True
        try:
            return self._pump.flush()
        finally:
            self._pumping = False

    def addEventListener(self, name: str, listener: Any) -> None:
        """
        As L{GuestProtocol.addEventListener}; events are also recorded in
        L{events}.
        """
        self.client.addEventListener(name, listener)

    def whenDisconnected(self) -> Deferred:
        """
        @return: a Deferred that fires once the guest's side is gone.
        """
        return self.client.whenDisconnected()

    def close(self) -> Deferred:
        """
        Close the connection from the guest's side: pending calls fail with
        L{GuestConnectionLost}.

        @return: a Deferred that fires once both sides have seen the close.
        """
        done = self.server.whenClosed()
        self._clientTransport.loseConnection()
        self.pump()
        return done

    def _written(self) -> None:
        if self.autoPump:
            self.pump()


def connectDaemon(daemon: Any, reactor: Any = None, *, autoPump: bool = True) -> DaemonConnection:
    """
    Connect a guest to C{daemon} in memory.  A daemon made without a
    reactor is started on a L{MemoryReactorClock}: its C{startService} runs,
    and it listens on no real socket.

    @param reactor: the clock for call timeouts, and the daemon's reactor if
        it was made without one; a new L{MemoryReactorClock} by default.
    @param autoPump: deliver writes at once (see the module docstring).
    """
    return DaemonConnection(daemon, reactor, autoPump=autoPump)


def callCommand(daemon: Any, name: str, *args: Any, reactor: Any = None) -> Deferred:
    """
    Call one command on C{daemon} over a fresh in-memory connection, closed
    once it is answered.

    @return: a Deferred of the decoded reply value (see
        L{dae_service.guest}), failing with L{dae_service.Fault} for a fault.
    """
    connection = connectDaemon(daemon, reactor)
    d = connection.call(name, *args)

    def closeAfter(result: Any) -> Any:
        if not connection.closed:
            connection.close()
        return result

    return d.addBoth(closeAfter)
