"""
Tests for L{dae_service.daemon}: the built-in commands with their exact Node
shapes, listening on an endpoint, draining on stop, and broadcasting.
"""

from __future__ import annotations

import os
from typing import Any

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    RaisingMemoryReactor,
    StringTransport,
)
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dae_service import Daemon, Fault, command
from dae_service.daemon import DRAIN_QUIET, DEFAULT_LISTEN
from dae_service.interfaces import ICommandRouter, IDaemon
from dae_service.protocol import CommonTCPServerProtocol
from dae_service.wire import PacketParser

LISTEN = "tcp:7011:interface=127.0.0.1"
PID = os.getpid()


class Store(Daemon):
    """
    A daemon with commands of several shapes; C{slow} answers when the test
    fires C{waiting}.
    """

    waiting: Deferred

    @command
    def get(self, key, default=None):
        return default

    @command
    def put(self, key, value):
        return True

    @command(name="get-all")
    def getAll(self, *prefixes):
        return []

    @command(connection=True)
    def watch(self, connection, key):
        return key

    @command
    def slow(self):
        self.waiting = Deferred()
        return self.waiting


@implementer(IListeningPort)
class FakePort:
    """
    A listening port whose C{stopListening} the test finishes.
    """

    def __init__(self, address: IPv4Address) -> None:
        self.address = address
        self.listening = True
        self.stopped: Deferred = Deferred()

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred:
        self.listening = False
        return self.stopped

    def getHost(self) -> IPv4Address:
        return self.address


class PortReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose TCP ports are L{FakePort}s.
    """

    def listenTCP(self, port, factory, backlog=50, interface=""):
        super().listenTCP(port, factory, backlog, interface)
        self.port = FakePort(IPv4Address("TCP", interface, port))
        return self.port


class AbortableTransport(StringTransport):
    """
    A L{StringTransport} that records C{abortConnection}.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def ask(daemon: Daemon, data: bytes, transport: StringTransport | None = None) -> list:
    """
    Send C{data} on a new connection to the started C{daemon}; return the
    packets written back.
    """
    transport = transport or StringTransport()
    protocol = connect(daemon, transport)
    protocol.dataReceived(data)
    return PacketParser().feed(transport.value())


def connect(daemon: Daemon, transport: StringTransport) -> CommonTCPServerProtocol:
    """
    A connection to the started C{daemon} over C{transport}, built by the
    factory it listens with.
    """
    factory = daemon.reactor.tcpServers[-1][1]
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol


def started(environ: dict | None = None, **kwargs: Any) -> Store:
    """
    A L{Store} listening on L{LISTEN} on a fake reactor.
    """
    kwargs.setdefault("reactor", MemoryReactorClock())
    daemon = Store(listen=LISTEN, environ={} if environ is None else environ, **kwargs)
    daemon.startService()
    return daemon


class BuiltinTests(SynchronousTestCase):
    """
    C{dae}, C{whois} and C{options}, byte for byte as Node sends them.
    """

    def test_dae(self) -> None:
        """
        C{dae []} is answered C{credential ["Name",pid,port,null]} without
        C{DAE_SECRET}.
        """
        transport = StringTransport()
        ask(started(), b"dae []\n", transport)
        self.assertEqual(
            transport.value(), b'credential ["Store",%d,7011,null]\n' % (PID,)
        )

    def test_daeSecret(self) -> None:
        """
        With C{DAE_SECRET} in its environment, C{dae} sends the secret.
        """
        transport = StringTransport()
        ask(started({"DAE_SECRET": "s3cr\u00e9t"}), b"dae []\n", transport)
        self.assertEqual(
            transport.value(), b'credential ["Store",%d,7011,"s3cr\\u00e9t"]\n' % (PID,)
        )

    def test_daeNotListening(self) -> None:
        """
        Before the daemon listens, its port is C{null}.
        """
        daemon = Store(environ={})
        self.assertEqual(
            daemon.dispatch(None, "dae", []), b'credential ["Store",%d,null,null]\n' % (PID,)
        )

    def test_whois(self) -> None:
        """
        C{whois []} is answered C{credential [{"name","pid","port","created"}]},
        keys in that order, never with a secret.
        """
        daemon = started({"DAE_SECRET": "s3cret"})
        transport = StringTransport()
        ask(daemon, b"whois []\n", transport)
        self.assertIsInstance(daemon.created, int)
        self.assertEqual(
            transport.value(),
            b'credential [{"name":"Store","pid":%d,"port":7011,"created":%d}]\n'
            % (PID, daemon.created),
        )
        self.assertNotIn(b"s3cret", transport.value())

    def test_createdIsMilliseconds(self) -> None:
        """
        C{created} is in ms since the epoch, set when the daemon starts.
        """
        daemon = Store()
        self.assertIsNone(daemon.created)
        daemon = started()
        self.assertGreater(daemon.created, 1_600_000_000_000)

    def test_credential(self) -> None:
        """
        L{Daemon.credential} is the C{whois} entry.
        """
        daemon = started({"DAE_SECRET": "x"})
        self.assertEqual(
            list(daemon.credential().items()),
            [("name", "Store"), ("pid", PID), ("port", 7011), ("created", daemon.created)],
        )

    def test_options(self) -> None:
        """
        C{options []} is answered C{commands [{...}]}: the built-ins first,
        then each command with its number of required arguments.
        """
        transport = StringTransport()
        ask(started(), b"options []\n", transport)
        self.assertEqual(
            transport.value(),
            b'commands [{"whois":0,"options":0,"dae":0,'
            b'"get":1,"put":2,"get-all":0,"watch":1,"slow":0}]\n',
        )

    def test_builtinsWithArguments(self) -> None:
        """
        The built-ins take no arguments: any is C{bad_args}, and the
        connection stays open.
        """
        transport = StringTransport()
        out = ask(started(), b'whois [1]\noptions [null]\ndae ["x"]\nwhois []\n', transport)
        self.assertEqual(
            [p.args[0] for p in out[:3]],
            [
                {"command": "whois", "code": "bad_args", "message": "whois takes 0 arguments (1 given)"},
                {"command": "options", "code": "bad_args", "message": "options takes 0 arguments (1 given)"},
                {"command": "dae", "code": "bad_args", "message": "dae takes 0 arguments (1 given)"},
            ],
        )
        self.assertEqual(out[3].name, "credential")
        self.assertFalse(transport.disconnecting)

    def test_builtinsNameOnly(self) -> None:
        """
        A built-in named alone on a line (C{dae\\n}, as Node tolerated) is
        answered.
        """
        out = ask(started(), b"whois\r\noptions\ndae\n")
        self.assertEqual([p.name for p in out], ["credential", "commands", "credential"])

    def test_defaultName(self) -> None:
        """
        A daemon is named after its class unless given a name.
        """
        self.assertEqual(Store().name, "Store")
        self.assertEqual(Store(name="alpha").name, "alpha")
        transport = StringTransport()
        ask(started(name="alpha"), b"dae []\n", transport)
        self.assertTrue(transport.value().startswith(b'credential ["alpha",'))


class DispatchTests(SynchronousTestCase):
    """
    L{Daemon} as an L{ICommandRouter}.
    """

    def test_interfaces(self) -> None:
        """
        A daemon provides L{IDaemon}, L{ICommandRouter} and L{IService}.
        """
        daemon = Store()
        verifyObject(IDaemon, daemon)
        verifyObject(ICommandRouter, daemon)
        verifyObject(IService, daemon)

    def test_unknown(self) -> None:
        """
        An unknown name raises C{unknown_command}.
        """
        e = self.assertRaises(Fault, started().dispatch, None, "nope", [])
        self.assertEqual((e.code, e.command), ("unknown_command", "nope"))

    def test_count(self) -> None:
        """
        A wrong count raises C{bad_args} with the expected count.
        """
        daemon = started()
        e = self.assertRaises(Fault, daemon.dispatch, None, "put", ["k"])
        self.assertEqual((e.code, e.command, e.message), ("bad_args", "put", "put takes 2 arguments (1 given)"))
        e = self.assertRaises(Fault, daemon.dispatch, None, "get", [1, 2, 3])
        self.assertEqual(e.message, "get takes 1 to 2 arguments (3 given)")

    def test_reply(self) -> None:
        """
        A synchronous result is the encoded reply under the command's name;
        optional and variadic arguments are passed on.
        """
        daemon = started()
        self.assertEqual(daemon.dispatch(None, "get", ["k"]), b"get [null]\n")
        self.assertEqual(daemon.dispatch(None, "get", ["k", {"d": 1}]), b'get [{"d":1}]\n')
        self.assertEqual(daemon.dispatch(None, "get-all", ["a", "b", "c"]), b"get-all [[]]\n")

    def test_connectionPassed(self) -> None:
        """
        A C{connection=True} command gets the connection first.
        """
        daemon = started()
        self.assertEqual(daemon.dispatch(object(), "watch", ["k"]), b'watch ["k"]\n')

    def test_deferredReply(self) -> None:
        """
        A Deferred result becomes a Deferred of the encoded reply.
        """
        daemon = started()
        d = daemon.dispatch(None, "slow", [])
        self.assertNoResult(d)
        daemon.waiting.callback([1])
        self.assertEqual(self.successResultOf(d), b"slow [[1]]\n")

    def test_closesConnection(self) -> None:
        """
        Only C{dae} closes its connection.
        """
        daemon = Store()
        self.assertTrue(daemon.closesConnection("dae"))
        for name in ("whois", "options", "get", "nope"):
            self.assertFalse(daemon.closesConnection(name))

    def test_isEventName(self) -> None:
        """
        Reply names (the built-ins' and every command's) are not event names.
        """
        daemon = Store()
        for name in ("credential", "commands", "fault", "get", "put", "get-all", "watch"):
            self.assertFalse(daemon.isEventName(name), name)
        for name in ("changed", "tick"):
            self.assertTrue(daemon.isEventName(name), name)


class ListenTests(SynchronousTestCase):
    """
    Starting: listening on the configured endpoint.
    """

    def test_defaultListen(self) -> None:
        """
        By default a daemon listens on loopback, on any free port.
        """
        reactor = MemoryReactorClock()
        daemon = Store(reactor=reactor, environ={})
        self.assertEqual(daemon.listen, DEFAULT_LISTEN)
        daemon.startService()
        self.assertTrue(daemon.running)
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        self.assertIs(factory.router, daemon)
        self.assertEqual(daemon.port, 0)

    def test_configuredListen(self) -> None:
        """
        A daemon listens on the endpoint string it is given.
        """
        daemon = started()
        [(port, _, _, interface)] = daemon.reactor.tcpServers
        self.assertEqual((port, interface), (7011, "127.0.0.1"))
        self.assertEqual(daemon.port, 7011)

    def test_factoryLimits(self) -> None:
        """
        The daemon's limits reach the factory that builds its connections.
        """
        daemon = started(maxLength=123, maxPending=7)
        factory = daemon.reactor.tcpServers[0][1]
        self.assertEqual((factory.maxLength, factory.maxPending), (123, 7))

    def test_whenListening(self) -> None:
        """
        L{Daemon.whenListening} fires with the listening port once it
        listens, each caller with its own Deferred, at once afterwards.
        """
        reactor = PortReactor()
        daemon = Store(listen=LISTEN, reactor=reactor, environ={})
        first, second = daemon.whenListening(), daemon.whenListening()
        self.assertIsNot(first, second)
        self.assertNoResult(first)
        daemon.startService()
        self.assertIs(self.successResultOf(first), reactor.port)
        self.assertIs(self.successResultOf(second), reactor.port)
        self.assertIs(self.successResultOf(daemon.whenListening()), reactor.port)

    def test_listenFails(self) -> None:
        """
        When the daemon cannot listen, L{Daemon.whenListening} fails (now and
        for earlier callers) and the failure is logged.
        """
        reactor = RaisingMemoryReactor(listenException=CannotListenError("127.0.0.1", 7011, OSError()))
        daemon = Store(listen=LISTEN, reactor=reactor, environ={})
        early = daemon.whenListening()
        daemon.startService()
        self.failureResultOf(early, CannotListenError)
        self.failureResultOf(daemon.whenListening(), CannotListenError)
        self.assertIsNone(daemon.port)
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)

    def test_listeningLogged(self) -> None:
        """
        Listening is logged with the daemon's name and address.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        started()
        [event] = [e for e in events if e.get("name") == "Store"]
        self.assertEqual(event["address"].port, 7011)


class StopTests(SynchronousTestCase):
    """
    Stopping: stop listening, drain the connections.
    """

    def test_noConnections(self) -> None:
        """
        With no connections, stopping is done once the port stops listening
        (a port whose C{stopListening} returns nothing is done at once).
        """
        daemon = started()
        self.assertIsNone(self.successResultOf(daemon.stopService()))
        self.assertFalse(daemon.running)
        self.assertIsNone(daemon.port)

    def test_waitsForPort(self) -> None:
        """
        Stopping waits for the port's C{stopListening} Deferred.
        """
        reactor = PortReactor()
        daemon = started(reactor=reactor)
        d = daemon.stopService()
        self.assertFalse(reactor.port.listening)
        self.assertNoResult(d)
        reactor.port.stopped.callback(None)
        self.assertIsNone(self.successResultOf(d))

    def test_idleConnection(self) -> None:
        """
        An idle connection is closed once it has been quiet for
        C{DRAIN_QUIET} seconds; stopping is done when it is gone.
        """
        daemon = started()
        transport = StringTransport()
        protocol = connect(daemon, transport)
        d = daemon.stopService()
        self.assertFalse(transport.disconnecting)
        daemon.reactor.advance(DRAIN_QUIET)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(daemon.reactor.getDelayedCalls(), [])

    def test_requestInFlightIsAnswered(self) -> None:
        """
        A request that arrives just after the drain began (a client that
        connected a moment before) is answered, not cut off; the connection
        closes after the quiet period that follows.
        """
        daemon = started()
        transport = StringTransport()
        protocol = connect(daemon, transport)
        d = daemon.stopService()
        daemon.reactor.advance(DRAIN_QUIET / 2)
        protocol.dataReceived(b"whois []\n")
        self.assertTrue(transport.value().startswith(b"credential "))
        daemon.reactor.advance(DRAIN_QUIET * 0.9)
        self.assertFalse(transport.disconnecting)
        daemon.reactor.advance(DRAIN_QUIET)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))

    def test_drainsPending(self) -> None:
        """
        A connection with a pending command gets its reply, then (quiet) is
        closed; stopping is done only then, and the abort timer is
        cancelled.
        """
        daemon = started()
        transport = StringTransport()
        protocol = connect(daemon, transport)
        protocol.dataReceived(b"slow []\n")
        d = daemon.stopService()
        daemon.reactor.advance(DRAIN_QUIET * 2)
        self.assertFalse(transport.disconnecting)
        self.assertNoResult(d)
        daemon.waiting.callback("done")
        self.assertEqual(transport.value(), b'slow ["done"]\n')
        daemon.reactor.advance(DRAIN_QUIET)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(daemon.reactor.getDelayedCalls(), [])

    def test_abortsAfterTimeout(self) -> None:
        """
        A connection still busy after C{drainTimeout} is aborted, with a
        warning; stopping is done when it is gone.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        daemon = started(drainTimeout=2.0)
        busy, idle = AbortableTransport(), AbortableTransport()
        busyProtocol = connect(daemon, busy)
        idleProtocol = connect(daemon, idle)
        busyProtocol.dataReceived(b"slow []\n")
        d = daemon.stopService()
        idleProtocol.connectionLost(Failure(ConnectionDone()))
        daemon.reactor.advance(1.9)
        self.assertFalse(busy.aborted)
        daemon.reactor.advance(0.1)
        self.assertTrue(busy.aborted)
        self.assertFalse(idle.aborted)
        self.assertNoResult(d)
        busyProtocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            [e["log_level"].name for e in events if "aborting" in e["log_format"]], ["warn"]
        )

    def test_defaultDrainTimeout(self) -> None:
        """
        The default drain timeout is 5 seconds.
        """
        daemon = started()
        busy = AbortableTransport()
        connect(daemon, busy).dataReceived(b"slow []\n")
        daemon.stopService()
        daemon.reactor.advance(4.9)
        self.assertFalse(busy.aborted)
        daemon.reactor.advance(0.1)
        self.assertTrue(busy.aborted)

    def test_stopBeforeStart(self) -> None:
        """
        Stopping a daemon that never started is done at once.
        """
        self.assertIsNone(self.successResultOf(Store(environ={}).stopService()))


class BroadcastTests(SynchronousTestCase):
    """
    L{Daemon.broadcast} sends an event to every client.
    """

    def test_broadcast(self) -> None:
        """
        Every open connection gets the event; the count is returned; closed
        connections are forgotten.
        """
        daemon = started()
        first, second = StringTransport(), StringTransport()
        firstProtocol = connect(daemon, first)
        connect(daemon, second)
        self.assertEqual(daemon.broadcast("changed", "k", 1), 2)
        self.assertEqual(first.value(), b'changed ["k",1]\n')
        self.assertEqual(second.value(), b'changed ["k",1]\n')
        firstProtocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(daemon.broadcast("changed"), 1)
        self.assertEqual(second.value(), b'changed ["k",1]\nchanged []\n')

    def test_replyName(self) -> None:
        """
        Broadcasting under a reply name is a L{ValueError}.
        """
        daemon = started()
        connect(daemon, StringTransport())
        self.assertRaises(ValueError, daemon.broadcast, "get", 1)
        self.assertRaises(ValueError, daemon.broadcast, "credential")

    def test_notStarted(self) -> None:
        """
        Before starting there is nobody to send to.
        """
        self.assertEqual(Store().broadcast("changed"), 0)
