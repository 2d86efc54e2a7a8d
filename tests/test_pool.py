"""
Tests for L{dae_service.pool}: the L{Pool} on a L{FakeLauncher}, a
L{MemoryReactorClock} and a fake listening socket (no process, no time);
L{bindListeningSocket} on real loopback sockets; and the manager running a
pool from a config, on the same fakes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dae_service.config import DaemonConfig, MAX_WORKERS
from dae_service.launcher import CONTROL_FD, POOL_FD, FakeLauncher
from dae_service.pool import BUSY_CONNECTIONS, Pool, bindListeningSocket
from dae_service.registry import Entry, Registry
from dae_service.supervisor import EX_CONFIG, RestartPolicy, StartFailed
from tests.test_manager import ENVIRON, HEADER, ManagerMixin

#: The wall clock the pools in these tests see.
NOW = 1_700_000_000.0


class FakeSocket:
    """
    The listening socket a L{Pool} binds, as far as it looks at it.
    """

    def __init__(self, fd: int = 42, port: int = 7201) -> None:
        self.fd = fd
        self.port = port
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def getsockname(self) -> tuple:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        self.closed = True


class PoolMixin:
    """
    Builds a L{Pool} called C{web} on fakes, keeping every state its entry
    went through.
    """

    def makePool(self, **options: Any) -> Pool:
        self.clock = MemoryReactorClock()
        self.launcher = FakeLauncher()
        self.registry = Registry()
        self.registry.add(Entry("web"))
        self.states: list[str] = []
        self.registry.subscribe(lambda e: self.states.append(e.state) if e.name == "web" else None)
        self.sockets: list[FakeSocket] = []
        self.ports: list = []
        self.bindError: Exception | None = None
        self.events: list[str] = []

        def bind(listen: str, port: int | None) -> FakeSocket:
            if self.bindError is not None:
                raise self.bindError
            self.ports.append(port)
            self.sockets.append(FakeSocket(fd=40 + len(self.sockets)))
            return self.sockets[-1]

        def spec(index: int, fd: int) -> dict:
            return {"index": index, "fd": fd}

        options.setdefault("minWorkers", 2)
        options.setdefault("maxWorkers", options["minWorkers"])
        options.setdefault("drainTimeout", 5.0)
        self.pool = Pool(
            "web",
            self.launcher,
            self.clock,
            self.registry,
            spec,
            RestartPolicy(jitter=0),
            listen="tcp:7201:interface=127.0.0.1",
            socketFactory=bind,
            wallClock=lambda: NOW,
            childLog=self,
            **options,
        )
        return self.pool

    # The pool's childLog

    def line(self, stream: str, line: str) -> None:
        self.events.append(line)

    def event(self, message: str) -> None:
        self.events.append(message)

    # Playing the workers

    def ready(self, *indexes: int) -> None:
        for i in indexes:
            self.launcher.ready(i, 7201)

    def load(self, i: int, connections: int, peak: int | None = None) -> None:
        self.launcher.report(
            i,
            {"event": "load", "connections": connections,
             "peak": connections if peak is None else peak},
        )

    def entry(self) -> dict:
        return self.registry.get("web").toDict()

    def workerStates(self) -> list[tuple]:
        return [(w["index"], w["state"], w["pid"]) for w in self.entry()["workers"]]

    def drains(self, i: int) -> list[dict]:
        return [
            json.loads(data)
            for fd, data in self.launcher.processes[i].written
            if fd == CONTROL_FD
        ]


class StartTests(PoolMixin, SynchronousTestCase):
    """
    L{Pool.start}: the socket, then the workers; ready with the first.
    """

    def test_startsEveryWorkerOnItsSlot(self) -> None:
        """
        The pool binds one socket per worker slot, the first on the
        configured port and the others on the port it got, and starts
        C{minWorkers} workers, each given its index and its slot's socket.
        """
        self.makePool(minWorkers=3)
        d = self.pool.start()
        self.assertEqual(self.ports, [None, 7201, 7201])
        self.assertEqual(
            self.launcher.specs, [{"index": i, "fd": 40 + i} for i in range(3)]
        )
        self.assertEqual(self.entry()["state"], "starting")
        self.assertNoResult(d)
        self.ready(0, 1, 2)
        entry = self.successResultOf(d)
        self.assertEqual((entry.state, entry.port, entry.pid), ("ready", 7201, None))

    def test_readyWithTheFirstWorker(self) -> None:
        """
        The pool is ready, with its port, as soon as one worker is; its
        start answers once every worker has settled.
        """
        self.makePool()
        d = self.pool.start()
        self.ready(1)
        entry = self.entry()
        self.assertEqual((entry["state"], entry["port"]), ("ready", 7201))
        self.assertEqual(
            self.workerStates(), [(0, "starting", 1000), (1, "ready", 1001)]
        )
        self.assertNoResult(d)
        self.ready(0)
        self.successResultOf(d)

    def test_entryListsWorkers(self) -> None:
        """
        The pool's entry lists every worker: index, pid, state, open
        connections, restarts and start time.
        """
        self.makePool()
        self.pool.start()
        self.ready(0, 1)
        workers = self.entry()["workers"]
        self.assertEqual(
            [set(w) for w in workers],
            [{"index", "pid", "state", "connections", "restarts", "started"}] * 2,
        )
        self.assertEqual([w["connections"] for w in workers], [0, 0])

    def test_cannotBind(self) -> None:
        """
        A socket that cannot be bound fails the pool at once, with the
        reason, and starts no worker.
        """
        self.makePool()
        self.bindError = CannotListenError("127.0.0.1", 7201, OSError(98, "Address in use"))
        f = self.failureResultOf(self.pool.start(), StartFailed)
        self.assertIn("cannot listen on tcp:7201", str(f.value))
        entry = self.entry()
        self.assertEqual(entry["state"], "failed")
        self.assertIn("Address in use", entry["reason"])
        self.assertEqual(self.launcher.processes, [])

    def test_importFailureGivesUp(self) -> None:
        """
        Workers that cannot import their daemon (exit 78) are not
        restarted: the pool fails with the reason, after one launch each.
        """
        self.makePool()
        d = self.pool.start()
        self.launcher.report(0, {"event": "failed", "error": "cannot import 'nope'"})
        self.launcher.exit(0, EX_CONFIG)
        self.assertEqual(self.entry()["state"], "starting")
        self.launcher.report(1, {"event": "failed", "error": "cannot import 'nope'"})
        self.launcher.exit(1, EX_CONFIG)
        f = self.failureResultOf(d, StartFailed)
        self.assertIn("cannot import 'nope'", str(f.value))
        entry = self.entry()
        self.assertEqual(entry["state"], "failed")
        self.assertEqual(entry["reason"], "worker 0: exit code 78: cannot import 'nope'")
        self.clock.advance(60)
        self.assertEqual(len(self.launcher.processes), 2)

    def test_startAgainRestartsGivenUpWorkers(self) -> None:
        """
        The slot of a worker that gave up is closed, so that no connection
        waits there for nobody; an explicit start binds the slots again and
        starts their workers.
        """
        self.makePool()
        first = self.pool.start()
        self.launcher.exit(0, EX_CONFIG)
        self.assertEqual([sock.closed for sock in self.sockets], [True, False])
        self.launcher.exit(1, EX_CONFIG)
        self.failureResultOf(first, StartFailed)
        self.assertEqual([sock.closed for sock in self.sockets], [True, True])
        d = self.pool.start()
        self.assertEqual(len(self.launcher.processes), 4)
        self.assertEqual(self.launcher.specs[2:], [{"index": 0, "fd": 42}, {"index": 1, "fd": 43}])
        self.ready(2, 3)
        self.assertEqual(self.successResultOf(d).state, "ready")


class SupervisionTests(PoolMixin, SynchronousTestCase):
    """
    Each worker is supervised: restarted with backoff, counted.
    """

    def test_crashedWorkerReplaced(self) -> None:
        """
        A worker killed while ready is started again (same index, same
        socket) while the other keeps the pool ready; the pool counts the
        restart.
        """
        self.makePool()
        self.pool.start()
        self.ready(0, 1)
        del self.states[:]
        self.launcher.exit(1, signal=signal.SIGKILL)
        self.assertEqual(self.entry()["state"], "ready")
        self.clock.advance(0.2)
        self.assertEqual(self.launcher.specs[-1], {"index": 1, "fd": 41})
        self.assertFalse(self.sockets[1].closed, "the slot's queue was dropped")
        self.ready(2)
        entry = self.entry()
        self.assertEqual(entry["restarts"], 1)
        self.assertEqual(self.workerStates(), [(0, "ready", 1000), (1, "ready", 1002)])
        self.assertEqual(set(self.states), {"ready"})

    def test_allWorkersDown(self) -> None:
        """
        With every worker in backoff the pool is in backoff too, and ready
        again with the first one back.
        """
        self.makePool()
        self.pool.start()
        self.ready(0, 1)
        self.launcher.exit(0, 1)
        self.launcher.exit(1, 1)
        entry = self.entry()
        self.assertEqual((entry["state"], entry["port"]), ("backoff", None))
        self.assertEqual(entry["reason"], "exit code 1")
        self.clock.advance(1)
        self.ready(2)
        self.assertEqual(self.entry()["state"], "ready")

    def test_output(self) -> None:
        """
        A worker's output goes to the pool's log, marked with its index.
        """
        self.makePool()
        self.pool.start()
        self.launcher.output(1, "hello")
        self.assertIn("worker 1: hello", self.events)


class LoadTests(PoolMixin, SynchronousTestCase):
    """
    Workers' load reports.
    """

    def test_connectionsInTheEntry(self) -> None:
        """
        A worker's C{load} report sets its connection count in the entry;
        a worker that exits has none.
        """
        self.makePool()
        self.pool.start()
        self.ready(0, 1)
        self.load(0, 3)
        self.load(1, 1)
        self.assertEqual([w["connections"] for w in self.entry()["workers"]], [3, 1])
        self.launcher.exit(0, signal=signal.SIGKILL)
        self.assertEqual([w["connections"] for w in self.entry()["workers"]], [0, 1])

    def test_badLoadIgnored(self) -> None:
        """
        A malformed load report changes nothing.
        """
        self.makePool()
        self.pool.start()
        self.ready(0, 1)
        for bad in (-1, "3", True, None):
            self.launcher.report(0, {"event": "load", "connections": bad})
        self.assertEqual([w["connections"] for w in self.entry()["workers"]], [0, 0])


class RollingRestartTests(PoolMixin, SynchronousTestCase):
    """
    L{Pool.restart}: one worker at a time, the new one ready before the
    old one drains.
    """

    def test_oneAtATime(self) -> None:
        """
        For each worker in turn: a replacement is started, and only once it
        is ready is the old one told to drain (with the drain deadline) and
        stopped; the pool stays ready throughout and the restart answers
        once the last old worker has exited.
        """
        self.makePool()
        self.pool.start()
        self.ready(0, 1)
        del self.states[:]
        d = self.pool.restart()
        self.assertEqual(self.launcher.specs[2], {"index": 0, "fd": 40})
        self.assertEqual(self.drains(0), [])
        self.assertEqual(self.launcher.processes[0].signals, [])
        self.ready(2)
        self.assertEqual(self.drains(0), [{"command": "drain", "deadline": NOW + 5.0}])
        self.assertEqual(self.launcher.processes[0].signals, ["TERM"])
        self.assertEqual(len(self.launcher.processes), 3, "next worker before the old one left")
        self.assertEqual(
            self.workerStates(), [(0, "stopping", 1000), (0, "ready", 1002), (1, "ready", 1001)]
        )
        self.launcher.exit(0, 0)
        self.assertEqual(self.launcher.specs[3], {"index": 1, "fd": 41})
        self.ready(3)
        self.assertEqual(self.launcher.processes[1].signals, ["TERM"])
        self.assertNoResult(d)
        self.launcher.exit(1, 0)
        entry = self.successResultOf(d)
        self.assertEqual(entry.state, "ready")
        self.assertEqual(self.workerStates(), [(0, "ready", 1002), (1, "ready", 1003)])
        self.assertEqual(set(self.states), {"ready"})
        self.assertEqual(entry.restarts, 0)
        self.assertEqual(len(self.sockets), 2, "a replacement takes over its slot's socket")
        self.assertFalse(any(sock.closed for sock in self.sockets))

    def test_replacementFails(self) -> None:
        """
        If a replacement does not become ready, the restart fails and the
        old worker keeps serving, never told to drain.
        """
        self.makePool()
        self.pool.start()
        self.ready(0, 1)
        d = self.pool.restart()
        self.launcher.exit(2, EX_CONFIG)
        f = self.failureResultOf(d, StartFailed)
        self.assertIn("the old workers keep serving", str(f.value))
        self.assertEqual(self.drains(0), [])
        self.assertEqual(self.launcher.processes[0].signals, [])
        self.assertEqual(self.workerStates(), [(0, "ready", 1000), (1, "ready", 1001)])
        self.assertEqual(self.entry()["state"], "ready")

    def test_callersShareOneRestart(self) -> None:
        """
        A restart asked for during a rolling restart joins it.
        """
        self.makePool(minWorkers=1)
        self.pool.start()
        self.ready(0)
        first, second = self.pool.restart(), self.pool.restart()
        self.assertEqual(len(self.launcher.processes), 2)
        self.ready(1)
        self.launcher.exit(0, 0)
        self.assertEqual(self.successResultOf(first).state, "ready")
        self.assertEqual(self.successResultOf(second).state, "ready")

    def test_stopDuringRestart(self) -> None:
        """
        A stop during a rolling restart ends it: every worker, old and new,
        drains and exits, and the restart fails.
        """
        self.makePool(minWorkers=1)
        self.pool.start()
        self.ready(0)
        restarting = self.pool.restart()
        stopping = self.pool.stop()
        self.assertEqual(self.launcher.processes[0].signals, ["TERM"])
        self.assertEqual(self.launcher.processes[1].signals, ["TERM"])
        self.launcher.exit(0, 0)
        self.launcher.exit(1, 0)
        self.successResultOf(stopping)
        self.failureResultOf(restarting, StartFailed)
        self.assertEqual(self.entry()["state"], "stopped")

    def test_restartStoppedPool(self) -> None:
        """
        Restarting a pool that is not running starts it.
        """
        self.makePool(minWorkers=1)
        d = self.pool.restart()
        self.ready(0)
        self.assertEqual(self.successResultOf(d).state, "ready")


class StopTests(PoolMixin, SynchronousTestCase):
    """
    L{Pool.stop}: every worker drains, with one deadline.
    """

    def test_drainsEveryWorker(self) -> None:
        """
        Every ready worker is told to drain until now + C{drainTimeout} and
        gets its stop signal; the socket is closed at once; the stop
        answers once every worker has exited.
        """
        self.makePool(drainTimeout=3.0)
        self.pool.start()
        self.ready(0, 1)
        d = self.pool.stop()
        for i in (0, 1):
            self.assertEqual(self.drains(i), [{"command": "drain", "deadline": NOW + 3.0}])
            self.assertEqual(self.launcher.processes[i].signals, ["TERM"])
        self.assertEqual([sock.closed for sock in self.sockets], [True, True])
        self.assertEqual(self.entry()["state"], "stopping")
        self.launcher.exit(0, 0)
        self.assertNoResult(d)
        self.launcher.exit(1, 0)
        self.successResultOf(d)
        entry = self.entry()
        self.assertEqual((entry["state"], entry["workers"]), ("stopped", []))

    def test_escalates(self) -> None:
        """
        A worker still running after its stop timeout gets SIGKILL.
        """
        self.makePool(minWorkers=1)
        self.pool.start()
        self.ready(0)
        self.pool.stop()
        self.clock.advance(10)
        self.assertEqual(self.launcher.processes[0].signals, ["TERM", "KILL"])

    def test_startAfterStop(self) -> None:
        """
        A stopped pool starts again on a new socket.
        """
        self.makePool(minWorkers=1)
        self.pool.start()
        self.ready(0)
        d = self.pool.stop()
        self.launcher.exit(0, 0)
        self.successResultOf(d)
        d = self.pool.start()
        self.ready(1)
        self.assertEqual(self.successResultOf(d).state, "ready")
        self.assertEqual(len(self.sockets), 2)
        self.assertEqual(self.ports, [None, None], "the port is bound afresh")
        self.assertEqual(self.launcher.specs[-1], {"index": 0, "fd": 41})

    def test_startWhileStopping(self) -> None:
        """
        A start asked for while the pool is stopping waits for the stop
        (the old socket may still be open in a draining worker).
        """
        self.makePool(minWorkers=1)
        self.pool.start()
        self.ready(0)
        self.pool.stop()
        d = self.pool.start()
        self.assertEqual(len(self.launcher.processes), 1)
        self.launcher.exit(0, 0)
        self.assertEqual(len(self.launcher.processes), 2)
        self.ready(1)
        self.assertEqual(self.successResultOf(d).state, "ready")


class ScalingTests(PoolMixin, SynchronousTestCase):
    """
    Between C{minWorkers} and C{maxWorkers}: grow when every ready worker
    is busy, shrink after C{idleTimeout} of idleness, one step at a time.
    """

    def scalingPool(self) -> None:
        self.makePool(minWorkers=1, maxWorkers=3, idleTimeout=10.0)
        self.pool.start()
        self.ready(0)

    def test_growsWhenAllBusy(self) -> None:
        """
        A worker with an open connection is busy; when all are, one more is
        started, and no other until it is ready; never beyond the maximum.
        """
        self.scalingPool()
        self.load(0, BUSY_CONNECTIONS)
        self.assertEqual(len(self.launcher.processes), 2)
        self.assertEqual(self.launcher.specs[-1], {"index": 1, "fd": 41})
        self.load(0, 5)
        self.assertEqual(len(self.launcher.processes), 2, "a second spawn while one starts")
        self.ready(1)
        self.load(1, 1)
        self.assertEqual(len(self.launcher.processes), 3)
        self.ready(2)
        self.load(2, 1)
        self.load(0, 9)
        self.assertEqual(len(self.launcher.processes), 3)

    def test_doesNotGrowWithRoom(self) -> None:
        """
        While one ready worker has no connection, the pool does not grow.
        """
        self.scalingPool()
        self.load(0, 1)
        self.ready(1)
        self.load(0, 50)
        self.assertEqual(len(self.launcher.processes), 2)

    def test_shrinksAfterIdleTimeout(self) -> None:
        """
        A worker idle for C{idleTimeout} while another has room is drained
        and stopped, the newest first, one per check, never below the
        minimum.
        """
        self.scalingPool()
        self.load(0, 1)
        self.ready(1)
        self.load(1, 1)
        self.ready(2)
        self.load(0, 0)
        self.load(1, 0)
        self.clock.advance(9)
        self.assertEqual(self.launcher.processes[2].signals, [])
        self.clock.advance(2)
        self.assertEqual(self.launcher.processes[2].signals, ["TERM"])
        self.assertEqual(self.launcher.processes[1].signals, [])
        self.assertEqual(self.drains(2), [{"command": "drain", "deadline": NOW + 5.0}])
        self.assertTrue(self.sockets[2].closed, "a removed slot takes no more connections")
        self.assertEqual([sock.closed for sock in self.sockets[:2]], [False, False])
        self.launcher.exit(2, 0)
        self.clock.advance(1)
        self.assertEqual(self.launcher.processes[1].signals, ["TERM"])
        self.launcher.exit(1, 0)
        self.clock.advance(60)
        self.assertEqual(self.launcher.processes[0].signals, [])
        self.assertEqual(self.workerStates(), [(0, "ready", 1000)])

    def test_noThrash(self) -> None:
        """
        An idle worker is kept while every other one is busy: stopping it
        would only make the pool grow again.
        """
        self.scalingPool()
        self.load(0, 1)
        self.ready(1)
        self.load(0, 2)
        self.clock.advance(60)
        self.assertEqual(self.launcher.processes[1].signals, [])
        self.assertEqual(len(self.launcher.processes), 2)

    def test_peakCountsAsBusy(self) -> None:
        """
        A worker that had connections since its last report (its peak) was
        busy then: its idle time starts again, and an older idle worker
        goes first.
        """
        self.scalingPool()
        self.load(0, 1)
        self.ready(1)
        self.load(1, 1)
        self.ready(2)
        self.load(1, 0)
        self.clock.advance(8)
        self.load(2, 0, peak=2)
        self.clock.advance(4)
        self.assertEqual(self.launcher.processes[2].signals, [])
        self.assertEqual(self.launcher.processes[1].signals, ["TERM"])

    def test_stopCancelsScaling(self) -> None:
        """
        A stopped pool leaves no timer behind.
        """
        self.scalingPool()
        self.pool.stop()
        self.launcher.exit(0, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WorkerRangeTests(SynchronousTestCase):
    """
    L{DaemonConfig.workerRange}.
    """

    def test_fixed(self) -> None:
        """
        C{workers = N} is N to N.
        """
        self.assertEqual(DaemonConfig("p", workers=3).workerRange(8), (3, 3))

    def test_defaultMaximumIsTheCPUs(self) -> None:
        """
        Without C{max_workers}, the maximum is the number of CPUs, and never
        below the minimum; without C{min_workers} the minimum is 1.
        """
        self.assertEqual(DaemonConfig("p", minWorkers=2).workerRange(8), (2, 8))
        self.assertEqual(DaemonConfig("p", minWorkers=4).workerRange(2), (4, 4))
        self.assertEqual(DaemonConfig("p", maxWorkers=3).workerRange(8), (1, 3))

    def test_bounded(self) -> None:
        """
        Nothing goes beyond L{MAX_WORKERS}, whatever the host.
        """
        self.assertEqual(
            DaemonConfig("p", minWorkers=1).workerRange(10_000), (1, MAX_WORKERS)
        )

    def test_isPool(self) -> None:
        """
        Any of the three keys makes a pool.
        """
        self.assertFalse(DaemonConfig("p").isPool)
        for key in ("workers", "minWorkers", "maxWorkers"):
            self.assertTrue(DaemonConfig("p", **{key: 1}).isPool)


class BindTests(SynchronousTestCase):
    """
    L{bindListeningSocket} on real loopback sockets.
    """

    def test_tcp(self) -> None:
        """
        A C{tcp:} endpoint string gives a non-blocking listening socket on
        that interface, with C{SO_REUSEADDR} and C{SO_REUSEPORT}, which
        another slot can join on the same port.
        """
        sock = bindListeningSocket("tcp:0:interface=127.0.0.1")
        self.addCleanup(sock.close)
        host, port = sock.getsockname()
        self.assertEqual(host, "127.0.0.1")
        self.assertGreater(port, 0)
        self.assertFalse(sock.getblocking())
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        self.assertFalse(os.get_inheritable(sock.fileno()))
        second = bindListeningSocket("tcp:0:interface=127.0.0.1", port)
        self.addCleanup(second.close)
        self.assertEqual(second.getsockname(), (host, port))

    def test_tcp6(self) -> None:
        """
        A C{tcp6:} endpoint string gives an IPv6 socket.
        """
        try:
            sock = bindListeningSocket("tcp6:0:interface=\\:\\:1")
        except CannotListenError as e:  # pragma: no cover - hosts without IPv6
            raise self.skipTest(f"no IPv6 here: {e}")
        self.addCleanup(sock.close)
        self.assertEqual(sock.family, socket.AF_INET6)
        self.assertEqual(sock.getsockname()[0], "::1")

    def test_inUse(self) -> None:
        """
        A port that another socket holds (without C{SO_REUSEPORT}) is a
        L{CannotListenError}.
        """
        first = socket.socket()
        self.addCleanup(first.close)
        first.bind(("127.0.0.1", 0))
        first.listen(1)
        port = first.getsockname()[1]
        self.assertRaises(
            CannotListenError, bindListeningSocket, f"tcp:{port}:interface=127.0.0.1"
        )

    def test_notTCP(self) -> None:
        """
        Only TCP endpoints make pools.
        """
        self.assertRaises(ValueError, bindListeningSocket, "unix:/tmp/x.sock")


POOL = """\
[daemons.web]
factory = "dae_service.examples.web:makeSite"
listen = "tcp:0:interface=127.0.0.1"
workers = 2
drain_timeout = 2
tls = {cert = "cert.pem", key = "key.pem"}

[daemons.store]
daemon = "dae_service.examples.echo:Echo"
listen = "tcp:0:interface=127.0.0.1"
min_workers = 1
max_workers = 2
"""


class ManagerPoolTests(ManagerMixin, SynchronousTestCase):
    """
    The manager runs a daemon with C{workers} as a L{Pool}: one entry,
    worker specs with the socket, C{restart} rolling, C{stop} draining.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        for name in ("cert.pem", "key.pem"):
            with open(os.path.join(self.directory, name), "w") as f:
                f.write("x")

    def makeManager(self, text: str = HEADER + POOL, start: bool = True) -> Any:
        from dae_service.config import loadConfig
        from dae_service.examples.echo import Echo
        from dae_service.examples.web import makeSite
        from dae_service.manager import Dae
        from tests.test_manager import ProcessReactor

        self.path = os.path.join(self.directory, "tree.toml")
        self.writeConfig(text)
        config = loadConfig(self.path, ENVIRON)
        self.reactor = ProcessReactor()
        self.launcher = FakeLauncher()
        self.manager = Dae(
            config,
            {"web": makeSite, "store": Echo},
            self.reactor,
            launcher=self.launcher,
            listeningPorts=lambda pid: set(),
            environ=dict(ENVIRON),
        )
        self.addCleanup(self.shutDown)
        if start:
            self.manager.startService()
        return self.manager

    def workerSpecs(self, name: str) -> list:
        return [p.spec for p in self.launcher.processes if p.spec.name == name]

    def test_workerSpecs(self) -> None:
        """
        Each worker is a python child given its slot's socket as
        descriptor 5 (C{DAE_POOL_FD}), its index (C{DAE_WORKER}), and a
        description saying what it serves: a factory here, with its drain
        timeout and TLS files.
        """
        self.makeManager()
        specs = self.workerSpecs("web")
        self.assertEqual(len(specs), 2)
        fds = [spec.fds[POOL_FD] for spec in specs]
        self.assertEqual(len(set(fds)), 2, "one socket per slot")
        ports = set()
        for fd in fds:
            sock = socket.socket(fileno=os.dup(fd))
            self.addCleanup(sock.close)
            ports.add(sock.getsockname()[1])
        self.assertEqual(len(ports), 1, "every slot on the pool's port")
        self.assertEqual([spec.env["DAE_WORKER"] for spec in specs], ["0", "1"])
        self.assertEqual({spec.env["DAE_POOL_FD"] for spec in specs}, {str(POOL_FD)})
        description = json.loads(specs[0].env["DAE_CHILD"])
        self.assertEqual(
            (description["kind"], description["reference"], description["drainTimeout"]),
            ("factory", "dae_service.examples.web:makeSite", 2.0),
        )
        self.assertEqual(
            description["tls"],
            {"cert": os.path.join(self.directory, "cert.pem"),
             "key": os.path.join(self.directory, "key.pem")},
        )
        self.assertEqual(len(self.workerSpecs("store")), 1, "min_workers = 1")

    def test_oneEntryPerPool(self) -> None:
        """
        C{list} has one entry per pool, ready with the pool's port once a
        worker is, and the workers under it.
        """
        self.makeManager()
        conn = self.connect()
        web = [i for i, p in enumerate(self.launcher.processes) if p.spec.name == "web"]
        self.launcher.ready(web[0], 1)
        (entry,) = [e for e in self.successResultOf(conn.call("list")) if e["name"] == "web"]
        fd = self.launcher.processes[web[0]].spec.fds[POOL_FD]
        port = socket.socket(fileno=os.dup(fd))
        self.addCleanup(port.close)
        self.assertEqual((entry["state"], entry["port"]), ("ready", port.getsockname()[1]))
        self.assertEqual([w["state"] for w in entry["workers"]], ["ready", "starting"])
        status = self.successResultOf(conn.call("status", "web"))
        self.assertEqual(len(status["workers"]), 2)
        self.assertEqual(status["quick_failures"], 0)

    def test_restartIsRolling(self) -> None:
        """
        C{restart} of a pool starts a replacement before stopping anyone.
        """
        self.makeManager()
        conn = self.connect(auth=True)
        web = [i for i, p in enumerate(self.launcher.processes) if p.spec.name == "web"]
        for i in web:
            self.launcher.ready(i, 1)
        before = len(self.launcher.processes)
        d = conn.call("restart", "web")
        self.assertEqual(len(self.launcher.processes), before + 1)
        self.assertEqual([self.launcher.processes[i].signals for i in web], [[], []])
        self.assertNoResult(d)
        self.launcher.ready(before, 1)
        self.assertEqual(self.launcher.processes[web[0]].signals, ["TERM"])
        self.assertEqual(self.launcher.processes[web[1]].signals, [])
        self.shutDown()
        self.fault(d, "start_failed")

    def test_shutdownDrains(self) -> None:
        """
        Stopping the manager drains every pool worker.
        """
        self.makeManager()
        web = [i for i, p in enumerate(self.launcher.processes) if p.spec.name == "web"]
        for i in web:
            self.launcher.ready(i, 1)
        d = self.manager.stopService()
        for i in web:
            written = [json.loads(data) for fd, data in self.launcher.processes[i].written]
            self.assertEqual([w["command"] for w in written], ["drain"])
            self.assertEqual(self.launcher.processes[i].signals, ["TERM"])
        for i, process in enumerate(self.launcher.processes):
            if not process.exited:
                self.launcher.exit(i, 0)
        self.successResultOf(d)
