"""
L{Guest.byName} against a real tree: the daemon is found through the
manager, and the guest follows it when it comes back elsewhere after a
restart.
"""

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from dae_service import Guest, GuestConnectionLost

from .twistdtree import TwistdTree, withTimeout


class ByNameTests(TestCase):
    """
    Connecting to a daemon by its name through a real manager.
    """

    timeout = 60

    @inlineCallbacks
    def test_followsRestart(self):
        """
        A guest made with C{Guest.byName} reaches the daemon the manager
        knows by that name; after the daemon is killed and restarted on
        another port with another pid, the same guest's next calls reach the
        new process.
        """
        store = {"daemon": "dae_service.examples.store:Store"}
        tree = TwistdTree(self, {"store": store})
        yield tree.start()
        guest = Guest.byName(reactor, "store", tree.managerEndpoint, timeout=10, connectTimeout=20)
        self.addCleanup(guest.close)
        self.assertIs((yield guest.call("set", "k", 1)), True)
        before = yield guest.call("whois")
        self.assertEqual(before["pid"], tree.entries["store"]["pid"])

        os.kill(before["pid"], signal.SIGKILL)
        yield tree.waitForEntry(
            "store",
            lambda e: e["state"] == "ready" and e["pid"] != before["pid"],
            what="store back with a new pid",
        )
        # The call that meets the dying connection may fail; the guest then
        # reconnects through the manager (bounded: the loop ends by itself).
        after = None
        for attempt in range(20):
            try:
                after = yield withTimeout(guest.call("whois"), 20, reactor, "whois")
                break
            except GuestConnectionLost:
                continue
        self.assertIsNotNone(after)
        self.assertEqual(after["pid"], tree.entries["store"]["pid"])
        self.assertNotEqual(after["pid"], before["pid"])
        self.assertEqual(after["port"], tree.entries["store"]["port"])
        # A fresh process: the in-memory store started empty.
        self.assertIsNone((yield guest.call("get", "k")))

    def test_needsAManager(self):
        """
        Without a manager endpoint and without C{DAE_MANAGER}, C{byName}
        says so at once.
        """
        self.assertRaises(ValueError, Guest.byName, reactor, "store", environ={})
