"""
Tests for what runs plain Twisted server factories, pooled or not:
L{dae_service.loader}'s factory references, L{dae_service.server.FactoryServer}
(listening, and draining HTTP and other protocols; real loopback sockets),
and the example site L{dae_service.examples.web}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from dae_service import server
from dae_service.config import parseConfig
from dae_service.examples.echo import Echo
from dae_service.examples.web import QuietSite, makeSite
from dae_service.interfaces import IDaemon
from dae_service.loader import LoadError, makeFactory, resolveClasses, resolveServer
from dae_service.server import FactoryServer
from tests.twistdtree import connectRaw, until, withTimeout
from zope.interface.verify import verifyObject


class EchoProtocol(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoFactory(Factory):
    """
    A plain factory class (implements IProtocolFactory).
    """

    protocol = EchoProtocol
    noisy = False


#: A factory instance at module level.
echoFactory = EchoFactory()

#: Neither a factory nor callable.
notAFactory = 42


def makeNothing(settings):
    return "not a factory"


def makeEcho(settings):
    factory = EchoFactory()
    factory.settings = settings
    return factory


HERE = "tests.test_pool_server"


class FactoryReferenceTests(SynchronousTestCase):
    """
    L{resolveServer} and L{makeFactory}.
    """

    def test_kinds(self) -> None:
        """
        A factory reference may name a factory instance (used as is), a
        factory class (instantiated) or, for C{factory}, a callable given
        the settings.
        """
        self.assertIs(makeFactory(resolveServer(f"{HERE}:echoFactory", factory=True), {}),
                      echoFactory)
        self.assertIsInstance(
            makeFactory(resolveServer(f"{HERE}:EchoFactory", factory=True), {}), EchoFactory
        )
        made = makeFactory(resolveServer(f"{HERE}:makeEcho", factory=True), {"a": 1})
        self.assertEqual(made.settings, {"a": 1})
        self.assertIsInstance(
            makeFactory(resolveServer("dae_service.examples.web:makeSite", factory=True), {}),
            Site,
        )

    def test_daemonMayNameAFactory(self) -> None:
        """
        A C{daemon} reference may name a factory instance or class, not a
        mere callable; a Daemon class is returned as it is.
        """
        self.assertIs(resolveServer(f"{HERE}:echoFactory"), echoFactory)
        self.assertIs(resolveServer(f"{HERE}:EchoFactory"), EchoFactory)
        self.assertIs(resolveServer("dae_service.examples.echo:Echo"), Echo)
        e = self.assertRaises(LoadError, resolveServer, f"{HERE}:makeEcho")
        self.assertIn("not a dae_service.Daemon subclass nor a protocol factory", str(e))

    def test_problems(self) -> None:
        """
        Something that is no factory, or a callable that makes none, is a
        L{LoadError}.
        """
        e = self.assertRaises(LoadError, resolveServer, f"{HERE}:notAFactory", factory=True)
        self.assertIn("neither a protocol factory nor a callable", str(e))
        source = resolveServer(f"{HERE}:makeNothing", factory=True)
        e = self.assertRaises(LoadError, makeFactory, source, {})
        self.assertIn("not a protocol factory", str(e))
        self.assertRaises(LoadError, resolveServer, "no_such_module:f", factory=True)

    def test_resolveClasses(self) -> None:
        """
        L{resolveClasses} resolves C{factory} entries too, and names the
        key of a bad one.
        """
        config = parseConfig(
            '[daemons.web]\nfactory = "dae_service.examples.web:makeSite"\n'
            f'[daemons.bad]\nfactory = "{HERE}:notAFactory"\n',
            "/srv/tree.toml",
            {"HOME": "/home/u"},
        )
        e = self.assertRaises(LoadError, resolveClasses, config)
        self.assertEqual(str(e).count("\n"), 0)
        self.assertIn("/srv/tree.toml: daemons.bad.factory: ", str(e))
        config = parseConfig(
            '[daemons.web]\nfactory = "dae_service.examples.web:makeSite"\n',
            "/srv/tree.toml",
            {"HOME": "/home/u"},
        )
        self.assertEqual(resolveClasses(config), {"web": makeSite})


class _Client(Protocol):
    """
    Keeps what it receives; tells when the connection is gone.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class FactoryServerTests(TestCase):
    """
    L{FactoryServer} on loopback TCP.
    """

    timeout = 20

    def setUp(self) -> None:
        # Idle HTTP connections are closed after two looks this far apart.
        self.patch(server, "IDLE_TICK", 0.05)

    @inlineCallbacks
    def serve(self, factory, drainTimeout: float = 5.0):
        self.server = FactoryServer(
            "web", "tcp:0:interface=127.0.0.1", reactor, factory, drainTimeout=drainTimeout
        )
        self.server.startService()
        self.addCleanup(lambda: self.server.stopService() if self.server.running else None)
        yield self.server.whenListening()
        return self.server.port

    def test_interface(self) -> None:
        """
        A FactoryServer is an L{IDaemon}.
        """
        self.assertTrue(verifyObject(IDaemon, FactoryServer("w", "tcp:0", reactor, EchoFactory())))

    @inlineCallbacks
    def test_serves(self):
        """
        It listens on its endpoint with its factory and knows its port.
        """
        port = yield self.serve(EchoFactory())
        client = yield connectRaw(reactor, port)
        client.send(b"hi")
        yield client.waitFor(lambda data: data == b"hi")
        self.assertEqual(self.server.credential()["port"], port)
        self.assertEqual(len(self.server.connections), 1)
        client.transport.loseConnection()
        yield until(lambda: not self.server.connections)

    @inlineCallbacks
    def test_listenFailure(self):
        """
        An endpoint that cannot listen fails C{whenListening}.
        """
        port = yield self.serve(EchoFactory())
        other = FactoryServer("w2", f"tcp:{port}:interface=127.0.0.1", reactor, EchoFactory())
        other.startService()
        yield self.assertFailure(other.whenListening(), CannotListenError)
        self.flushLoggedErrors(CannotListenError)

    @inlineCallbacks
    def test_drainIdleKeepAlive(self):
        """
        An idle keep-alive HTTP connection is closed by the drain once it
        has stayed idle for a tick: long before the deadline.
        """
        port = yield self.serve(makeSite({}))
        client = yield connectRaw(reactor, port)
        client.send(GET)
        yield client.waitFor(lambda data: b"hello, world" in data)
        started = reactor.seconds()
        yield self.server.stopService()
        yield client.whenLost()
        self.assertLess(reactor.seconds() - started, 2)

    @inlineCallbacks
    def test_drainFinishesInFlight(self):
        """
        A request in flight when the drain starts is answered, with
        C{Connection: close}, and then the connection closes.
        """
        port = yield self.serve(makeSite({}))
        client = yield connectRaw(reactor, port)
        client.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n")
        yield until(lambda: any(
            server._httpChannel(p).requests for p in self.server.connections
        ))
        stopped = self.server.stopService()
        yield client.whenLost()
        self.assertIn(b"Connection: close", client.received)
        self.assertIn(b"slept 200 ms", client.received)
        yield stopped

    @inlineCallbacks
    def test_requestDuringDrain(self):
        """
        A request that arrives on a kept-alive connection during the drain
        is answered (not cut), with C{Connection: close}.
        """
        self.patch(server, "IDLE_TICK", 5.0)
        port = yield self.serve(makeSite({}))
        client = yield connectRaw(reactor, port)
        client.send(GET)
        yield client.waitFor(lambda data: b"hello, world" in data)
        client.received = b""
        stopped = self.server.stopService()
        client.send(GET)
        yield client.whenLost()
        self.assertIn(b"Connection: close", client.received)
        self.assertIn(b"hello, world", client.received)
        yield stopped

    @inlineCallbacks
    def test_otherProtocolsAbortedAtDeadline(self):
        """
        A connection of another protocol is left open until the deadline,
        then aborted; the stop then completes.
        """
        port = yield self.serve(EchoFactory(), drainTimeout=0.2)
        client = yield connectRaw(reactor, port)
        client.send(b"x")
        yield client.waitFor(lambda data: data == b"x")
        started = reactor.seconds()
        yield withTimeout(self.server.stopService(), 5, reactor, "the drain")
        self.assertGreaterEqual(reactor.seconds() - started, 0.19)
        yield client.whenLost()

    @inlineCallbacks
    def test_clientClosesDuringDrain(self):
        """
        A connection the client closes during the drain ends it early.
        """
        port = yield self.serve(EchoFactory(), drainTimeout=10)
        client = yield connectRaw(reactor, port)
        client.send(b"x")
        yield client.waitFor(lambda data: data == b"x")
        stopped = self.server.stopService()
        client.transport.loseConnection()
        yield withTimeout(stopped, 5, reactor, "the drain")
        ours = [c for c in reactor.getDelayedCalls() if getattr(c.func, "__self__", None) is self.server]
        self.assertEqual(ours, [], "the drain left its timers")


class ExampleSiteTests(TestCase):
    """
    The example site's resources, over a real socket.
    """

    timeout = 20

    @inlineCallbacks
    def get(self, path: bytes) -> bytes:
        site = makeSite({"burn_ms": 5})
        self.assertIsInstance(site, QuietSite)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield connectRaw(reactor, port.getHost().port)
        local = client.transport.getHost()
        client.send(b"GET " + path + b" HTTP/1.0\r\n\r\n")
        yield client.whenLost()
        return client.received, local

    @inlineCallbacks
    def test_hello(self):
        """
        C{/} is hello world.
        """
        body, _ = yield self.get(b"/")
        self.assertTrue(body.endswith(b"\r\n\r\nhello, world\n"))

    @inlineCallbacks
    def test_burn(self):
        """
        C{/burn} burns the configured milliseconds of CPU.
        """
        body, _ = yield self.get(b"/burn")
        self.assertTrue(body.endswith(b"burnt 5 ms\n"))

    @inlineCallbacks
    def test_peer(self):
        """
        C{/peer} is the client's address as the server sees it.
        """
        import os

        body, local = yield self.get(b"/peer")
        self.assertTrue(
            body.endswith(f"{local.host} {local.port} {os.getpid()}\n".encode()), body
        )
