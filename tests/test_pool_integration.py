"""
Integration tests of pools: real C{twistd -n dae} trees
(L{tests.twistdtree.TwistdTree}) whose pools run real worker processes
sharing one listening socket on 127.0.0.1, driven by real clients.

  - a burst of connections is spread over the workers, each worker sees its
    client's real address, and C{list}/C{status} show each worker's open
    connections;
  - a killed worker is replaced while the other worker's open connections
    carry on and the pool stays ready;
  - a rolling restart under a loop of clients (Common TCP, one connection
    per request; HTTPS keep-alive with retries off) fails no request;
  - a worker module that fails at import gives up instead of spinning;
  - SIGTERM lets the request in flight finish, then the manager exits 0.

Real processes: 6 trees, each with 2 workers (more during the rolling
restarts).  Waits are for events (the manager's C{changed} pushes,
replies, exits); every client loop is bounded.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, readBody

from tests.test_integration import packet
from tests.tlscert import makeCertificate
from tests.twistdtree import OneRequestClient, TwistdTree, connectRaw, withTimeout

PEER_POOL = {
    "daemon": "tests.pool_daemons:Peer",
    "listen": "tcp:0:interface=127.0.0.1",
    "workers": 2,
    "drain_timeout": 3,
    "stop_timeout": 5,
}

WEB_POOL = {
    "factory": "dae_service.examples.web:makeSite",
    "listen": "tcp:0:interface=127.0.0.1",
    "workers": 2,
    "drain_timeout": 3,
    "stop_timeout": 5,
}

#: The connections of the burst.
BURST = 40

#: Requests each client loop makes at most (a bound, never reached when
#: all goes well).
MAX_REQUESTS_PER_LOOP = 2000


def poolReady(count: int):
    """
    A predicate on the entries: the pool is ready with C{count} workers,
    all ready.
    """

    def ready(entries: dict) -> bool:
        entry = entries.get("pool")
        if entry is None or entry["state"] != "ready":
            return False
        workers = entry.get("workers") or []
        return len(workers) == count and all(w["state"] == "ready" for w in workers)

    return ready


def workerPids(entry: dict) -> set:
    return {w["pid"] for w in entry["workers"]}


@inlineCallbacks
def call(client, line: bytes):
    """
    Send one Common TCP command on a raw client and decode its reply.
    """
    before = client.received.count(b"\n")
    client.send(line + b"\n")
    lines = yield client.waitForLines(before + 1)
    return packet(lines[before])


class _Counter:
    """
    What the client loops did: successes (with the pid that served each)
    and failures (with why).
    """

    def __init__(self) -> None:
        self.pids: list = []
        self.failures: list = []
        self.stopped = False
        self._waiters: list = []

    def succeeded(self, pid: int) -> None:
        self.pids.append(pid)
        for waiter in list(self._waiters):
            count, d = waiter
            if len(self.pids) >= count:
                self._waiters.remove(waiter)
                d.callback(None)

    def reach(self, count: int, timeout: float = 20) -> Deferred:
        """
        A Deferred firing once C{count} requests have succeeded in all.
        """
        d: Deferred = Deferred()
        self._waiters.append((count, d))
        if len(self.pids) >= count:
            self._waiters.remove((count, d))
            d.callback(None)
        return withTimeout(d, timeout, reactor, f"{count} successful requests")


class PoolIntegrationTests(TestCase):
    """
    Pools of real worker processes.
    """

    timeout = 60

    @inlineCallbacks
    def startPool(self, table: dict, count: int = 2):
        self.tree = TwistdTree(self, {"pool": table})
        entries = yield self.tree.start(until=poolReady(count))
        return entries["pool"]

    @inlineCallbacks
    def test_burstSpreadsAndWorkersSeeClients(self):
        """
        A burst of connections is spread over both workers (each gets at
        least a quarter); each worker sees its client's own address; the
        pool's entry (in C{list} and C{status}) shows each worker's open
        connections, and they add up to the burst.
        """
        entry = yield self.startPool(PEER_POOL)
        port = entry["port"]
        clients = yield gatherResults([connectRaw(reactor, port) for _ in range(BURST)])
        self.tree._raw.extend(clients)
        replies = yield gatherResults([call(c, b"peer []") for c in clients])
        served: dict = {}
        for client, (name, ((host, peerPort, pid),)) in zip(clients, replies):
            local = client.transport.getHost()
            self.assertEqual((name, host, peerPort), ("peer", local.host, local.port))
            served[pid] = served.get(pid, 0) + 1
        self.assertEqual(set(served), workerPids(entry))
        self.assertGreaterEqual(min(served.values()), BURST // 4, served)

        def counted(e: dict) -> bool:
            return sum(w["connections"] for w in e["workers"]) == BURST

        entry = yield self.tree.waitForEntry("pool", counted, what="the connections counted")
        self.assertEqual(
            {w["pid"]: w["connections"] for w in entry["workers"]}, served
        )
        status = yield self.tree.call("status", "pool")
        self.assertEqual(sum(w["connections"] for w in status["workers"]), BURST)
        for c in clients:
            c.transport.loseConnection()
        yield self.tree.waitForEntry(
            "pool", lambda e: all(w["connections"] == 0 for w in e["workers"]),
            what="the connections to close",
        )

    @inlineCallbacks
    def test_killedWorkerReplaced(self):
        """
        A worker killed with SIGKILL is replaced (same index, a new pid, one
        restart counted); the pool stays ready throughout, and a client of
        the other worker keeps being served on its open connection.
        """
        entry = yield self.startPool(PEER_POOL)
        byPid: dict = {}
        for _ in range(30):
            client = yield self.tree.connectRaw(port=entry["port"])
            _, ((_, _, pid),) = yield call(client, b"peer []")
            if pid in byPid:
                client.transport.loseConnection()
            else:
                byPid[pid] = client
            if len(byPid) == 2:
                break
        self.assertEqual(set(byPid), workerPids(entry), "no connection to each worker")
        victim, survivor = sorted(byPid)
        (index,) = [w["index"] for w in entry["workers"] if w["pid"] == victim]
        seen = len(self.tree.events)
        os.kill(victim, signal.SIGKILL)

        def replaced(e: dict) -> bool:
            worker = [w for w in e["workers"] if w["index"] == index]
            return bool(worker) and worker[0]["pid"] not in (None, victim) and (
                worker[0]["state"] == "ready"
            )

        entry = yield self.tree.waitForEntry("pool", replaced, what="a new worker")
        self.assertEqual(entry["restarts"], 1)
        states = {e["state"] for e in self.tree.events[seen:] if e["name"] == "pool"}
        self.assertEqual(states, {"ready"})
        _, ((_, _, pid),) = yield call(byPid[survivor], b"peer []")
        self.assertEqual(pid, survivor)
        yield byPid[victim].whenLost()

    @inlineCallbacks
    def test_rollingRestartUnderLoad(self):
        """
        C{restart pool} while four clients each make one request after
        another (a new connection each, 10 ms of work in flight): every
        worker is replaced and not one request fails.
        """
        entry = yield self.startPool(PEER_POOL)
        old = workerPids(entry)
        counter = _Counter()
        loops = [self.clientLoop(entry["port"], counter) for _ in range(4)]
        yield counter.reach(20)
        restarted = yield self.tree.call("restart", "pool", timeout=40)
        new = workerPids(restarted)
        done = len(counter.pids)
        yield counter.reach(done + 20)
        counter.stopped = True
        yield gatherResults(loops)
        self.assertEqual(counter.failures, [])
        self.assertEqual(old & new, set(), "a worker was not replaced")
        self.assertTrue(old <= set(counter.pids) and new <= set(counter.pids))

    @inlineCallbacks
    def clientLoop(self, port: int, counter: _Counter):
        for _ in range(MAX_REQUESTS_PER_LOOP):
            if counter.stopped:
                return
            try:
                client = yield connectRaw(reactor, port)
                _, (pid,) = yield call(client, b"slow [10]")
                client.transport.loseConnection()
                yield client.whenLost()
            except Exception as e:
                counter.failures.append(repr(e))
            else:
                counter.succeeded(pid)

    @inlineCallbacks
    def test_tlsPeerAndRollingRestartKeepAlive(self):
        """
        A C{twisted.web} pool serving TLS with a certificate made for this
        test: a worker sees the client's own address; and a rolling restart
        under two HTTPS keep-alive clients (the agent's automatic retry
        turned off) fails no request: a draining worker answers with
        C{Connection: close} rather than dropping a kept-alive connection.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key = makeCertificate(directory)
        entry = yield self.startPool({**WEB_POOL, "tls": {"cert": cert, "key": key}})
        port = entry["port"]
        with open(cert, "rb") as f:
            trust = Certificate.loadPEM(f.read())

        # The address the worker sees.
        client = OneRequestClient(b"GET /peer HTTP/1.0\r\n\r\n")
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        yield connectProtocol(endpoint, client)
        local = client.transport.getHost()
        body = yield withTimeout(client.done, 10, reactor, "the /peer answer")
        host, peerPort, pid = body.split(b"\r\n\r\n", 1)[1].split()
        self.assertEqual((host.decode(), int(peerPort)), (local.host, local.port))
        self.assertIn(int(pid), workerPids(entry))

        # Keep-alive under a rolling restart.
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.retryAutomatically = False
        pool.maxPersistentPerHost = 2
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust), pool=pool)
        url = f"https://127.0.0.1:{port}/peer".encode()
        counter = _Counter()
        loops = [self.agentLoop(agent, url, counter) for _ in range(2)]
        yield counter.reach(20)
        restarted = yield self.tree.call("restart", "pool", timeout=40)
        done = len(counter.pids)
        yield counter.reach(done + 20)
        counter.stopped = True
        yield gatherResults(loops)
        self.assertEqual(counter.failures, [])
        self.assertEqual(workerPids(entry) & workerPids(restarted), set())

    @inlineCallbacks
    def agentLoop(self, agent, url: bytes, counter: _Counter):
        for _ in range(MAX_REQUESTS_PER_LOOP):
            if counter.stopped:
                return
            try:
                response = yield agent.request(b"GET", url)
                body = yield readBody(response)
                if response.code != 200:
                    raise AssertionError(f"HTTP {response.code}: {body[:200]!r}")
            except Exception as e:
                counter.failures.append(repr(e))
            else:
                counter.succeeded(int(body.split()[2]))

    @inlineCallbacks
    def test_importFailureGivesUp(self):
        """
        A pool whose workers cannot import its module fails at once, with
        the import error as its reason, after one attempt per worker.
        """
        self.tree = TwistdTree(
            self, {"pool": {**PEER_POOL, "daemon": "tests.pool_broken:Broken"}}
        )
        entries = yield self.tree.start(until=lambda e: e.get("pool", {}).get("state") == "failed")
        entry = entries["pool"]
        self.assertIn("broken on purpose in pool workers", entry["reason"])
        self.assertEqual([w["state"] for w in entry["workers"]], ["failed", "failed"])
        self.assertEqual(entry["restarts"], 0)
        lines = yield self.tree.call("logs", "pool", 200)
        spawned = [line for _, stream, line in lines if "spawned, pid" in line]
        self.assertEqual(len(spawned), 2, f"a worker was started more than once: {spawned}")

    @inlineCallbacks
    def test_sigtermDrains(self):
        """
        SIGTERM to the manager: a request in flight in a worker is
        answered, then the whole tree exits 0.
        """
        entry = yield self.startPool(WEB_POOL)
        client = yield connectRaw(reactor, entry["port"])
        client.send(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: x\r\n\r\n")

        def inFlight(e: dict) -> bool:
            return sum(w["connections"] for w in e["workers"]) == 1

        yield self.tree.waitForEntry("pool", inFlight, what="the request to arrive")
        self.tree.signal("TERM")
        yield client.whenLost(timeout=10)
        self.assertIn(b"200 OK", client.received)
        self.assertIn(b"slept 1000 ms", client.received)
        self.assertIn(b"Connection: close", client.received)
        ended = yield withTimeout(self.tree.whenExited(), 20, reactor, "twistd to exit")
        self.assertEqual(ended, (0, None))


