"""
Tests for L{dae_service.readiness}: the readiness probe of foreign commands
and the C{dae} probe of one port, on a L{MemoryReactorClock}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dae_service.readiness import PROBE_TIMEOUT, CommandProbe, probeDae


class RecordingSupervisor:
    """
    Records what a probe tells its supervisor.
    """

    def __init__(self) -> None:
        self.probed: list[Optional[int]] = []

    def childProbed(self, port: Optional[int]) -> None:
        self.probed.append(port)


class CommandProbeTests(SynchronousTestCase):
    """
    L{CommandProbe}.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.supervisor = RecordingSupervisor()
        self.ports: set[int] = set()
        self.polls: list[float] = []
        self.calls: list[tuple[str, int]] = []
        self.answers: dict[int, Deferred] = {}

    def listeningPorts(self, pid: int) -> set[int]:
        self.assertEqual(pid, 42)
        self.polls.append(self.clock.seconds())
        return set(self.ports)

    def probe(self, reactor: Any, host: str, port: int) -> Deferred:
        self.assertIs(reactor, self.clock)
        self.calls.append((host, port))
        d = self.answers[port] = Deferred()
        return d

    def makeProbe(self) -> CommandProbe:
        return CommandProbe(self.clock, self.supervisor, 42, self.listeningPorts, probe=self.probe)

    def test_pollInterval(self) -> None:
        """
        The child's sockets are looked at at once, then after 40 ms, and the
        interval doubles up to 500 ms.
        """
        self.makeProbe()
        self.assertEqual(self.polls, [])
        self.clock.advance(0)
        for _ in range(8):
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        gaps = [round(b - a, 6) for a, b in zip(self.polls, self.polls[1:])]
        self.assertEqual(gaps, [0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.5, 0.5])

    def test_answeringPort(self) -> None:
        """
        A new listening port is probed on 127.0.0.1; when it answers C{dae}
        the supervisor is told that port and polling stops.
        """
        self.makeProbe()
        self.ports.add(7001)
        self.clock.advance(0)
        self.assertEqual(self.calls, [("127.0.0.1", 7001)])
        self.assertEqual(self.supervisor.probed, [])
        self.answers[7001].callback(True)
        self.assertEqual(self.supervisor.probed, [7001])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_eachPortOnce(self) -> None:
        """
        A port that does not answer is never probed again; ports are probed
        in ascending order as they appear.
        """
        self.makeProbe()
        self.ports.update({7002, 7001})
        self.clock.advance(0)
        self.answers[7001].callback(False)
        self.answers[7002].callback(False)
        self.clock.advance(1)
        self.ports.add(7000)
        self.clock.advance(1)
        self.assertEqual(
            self.calls, [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7000)]
        )
        self.assertEqual(self.supervisor.probed, [])

    def test_onlyFirstAnswerCounts(self) -> None:
        """
        When two ports answer, the supervisor hears only of the first.
        """
        self.makeProbe()
        self.ports.update({7001, 7002})
        self.clock.advance(0)
        self.answers[7002].callback(True)
        self.answers[7001].callback(True)
        self.assertEqual(self.supervisor.probed, [7002])

    def test_processGone(self) -> None:
        """
        An OSError from reading the child's sockets counts as no port;
        polling goes on.
        """
        def gone(pid: int) -> set[int]:
            raise ProcessLookupError(pid)

        CommandProbe(self.clock, self.supervisor, 42, gone, probe=self.probe)
        self.clock.advance(0)
        self.clock.advance(0.04)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.calls, [])

    def test_notifiedReady(self) -> None:
        """
        C{READY=1} makes it ready at once on its lowest listening port, or
        with no port when it has none; polling stops.
        """
        probe = self.makeProbe()
        self.ports.update({7003, 7002})
        probe.notifiedReady()
        self.assertEqual(self.supervisor.probed, [7002])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        other = RecordingSupervisor()
        self.ports.clear()
        CommandProbe(self.clock, other, 42, self.listeningPorts, probe=self.probe).notifiedReady()
        self.assertEqual(other.probed, [None])

    def test_stop(self) -> None:
        """
        After C{stop} nothing is polled, and neither a late answer nor
        C{READY=1} reaches the supervisor; stopping twice is harmless.
        """
        probe = self.makeProbe()
        self.ports.add(7001)
        self.clock.advance(0)
        probe.stop()
        probe.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.answers[7001].callback(True)
        probe.notifiedReady()
        self.assertEqual(self.supervisor.probed, [])
        self.assertEqual(len(self.polls), 1)

    def test_stopBeforeFirstPoll(self) -> None:
        """
        A probe stopped before its first poll never looks at the child.
        """
        self.makeProbe().stop()
        self.clock.advance(1)
        self.assertEqual(self.polls, [])


class ProbeDaeTests(SynchronousTestCase):
    """
    L{probeDae} on a L{MemoryReactorClock}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.result = probeDae(self.reactor, "127.0.0.1", 7001)
        ((host, port, self.factory, timeout, _),) = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 7001, PROBE_TIMEOUT))

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_credential(self) -> None:
        """
        It sends C{dae []}; a C{credential} reply (even in pieces) means
        True, and it hangs up.  No timer is left.
        """
        protocol, transport = self.connect()
        self.assertEqual(transport.value(), b"dae []\n")
        self.assertNoResult(self.result)
        protocol.dataReceived(b'creden')
        protocol.dataReceived(b'tial ["Legacy",12,7001,null]')
        self.assertIs(self.successResultOf(self.result), True)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_otherReply(self) -> None:
        """
        A peer that answers something else and hangs up is not a daemon.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b'fault [{"command":"dae","code":"x","message":""}]\n')
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertNoResult(self.result)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.successResultOf(self.result), False)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_refused(self) -> None:
        """
        A refused connection is False, not a failure.
        """
        self.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertIs(self.successResultOf(self.result), False)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        A peer that never answers is aborted after the timeout: False.
        """
        protocol, transport = self.connect()
        self.reactor.advance(PROBE_TIMEOUT)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertIs(self.successResultOf(self.result), False)
