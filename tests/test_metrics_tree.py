"""
Per-daemon Common TCP counts end to end: a real child daemon counts what it
answers, reports it to the real manager, and C{/metrics} shows it.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from .test_browser import WebTree
from .twistdtree import _sleep


def samples(text: str, name: str) -> dict:
    """
    The samples of metric family C{name}, as {frozenset(labels): value}.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


class ChildCountsTests(TestCase):
    """
    C{dae_commands_total} and C{dae_faults_total} for a child daemon.
    """

    timeout = 60

    @inlineCallbacks
    def test_countsReachMetrics(self):
        """
        Commands a client sends to the store child, and the faults it gets
        back (one made by the wire layer, one by a handler), show in the
        manager's C{/metrics} under the store's name.
        """
        store = {
            "daemon": "dae_service.examples.store:Store",
            "env": {"DAE_STATS_INTERVAL": "0.1"},
        }
        tree = WebTree(self, {"store": store})
        yield tree.start()
        url = yield tree.webURL()
        client = yield tree.connectRaw("store")
        client.send(b'set ["k",1]\nset ["j",2]\nget [1]\nx [1,\n')
        yield client.waitForLines(4)
        agent = Agent(reactor)
        want = {
            frozenset({("daemon", "store"), ("command", "set")}): 2.0,
            frozenset({("daemon", "store"), ("code", "bad_args")}): 1.0,
            frozenset({("daemon", "store"), ("code", "bad_json")}): 1.0,
        }
        for attempt in range(100):
            response = yield agent.request(b"GET", (url.rstrip("/") + "/metrics").encode())
            text = (yield readBody(response)).decode()
            found = {**samples(text, "dae_commands_total"), **samples(text, "dae_faults_total")}
            if all(found.get(k) == v for k, v in want.items()):
                break
            yield _sleep(reactor, 0.1)
        for labels, value in want.items():
            self.assertEqual(found.get(labels), value, sorted(found.items()))
