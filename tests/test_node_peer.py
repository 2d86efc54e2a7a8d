"""
A L{Guest} against a real Node.js daemon written the way the original
C{dae} package does it (tap-configs/legacy-daemon.js): replies without a
newline, every read taken as one packet, C{dae} answered and then closed.
"""

import os
import shutil

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase

from dae_service import Guest

from .twistdtree import freePort, withTimeout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tap-configs", "legacy-daemon.js")


class _Node(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


class NodePeerTests(TestCase):
    """
    Calls, pipelined and one at a time, against the Node.js daemon.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        node = shutil.which("node")
        if node is None:
            raise SkipTest("node is not installed")
        self.port = freePort()
        env = dict(os.environ, PORT=str(self.port), DAE="legacy")
        self.node = _Node()
        process = reactor.spawnProcess(self.node, node, [node, SCRIPT], env=env)

        def stop():
            try:
                process.signalProcess("KILL")
            except Exception:
                pass
            return self.node.ended

        self.addCleanup(stop)
        self.guest = Guest(reactor, f"tcp:host=127.0.0.1:port={self.port}", timeout=5, connectTimeout=10)
        self.addCleanup(self.guest.close)
        # Node may take a moment to listen: the guest retries connecting.
        yield withTimeout(self.guest.whenConnected(), 20, reactor, "node to listen")

    @inlineCallbacks
    def test_builtins(self):
        """
        C{whois} and C{options} come back in Node's shapes, without the
        newline our daemons send.
        """
        who = yield self.guest.call("whois")
        self.assertEqual((who["name"], who["port"]), ("legacy", self.port))
        options = yield self.guest.call("options")
        self.assertEqual(options, {"whois": 0, "options": 0, "dae": 0, "ping": 0})

    @inlineCallbacks
    def test_oneAtATime(self):
        """
        Node takes every read as one packet, so calls sent one after the
        other (each waiting for its reply) all get answered.
        """
        for _ in range(5):
            self.assertEqual((yield self.guest.call("ping")), "pong")

    @inlineCallbacks
    def test_daeThenClose(self):
        """
        C{dae} is answered with the Node credential array, then Node closes
        the connection; the guest reconnects for the next call.
        """
        credential = yield self.guest.call("dae")
        self.assertEqual(credential[0], "legacy")
        self.assertEqual(credential[2], self.port)
        self.assertIsNone(credential[3])
        self.assertEqual((yield withTimeout(self.guest.call("ping"), 20, reactor, "ping")), "pong")
