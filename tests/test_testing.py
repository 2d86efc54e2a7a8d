"""
Tests for L{dae_service.testing}, the in-memory helpers for daemon authors.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dae_service import Daemon, Fault, command
from dae_service.errors import CallTimeout, GuestConnectionLost
from dae_service.examples.echo import Echo
from dae_service.guest import GuestProtocol
from dae_service.interfaces import IConnection
from dae_service.testing import DaemonConnection, callCommand, connectDaemon
from dae_service.wire import Packet, PacketParser


class Later(Daemon):
    """
    A daemon whose C{later} command answers when the test fires its Deferred,
    and whose C{subscribe} command sends events to the caller.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.waiting = []
        self.subscribers = []

    @command
    def later(self):
        d = Deferred()
        self.waiting.append(d)
        return d

    @command(connection=True)
    def subscribe(self, connection):
        self.subscribers.append(connection)
        return True

    @command
    def schedule(self, delay, value):
        d = Deferred()
        self.reactor.callLater(delay, d.callback, value)
        return d


class Faulty(Daemon):
    """
    A daemon whose commands fail.
    """

    @command
    def missing(self, key):
        raise Fault("not_found", f"no {key}")

    @command
    def broken(self):
        raise RuntimeError("bug")


class ConnectDaemonTests(SynchronousTestCase):
    """
    L{connectDaemon} connects a guest to a daemon in memory.
    """

    def test_echo(self):
        """
        A synchronous handler's reply is available as soon as C{call} returns,
        and pipelined calls get their own replies.
        """
        connection = connectDaemon(Echo())
        self.assertIsInstance(connection, DaemonConnection)
        self.assertIsInstance(connection.client, GuestProtocol)
        self.assertEqual(self.successResultOf(connection.call("echo", {"a": [1]})), {"a": [1]})
        ds = [connection.call("echo", i) for i in range(5)]
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(5)))

    def test_daemonStartedInMemory(self):
        """
        A daemon made without a reactor is started on a memory reactor: its
        C{startService} runs, its listen is only recorded (on the configured
        port, 0 here), and its built-ins answer.
        """
        daemon = Echo(name="e")
        connection = connectDaemon(daemon)
        whois = self.successResultOf(connection.call("whois"))
        self.assertEqual((whois["name"], whois["port"]), ("e", 0))
        self.assertTrue(daemon.running)
        [(port, factory, backlog, interface)] = connection.clock.tcpServers
        self.assertEqual((port, interface), (0, "127.0.0.1"))

    def test_startServiceRuns(self):
        """
        State an author sets up in C{startService} is there for commands.
        """
        from dae_service.examples.store import Store

        connection = connectDaemon(Store())
        connection.call("set", "k", 1)
        self.assertEqual(self.successResultOf(connection.call("get", "k")), 1)

    def test_deferredHandler(self):
        """
        A handler's Deferred fired later by the test delivers its reply when
        it fires, in command order.
        """
        daemon = Later()
        connection = connectDaemon(daemon)
        first = connection.call("later")
        second = connection.call("later")
        self.assertNoResult(first)
        daemon.waiting[1].callback("second")
        self.assertNoResult(second)
        daemon.waiting[0].callback("first")
        self.assertEqual(self.successResultOf(first), "first")
        self.assertEqual(self.successResultOf(second), "second")

    def test_daemonUsesTheClock(self):
        """
        A daemon made without a reactor runs on the connection's clock.
        """
        clock = Clock()
        connection = connectDaemon(Later(), clock)
        d = connection.call("schedule", 3, "done")
        clock.advance(2)
        self.assertNoResult(d)
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), "done")

    def test_timeout(self):
        """
        Call timeouts run on the connection's clock.
        """
        connection = connectDaemon(Later())
        d = connection.call("later", timeout=4)
        connection.clock.advance(4)
        self.failureResultOf(d, CallTimeout)

    def test_fault(self):
        """
        A handler's L{Fault} fails the call with it; an unexpected exception
        is an C{internal} fault (and is logged by the daemon).
        """
        connection = connectDaemon(Faulty())
        f = self.failureResultOf(connection.call("missing", "k"), Fault)
        self.assertEqual((f.value.code, f.value.message), ("not_found", "no k"))
        f = self.failureResultOf(connection.call("broken"), Fault)
        self.assertEqual(f.value.code, "internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        f = self.failureResultOf(connection.call("missing"), Fault)
        self.assertEqual(f.value.code, "bad_args")

    def test_events(self):
        """
        Events sent to the connection, or broadcast, are recorded in
        C{events}; C{server} is the daemon's L{IConnection}.
        """
        daemon = Later()
        connection = connectDaemon(daemon)
        self.assertTrue(self.successResultOf(connection.call("subscribe")))
        self.assertIs(daemon.subscribers[0], connection.server)
        self.assertTrue(IConnection.providedBy(connection.server))
        daemon.subscribers[0].sendEvent("tick", [1])
        self.assertEqual(daemon.broadcast("tock", 2, 3), 1)
        self.assertEqual(connection.events, [("tick", [1]), ("tock", [2, 3])])

    def test_sendRaw(self):
        """
        C{sendRaw} sends bytes as they are, Node-style packets included;
        C{received} holds the bytes that came back.
        """
        connection = connectDaemon(Echo())
        connection.sendRaw(b'echo [1]echo ["a",\n')
        received = connection.received
        self.assertTrue(received.startswith(b"echo [1]\nfault ["), received)
        packets = PacketParser().feed(received)
        self.assertEqual(packets[0], Packet("echo", [1]))
        self.assertEqual(packets[1].args[0]["code"], "bad_json")

    def test_manualPump(self):
        """
        With C{autoPump=False} nothing moves until C{pump}; replies then
        arrive together.
        """
        connection = connectDaemon(Echo(), autoPump=False)
        ds = [connection.client.call("echo", i) for i in range(3)]
        self.assertNoResult(ds[0])
        self.assertTrue(connection.pump())
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])
        self.assertEqual(len(connection.client.receivedChunks), 1)

    def test_dae(self):
        """
        C{dae} answers the credential and the daemon closes the connection.
        """
        connection = connectDaemon(Echo(name="e"))
        self.assertEqual(
            self.successResultOf(connection.call("dae")), ["e", os.getpid(), 0, None]
        )
        self.assertTrue(connection.closed)
        self.assertTrue(connection.server.closed)
        self.failureResultOf(connection.call("echo", 1), GuestConnectionLost)

    def test_close(self):
        """
        C{close} closes both sides; pending calls fail with
        L{GuestConnectionLost}.
        """
        connection = connectDaemon(Later())
        d = connection.call("later")
        self.successResultOf(connection.close())
        self.failureResultOf(d, GuestConnectionLost)
        self.assertTrue(connection.server.closed)


class CallCommandTests(SynchronousTestCase):
    """
    L{callCommand} calls one command over a fresh connection.
    """

    def test_value(self):
        """
        It gives the decoded reply value, and closes the connection.
        """
        daemon = Echo()
        self.assertEqual(self.successResultOf(callCommand(daemon, "echo", [1, 2])), [1, 2])
        self.assertEqual(daemon._factory.connections, set())

    def test_fault(self):
        """
        A fault fails the Deferred with L{Fault}.
        """
        f = self.failureResultOf(callCommand(Faulty(), "missing", "x"), Fault)
        self.assertEqual(f.value.code, "not_found")

    def test_later(self):
        """
        A Deferred-returning handler's reply arrives when it fires.
        """
        daemon = Later()
        d = callCommand(daemon, "later")
        self.assertNoResult(d)
        daemon.waiting[0].callback(7)
        self.assertEqual(self.successResultOf(d), 7)
