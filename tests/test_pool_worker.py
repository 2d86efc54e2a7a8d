"""
Tests for the worker's side of a pool, in this process on the real reactor
with real loopback sockets: L{dae_service.workerport} (adopting a pool slot's
socket, counting connections, the kernel spreading a burst over slots),
L{dae_service.tls}, and L{dae_service.child.main} as a pool worker (load
reports, the drain command).
"""

from __future__ import annotations

import json
import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.endpoints import wrapClientTLS
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dae_service.child import EX_OK, main
from dae_service.pool import bindListeningSocket
from dae_service.tls import TLSServerEndpoint, serverContextFactory
from dae_service.workerport import WorkerEndpoint, WorkerPort
from tests.test_child import Pipes, describe
from tests.tlscert import makeCertificate
from tests.twistdtree import OneRequestClient, connectRaw, until, withTimeout


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Recorder(Factory):
    """
    Builds L{Echo}s and keeps the address each was built for.
    """

    protocol = Echo
    noisy = False

    def __init__(self) -> None:
        self.addresses: list = []

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        return super().buildProtocol(addr)


def poolSocket(case: SynchronousTestCase) -> socket.socket:
    sock = bindListeningSocket("tcp:0:interface=127.0.0.1")
    case.addCleanup(sock.close)
    return sock


class WorkerPortTests(TestCase):
    """
    L{WorkerEndpoint} and L{WorkerPort}.
    """

    timeout = 20

    @inlineCallbacks
    def adopt(self, sock: socket.socket, factory=None):
        factory = factory or Recorder()
        port = yield WorkerEndpoint(reactor, os.dup(sock.fileno())).listen(factory)
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def test_servesTheSharedSocket(self):
        """
        The port serves on the adopted socket: a client reaches it on the
        socket's port, and the server sees the client's own address.
        """
        sock = poolSocket(self)
        factory = Recorder()
        port = yield self.adopt(sock, factory)
        self.assertIsInstance(port, WorkerPort)
        self.assertEqual(port.getHost().port, sock.getsockname()[1])
        client = yield connectRaw(reactor, sock.getsockname()[1])
        client.send(b"ping")
        yield client.waitFor(lambda data: data == b"ping")
        local = client.transport.getHost()
        (peer,) = factory.addresses
        self.assertEqual((peer.host, peer.port), (local.host, local.port))
        client.transport.loseConnection()
        yield client.whenLost()

    @inlineCallbacks
    def test_countsConnections(self):
        """
        Its C{observers} hear the number of open connections at each change.
        """
        sock = poolSocket(self)
        port = yield self.adopt(sock)
        counts: list = []
        port.observers.append(counts.append)
        first = yield connectRaw(reactor, sock.getsockname()[1])
        second = yield connectRaw(reactor, sock.getsockname()[1])
        yield until(lambda: counts[-1:] == [2])
        first.transport.loseConnection()
        yield until(lambda: counts[-1:] == [1])
        second.transport.loseConnection()
        yield until(lambda: counts[-1:] == [0])
        self.assertEqual(counts, [1, 2, 1, 0])
        self.assertEqual(port.connections, set())

    @inlineCallbacks
    def test_burstIsSpread(self):
        """
        Two slots of one pool (two sockets on one port), each adopted by a
        worker: the kernel spreads a burst of connections over both.
        """
        first = poolSocket(self)
        second = bindListeningSocket("tcp:0:interface=127.0.0.1", first.getsockname()[1])
        self.addCleanup(second.close)
        ports = [(yield self.adopt(first)), (yield self.adopt(second))]
        burst = 40
        for _ in range(burst):
            c = socket.create_connection(first.getsockname())
            self.addCleanup(c.close)
        yield until(lambda: sum(len(p.connections) for p in ports) == burst)
        counts = sorted(len(p.connections) for p in ports)
        # Binomial(40, 1/2): below 8 has a probability of about 1e-5.
        self.assertGreaterEqual(counts[0], 8, counts)

    @inlineCallbacks
    def test_stoppedPortLeavesTheSocket(self):
        """
        A worker that stops listening only lets go of its duplicate: the
        socket stays open and its replacement, on the same socket, takes
        the next clients.
        """
        sock = poolSocket(self)
        first, second = Recorder(), Recorder()
        port = yield WorkerEndpoint(reactor, os.dup(sock.fileno())).listen(first)
        yield self.adopt(sock, second)
        yield port.stopListening()
        for _ in range(3):
            client = yield connectRaw(reactor, sock.getsockname()[1])
            client.send(b"x")
            yield client.waitFor(lambda data: data == b"x")
            client.transport.loseConnection()
        self.assertEqual(len(second.addresses), 3)

    def test_notASocket(self):
        """
        A descriptor that is not a TCP listening socket fails the listen.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, write)
        self.addCleanup(lambda: os.close(read) if _isOpen(read) else None)
        self.failureResultOf(WorkerEndpoint(reactor, read).listen(Recorder()), OSError)


def _isOpen(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class TLSTests(TestCase):
    """
    L{serverContextFactory} and L{TLSServerEndpoint}, with a certificate
    made for this test.
    """

    timeout = 20

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.cert, self.key = makeCertificate(directory)

    def clientEndpoint(self, port: int):
        with open(self.cert, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        options = optionsForClientTLS("localhost", trustRoot=trust)
        return wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))

    @inlineCallbacks
    def test_roundTrip(self):
        """
        A client that trusts the certificate talks to the wrapped endpoint
        over TLS.
        """
        endpoint = TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            serverContextFactory(self.cert, self.key),
        )
        port = yield endpoint.listen(Recorder())
        self.addCleanup(port.stopListening)
        client = OneRequestClient(b"secret")
        yield connectProtocol(self.clientEndpoint(port.getHost().port), client)
        yield until(lambda: client.data == b"secret")
        client.transport.loseConnection()
        yield withTimeout(client.done, 10, reactor, "the connection to close")

    def test_badFiles(self):
        """
        Files without a certificate, or a key that does not match, are a
        L{ValueError}; a missing file an L{OSError}.
        """
        other = self.mktemp()
        os.makedirs(other)
        _, otherKey = makeCertificate(other)
        self.assertRaises(ValueError, serverContextFactory, self.key, self.key)
        self.assertRaises(ValueError, serverContextFactory, self.cert, otherKey)
        self.assertRaises(OSError, serverContextFactory, self.cert + ".missing", self.key)


class ChildPoolModeTests(TestCase):
    """
    L{main} as a pool worker: C{DAE_POOL_FD} names the socket to serve.
    """

    timeout = 30

    def worker(self, sock: socket.socket, **description):
        pipes = Pipes(self)
        environ = {
            **pipes.environ,
            "DAE_POOL_FD": str(os.dup(sock.fileno())),
            "DAE_CHILD": describe(name="pool", listen="tcp:0:interface=127.0.0.1",
                                  **description),
        }
        done = main(reactor, environ, ["child"])

        def stopped():
            # Whatever the test did, the worker must be gone when it ends.
            pipes.closeControl()
            return withTimeout(done, 10, reactor, "the worker to exit")

        self.addCleanup(stopped)
        return pipes, done

    @inlineCallbacks
    def test_factoryWorker(self):
        """
        A factory worker serves on the pool's socket and reports ready with
        its port; its C{load} reports follow its open connections; told to
        drain, it reports C{draining}, answers the request in flight with
        C{Connection: close}, and exits 0.
        """
        sock = poolSocket(self)
        pipes, done = self.worker(
            sock, kind="factory", reference="dae_service.examples.web:makeSite"
        )
        ready = yield pipes.nextReport()
        self.assertEqual((ready["event"], ready["port"]), ("ready", sock.getsockname()[1]))

        client = OneRequestClient(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", sock.getsockname()[1]), client
        )
        load = yield pipes.nextReport()
        self.assertEqual(load, {"event": "load", "connections": 1, "peak": 1})
        os.write(pipes.controlWrite, json.dumps(
            {"command": "drain", "deadline": reactor.seconds() + 10}
        ).encode() + b"\n")
        self.assertEqual((yield pipes.nextReport()), {"event": "draining"})
        response = yield withTimeout(client.done, 10, reactor, "the slow response")
        self.assertIn(b"slept 1000 ms", response)
        self.assertIn(b"\r\nConnection: close\r\n", response)
        self.assertEqual((yield withTimeout(done, 10, reactor, "the worker to exit")), EX_OK)

    @inlineCallbacks
    def test_daemonWorkerWithTLS(self):
        """
        A Common TCP daemon worker with C{tls} serves TLS on the pool's
        socket.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = makeCertificate(directory)
        sock = poolSocket(self)
        pipes, done = self.worker(sock, tls={"cert": cert, "key": key}, drainTimeout=1)
        ready = yield pipes.nextReport()
        self.assertEqual(ready["event"], "ready")
        with open(cert, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", sock.getsockname()[1]),
        )
        client = OneRequestClient(b'echo ["over tls"]\n')
        yield connectProtocol(endpoint, client)
        yield until(lambda: client.data == b'echo ["over tls"]\n')
        pipes.closeControl()
        yield withTimeout(client.done, 10, reactor, "the drained worker to close it")
        self.assertEqual((yield withTimeout(done, 10, reactor, "the worker to exit")), EX_OK)

    @inlineCallbacks
    def test_tlsWithoutPool(self):
        """
        A daemon that is not pooled serves TLS on its own endpoint when its
        description has C{tls}.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = makeCertificate(directory)
        pipes = Pipes(self)
        done = main(
            reactor,
            {**pipes.environ, "DAE_CHILD": describe(tls={"cert": cert, "key": key})},
            ["child"],
        )
        self.addCleanup(lambda: (pipes.closeControl(), withTimeout(done, 10, reactor, "exit"))[1])
        ready = yield pipes.nextReport()
        with open(cert, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", ready["port"]),
        )
        client = OneRequestClient(b'echo ["alone"]\n')
        yield connectProtocol(endpoint, client)
        yield until(lambda: client.data == b'echo ["alone"]\n')
        client.transport.loseConnection()
        yield withTimeout(client.done, 10, reactor, "the connection to close")

    @inlineCallbacks
    def test_badCertificateIsAConfigError(self):
        """
        TLS files that cannot be loaded make the worker refuse to start
        (exit 78, so the pool gives up instead of spinning).
        """
        sock = poolSocket(self)
        pipes, done = self.worker(sock, tls={"cert": "/nonexistent.pem", "key": "/x.pem"})
        failed = yield pipes.nextReport()
        self.assertEqual(failed["event"], "failed")
        self.assertIn("TLS", failed["error"])
        self.assertEqual((yield done), 78)

    @inlineCallbacks
    def test_unknownControlLineIgnored(self):
        """
        A control line that is not a known command is logged and ignored;
        the worker keeps serving.
        """
        sock = poolSocket(self)
        pipes, done = self.worker(sock)
        yield pipes.nextReport()
        os.write(pipes.controlWrite, b'{"command": "dance"}\nnot json\n{"command": "drain"}\n')
        client = OneRequestClient(b"echo [1]\n")
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", sock.getsockname()[1]), client
        )
        yield until(lambda: client.data == b"echo [1]\n")
        client.transport.loseConnection()
        self.assertNoResult(done)
        pipes.closeControl()
        self.assertEqual((yield withTimeout(done, 10, reactor, "the worker to exit")), EX_OK)


class ManyWorkersTests(TestCase):
    """
    Several in-process workers share a burst through the pool socket.
    """

    timeout = 20

    @inlineCallbacks
    def test_loadAddsUp(self):
        """
        Two ports on one socket, each counting; the connections of a burst
        add up to the burst.
        """
        sock = poolSocket(self)
        ports = []
        for _ in range(2):
            port = yield WorkerEndpoint(reactor, os.dup(sock.fileno())).listen(Recorder())
            self.addCleanup(port.stopListening)
            ports.append(port)
        clients = yield gatherResults(
            [connectRaw(reactor, sock.getsockname()[1]) for _ in range(10)]
        )
        yield until(lambda: sum(len(p.connections) for p in ports) == 10)
        for c in clients:
            c.transport.loseConnection()
        yield until(lambda: sum(len(p.connections) for p in ports) == 0)
