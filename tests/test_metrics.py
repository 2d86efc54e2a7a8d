"""
Tests for L{dae_service.metrics}: reading C{/proc} (a fake one written by
the test, and this process's real one), the sampler on a fake clock, the
Common TCP counters, and the Prometheus exposition parsed back with
C{prometheus_client}'s own parser.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.testing import StringTransport

from dae_service import wire
from dae_service.errors import Fault
from dae_service.metrics import DaeMetrics, ProcessSampler, readProcess
from dae_service.protocol import CommonTCPServerFactory
from dae_service.stats import MAX_COMMAND_NAMES, OTHER, CommandStats
from dae_service.registry import STATES, Entry, Registry

from .test_web import FakeProc

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class PoolEntry(Entry):
    """
    An entry as a pool's will be: with its workers.
    """

    workers: tuple = field(default=())


class FakeManager:
    """
    What the metrics read of a manager: its registry.
    """

    def __init__(self, *entries: Entry) -> None:
        self.registry = Registry()
        for entry in entries:
            self.registry.add(entry)


def families(metrics: DaeMetrics) -> dict:
    """
    The exposition, parsed back: C{{name: family}}.
    """
    body, contentType = metrics.render()
    return {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}


def samples(family: Any, **match: str) -> dict:
    """
    C{{labels-tuple: value}} of a family's samples whose labels match.
    """
    found = {}
    for s in family.samples:
        if all(s.labels.get(k) == v for k, v in match.items()):
            found[tuple(sorted(s.labels.items()))] = s.value
    return found


def value(family: Any, **labels: str) -> float:
    (found,) = [s.value for s in family.samples if s.labels == labels]
    return found


class ReadProcessTests(SynchronousTestCase):
    """
    L{readProcess}.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.proc = FakeProc(self.root)

    def test_fields(self) -> None:
        """
        CPU is utime + stime in seconds; RSS is C{VmRSS} in bytes; the
        start time tells processes with the same pid apart.
        """
        self.proc.write(42, ticks=3 * TICKS, rss_kb=1500, start=777)
        sample = readProcess(42, 10.0, self.root)
        self.assertEqual((sample.pid, sample.time), (42, 10.0))
        self.assertAlmostEqual(sample.cpuSeconds, 3.0)
        self.assertEqual(sample.rssBytes, 1500 * 1024)
        self.assertEqual(sample.startTicks, 777)
        self.assertIsNone(sample.cpuPercent)

    def test_strangeName(self) -> None:
        """
        A command name with spaces and parentheses does not shift the
        fields.
        """
        self.proc.write(43, ticks=TICKS, rss_kb=1, comm="a) (b c")
        self.assertAlmostEqual(readProcess(43, 0, self.root).cpuSeconds, 1.0)

    def test_zombie(self) -> None:
        """
        A zombie (no C{VmRSS}) uses no memory.
        """
        self.proc.write(44, ticks=5, rss_kb=None)
        self.assertEqual(readProcess(44, 0, self.root).rssBytes, 0)

    def test_gone(self) -> None:
        """
        No such process: L{None}.  Nor for a garbled C{stat}.
        """
        self.assertIsNone(readProcess(45, 0, self.root))
        os.makedirs(os.path.join(self.root, "46"))
        with open(os.path.join(self.root, "46", "stat"), "w") as f:
            f.write("46 (x) S 1")
        with open(os.path.join(self.root, "46", "status"), "w") as f:
            f.write("")
        self.assertIsNone(readProcess(46, 0, self.root))

    def test_realProcess(self) -> None:
        """
        This very process, read from the real C{/proc}.
        """
        sample = readProcess(os.getpid(), 0)
        self.assertGreater(sample.rssBytes, 1024 * 1024)
        self.assertGreater(sample.cpuSeconds, 0)


class SamplerTests(SynchronousTestCase):
    """
    L{ProcessSampler} on a fake clock and a fake C{/proc}.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.proc = FakeProc(self.root)
        self.clock = Clock()
        self.manager = FakeManager(
            Entry("alpha", state="ready", pid=100),
            Entry("beta", state="stopped"),
        )
        self.sampler = ProcessSampler(self.manager, self.clock, interval=2.0, history=3, procRoot=self.root)

    def test_everyInterval(self) -> None:
        """
        It samples at once, then every C{interval}; stopping cancels the
        timer.
        """
        self.proc.write(100, ticks=0, rss_kb=10)
        seen = []
        self.sampler.subscribe(seen.append)
        self.sampler.startService()
        self.assertEqual(len(seen), 1)
        self.clock.advance(2)
        self.assertEqual(len(seen), 2)
        self.successResultOf(self.sampler.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cpuPercent(self) -> None:
        """
        CPU use is the CPU time used since the previous sample over the
        time passed, in percent of one core.
        """
        self.proc.write(100, ticks=0, rss_kb=10)
        self.sampler.sample()
        self.clock.advance(2)
        self.proc.write(100, ticks=TICKS, rss_kb=20)
        snapshot = self.sampler.sample()
        self.assertEqual(snapshot["alpha"]["cpu"], 50.0)
        self.assertEqual(snapshot["alpha"]["rss"], 20 * 1024)
        self.assertEqual(snapshot["alpha"]["pid"], 100)
        self.assertNotIn("beta", snapshot)

    def test_newProcess(self) -> None:
        """
        A new process (another pid, or the same pid started anew) starts
        without a CPU percentage.
        """
        self.proc.write(100, ticks=0, rss_kb=10, start=1)
        self.sampler.sample()
        self.clock.advance(2)
        self.proc.write(100, ticks=TICKS, rss_kb=10, start=2)
        self.assertIsNone(self.sampler.sample()["alpha"]["cpu"])
        self.manager.registry.update("alpha", pid=101)
        self.proc.write(101, ticks=0, rss_kb=10)
        self.clock.advance(2)
        snapshot = self.sampler.sample()
        self.assertEqual(snapshot["alpha"]["pid"], 101)
        self.assertIsNone(snapshot["alpha"]["cpu"])

    def test_historyBounded(self) -> None:
        """
        The history keeps the last C{history} samples, oldest first.
        """
        for i in range(5):
            self.proc.write(100, ticks=i, rss_kb=i + 1)
            self.sampler.sample()
            self.clock.advance(2)
        self.assertEqual([s["rss"] for s in self.sampler.history("alpha")], [3072, 4096, 5120])
        self.assertEqual(list(self.sampler.histories()), ["alpha"])

    def test_goneProcessAndDaemon(self) -> None:
        """
        A process that vanished has no latest sample; a daemon removed
        from the registry loses its history.
        """
        self.proc.write(100, ticks=1, rss_kb=1)
        self.sampler.sample()
        self.proc.remove(100)
        self.assertEqual(self.sampler.sample(), {})
        self.assertEqual(len(self.sampler.history("alpha")), 1)
        self.manager.registry.remove("alpha")
        self.sampler.sample()
        self.assertEqual(self.sampler.history("alpha"), [])

    def test_workers(self) -> None:
        """
        A pool's workers are sampled one by one.
        """
        manager = FakeManager(
            PoolEntry(
                "pool",
                state="ready",
                pid=200,
                workers=(
                    {"index": 0, "pid": 201, "state": "ready", "connections": 3, "restarts": 0},
                    {"index": 1, "pid": 202, "state": "starting", "connections": 0, "restarts": 2},
                ),
            )
        )
        for pid in (200, 201, 202):
            self.proc.write(pid, ticks=pid, rss_kb=pid)
        sampler = ProcessSampler(manager, self.clock, procRoot=self.root)
        snapshot = sampler.sample()
        self.assertEqual(snapshot["pool"]["rss"], 200 * 1024)
        self.assertEqual(snapshot["pool"]["workers"]["1"]["rss"], 202 * 1024)
        self.assertEqual(sorted(sampler.latestWorkers), [("pool", 0), ("pool", 1)])

    def test_observerFailure(self) -> None:
        """
        An observer that raises is logged; the others still hear.
        """
        self.proc.write(100, ticks=1, rss_kb=1)
        heard = []

        def broken(samples: dict) -> None:
            raise RuntimeError("observer bug")

        self.sampler.subscribe(broken)
        unsubscribe = self.sampler.subscribe(heard.append)
        self.sampler.sample()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(heard), 1)
        unsubscribe()
        self.sampler.sample()
        self.assertEqual(len(heard), 1)
        self.flushLoggedErrors(RuntimeError)


class Router:
    """
    A router whose commands answer as told.
    """

    def __init__(self) -> None:
        self.results: dict = {}

    def dispatch(self, connection: Any, name: str, args: list) -> Any:
        result = self.results.get(name, b"ok\n")
        if isinstance(result, Exception):
            raise result
        if callable(result):
            return result()
        return result

    def closesConnection(self, name: str) -> bool:
        return name == "dae"

    def isEventName(self, name: str) -> bool:
        return name != "ok"


class CommandStatsTests(SynchronousTestCase):
    """
    L{CommandStats}, as the Common TCP protocol fills it.
    """

    def setUp(self) -> None:
        self.stats = CommandStats()
        self.inner = Router()
        factory = CommonTCPServerFactory(self.inner, wire.DEFAULT_MAX_LENGTH, 100, self.stats)
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_counts(self) -> None:
        """
        Each command is counted by name; a L{Fault} raised, or failing its
        Deferred, by code; any other exception as C{internal}; and faults
        the wire layer answers itself (C{bad_json}) too.
        """
        self.inner.results = {
            "bad": Fault(wire.BAD_ARGS, "no", "bad"),
            "broken": RuntimeError("bug"),
            "later": lambda: fail(Fault(wire.NOT_FOUND, "no", "later")),
            "fine": lambda: succeed(b"fine []\n"),
        }
        self.protocol.dataReceived(
            b'get []\nget []\nbad []\nbroken []\nlater []\nfine []\nx [1,\n'
        )
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.stats.commands, {"get": 2, "bad": 1, "broken": 1, "later": 1, "fine": 1})
        self.assertEqual(
            self.stats.faults,
            {wire.BAD_ARGS: 1, "internal": 1, wire.NOT_FOUND: 1, wire.BAD_JSON: 1},
        )

    def test_cancelledIsNoFault(self) -> None:
        """
        A reply cancelled because its connection closed is not a fault.
        """
        self.inner.results = {"slow": Deferred}
        self.protocol.dataReceived(b"slow []\n")
        self.protocol.connectionLost(None)
        self.assertEqual(self.stats.faults, {})

    def test_namesBounded(self) -> None:
        """
        Past L{MAX_COMMAND_NAMES} distinct names (any client can send any
        name), the rest count under C{_other}; so do unprintable ones.
        """
        for i in range(MAX_COMMAND_NAMES + 10):
            self.stats.command(f"c{i}")
        self.stats.command("bad\nname")
        commands = self.stats.commands
        self.assertEqual(len(commands), MAX_COMMAND_NAMES + 1)
        self.assertEqual(commands[OTHER], 11)

    def test_reportEvent(self) -> None:
        """
        The C{stats} report event holds the counts and this pid.
        """
        self.stats.command("get")
        self.stats.fault("bad_args")
        self.assertEqual(
            self.stats.reportEvent(),
            {"event": "stats", "pid": os.getpid(), "commands": {"get": 1}, "faults": {"bad_args": 1}},
        )

    def test_reportEventFits(self) -> None:
        """
        However many names were counted, the event fits the byte budget
        (a report line must stay under PIPE_BUF): the least used names go
        to C{_other}, and no count is lost.
        """
        for i in range(MAX_COMMAND_NAMES):
            for _ in range(i + 1):
                self.stats.command(f"command-with-a-long-name-{i:03d}")
        event = self.stats.reportEvent(maxBytes=1000)
        self.assertLessEqual(len(json.dumps(event, separators=(",", ":"))), 1000)
        self.assertEqual(sum(event["commands"].values()), sum(range(1, MAX_COMMAND_NAMES + 1)))
        self.assertIn("command-with-a-long-name-099", event["commands"])
        self.assertIn(OTHER, event["commands"])

    def test_generation(self) -> None:
        """
        The generation moves with every count, so a reporter can tell
        whether there is anything new to send.
        """
        before = self.stats.generation
        self.stats.command("x")
        self.assertGreater(self.stats.generation, before)


class ExpositionTests(SynchronousTestCase):
    """
    L{DaeMetrics}: the exposition, parsed back with C{prometheus_client}.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.proc = FakeProc(self.root)
        self.manager = FakeManager(
            Entry("alpha", state="ready", pid=100, port=7001, restarts=2, started=1_700_000_000_000),
            Entry("beta", state="backoff", restarts=5),
            PoolEntry(
                "pool",
                state="ready",
                pid=200,
                started=1_700_000_001_000,
                workers=(
                    {"index": 0, "pid": 201, "state": "ready", "connections": 3, "restarts": 0},
                    {"index": 1, "pid": 202, "state": "starting", "connections": 0, "restarts": 2},
                ),
            ),
        )
        self.clock = Clock()
        self.sampler = ProcessSampler(self.manager, self.clock, procRoot=self.root)
        self.metrics = DaeMetrics(self.manager, self.sampler)

    def test_daemonState(self) -> None:
        """
        C{dae_daemon_up} is 1 for a ready daemon; C{dae_daemon_state} is a
        one-hot gauge over every state; restarts are a counter.
        """
        found = families(self.metrics)
        self.assertEqual(value(found["dae_daemon_up"], daemon="alpha"), 1)
        self.assertEqual(value(found["dae_daemon_up"], daemon="beta"), 0)
        state = found["dae_daemon_state"]
        self.assertEqual(state.type, "gauge")
        beta = {s.labels["state"]: s.value for s in state.samples if s.labels["daemon"] == "beta"}
        self.assertEqual(set(beta), set(STATES))
        self.assertEqual([k for k, v in beta.items() if v == 1], ["backoff"])
        restarts = found["dae_daemon_restarts"]
        self.assertEqual(restarts.type, "counter")
        self.assertEqual(restarts.samples[0].name, "dae_daemon_restarts_total")
        self.assertEqual(value(restarts, daemon="beta"), 5)
        start = found["dae_daemon_start_time_seconds"]
        self.assertEqual(value(start, daemon="alpha"), 1_700_000_000.0)
        self.assertEqual(samples(start, daemon="beta"), {})

    def test_cpuAndMemory(self) -> None:
        """
        CPU seconds and resident bytes come from the latest sample, for
        daemons and pool workers; nothing for a daemon without a process.
        """
        for pid in (100, 200, 201, 202):
            self.proc.write(pid, ticks=pid * TICKS, rss_kb=pid)
        self.sampler.sample()
        found = families(self.metrics)
        cpu = found["dae_daemon_cpu_seconds"]
        self.assertEqual(cpu.type, "counter")
        self.assertEqual(cpu.samples[0].name, "dae_daemon_cpu_seconds_total")
        self.assertEqual(value(cpu, daemon="alpha"), 100.0)
        self.assertEqual(samples(cpu, daemon="beta"), {})
        self.assertEqual(value(found["dae_daemon_resident_memory_bytes"], daemon="pool"), 200 * 1024)
        self.assertEqual(value(found["dae_pool_worker_cpu_seconds"], daemon="pool", worker="1"), 202.0)
        self.assertEqual(
            value(found["dae_pool_worker_resident_memory_bytes"], daemon="pool", worker="0"), 201 * 1024
        )

    def test_staleSampleIgnored(self) -> None:
        """
        A sample of a process the daemon no longer runs is not exposed.
        """
        self.proc.write(100, ticks=TICKS, rss_kb=1)
        self.sampler.sample()
        self.manager.registry.update("alpha", pid=101)
        self.assertEqual(samples(families(self.metrics)["dae_daemon_cpu_seconds"], daemon="alpha"), {})

    def test_poolWorkers(self) -> None:
        """
        Each pool worker's readiness, connections and restarts.
        """
        found = families(self.metrics)
        self.assertEqual(value(found["dae_pool_worker_up"], daemon="pool", worker="0"), 1)
        self.assertEqual(value(found["dae_pool_worker_up"], daemon="pool", worker="1"), 0)
        self.assertEqual(value(found["dae_pool_worker_connections"], daemon="pool", worker="0"), 3)
        self.assertEqual(found["dae_pool_worker_connections"].type, "gauge")
        self.assertEqual(value(found["dae_pool_worker_restarts"], daemon="pool", worker="1"), 2)
        self.assertEqual(samples(found["dae_pool_worker_up"], daemon="alpha"), {})

    def test_commandsAndFaults(self) -> None:
        """
        Reported counts are exposed by daemon and command, or daemon and
        fault code; the manager's own under C{daemon="dae"}.
        """
        self.metrics.recordStats("alpha", {"event": "stats", "pid": 100, "commands": {"get": 3, "set": 1}, "faults": {"bad_args": 2}})
        self.metrics.controlStats.command("list")
        found = families(self.metrics)
        commands = found["dae_commands"]
        self.assertEqual(commands.type, "counter")
        self.assertEqual(commands.samples[0].name, "dae_commands_total")
        self.assertEqual(value(commands, daemon="alpha", command="get"), 3)
        self.assertEqual(value(commands, daemon="dae", command="list"), 1)
        self.assertEqual(value(found["dae_faults"], daemon="alpha", code="bad_args"), 2)

    def test_countsSurviveRestarts(self) -> None:
        """
        The counts of a daemon's previous process are kept when a new one
        reports (a new pid, or counts that went down), so the counter never
        goes backwards.
        """
        self.metrics.recordStats("alpha", {"pid": 100, "commands": {"get": 5}})
        self.metrics.recordStats("alpha", {"pid": 100, "commands": {"get": 7}})
        self.metrics.recordStats("alpha", {"pid": 300, "commands": {"get": 1, "set": 1}})
        self.assertEqual(self.metrics.commandTotals("alpha", "commands"), {"get": 8, "set": 1})
        self.metrics.recordStats("alpha", {"pid": 300, "commands": {"get": 0}})
        self.assertEqual(self.metrics.commandTotals("alpha", "commands"), {"get": 8, "set": 1})

    def test_poolWorkersAddUp(self) -> None:
        """
        A pool's workers report one by one; their counts add up under the
        pool's name.
        """
        self.metrics.recordStats("pool", {"pid": 201, "worker": 0, "commands": {"get": 2}})
        self.metrics.recordStats("pool", {"pid": 202, "worker": 1, "commands": {"get": 3}})
        self.assertEqual(value(families(self.metrics)["dae_commands"], daemon="pool", command="get"), 5)

    def test_pidFromRegistry(self) -> None:
        """
        A report without a pid is the current process of the daemon.
        """
        self.metrics.recordStats("alpha", {"commands": {"get": 2}})
        self.metrics.recordStats("alpha", {"commands": {"get": 4}})
        self.assertEqual(self.metrics.commandTotals("alpha", "commands"), {"get": 4})

    def test_invalidIgnored(self) -> None:
        """
        Nonsense in a report is ignored, and a report for an unknown daemon
        too; nothing raises.
        """
        self.metrics.recordStats("alpha", {"commands": {"get": -1, "ok": True, "": 3, "x": 1.5, "y": 2}, "faults": []})
        self.metrics.recordStats("alpha", "not a dict")  # type: ignore[arg-type]
        self.metrics.recordStats("nobody", {"commands": {"get": 1}})
        self.assertEqual(self.metrics.commandTotals("alpha", "commands"), {"y": 2})
        self.assertEqual(self.metrics.commandTotals("nobody", "commands"), {})
        self.metrics.forget("alpha")
        self.assertEqual(self.metrics.commandTotals("alpha", "commands"), {})

    def test_namingConventions(self) -> None:
        """
        Every family of ours is C{dae_}-prefixed, snake_case, and a counter
        exposes C{_total} samples; the manager's own C{process_*} are
        there too.
        """
        self.metrics.recordStats("alpha", {"commands": {"get": 1}, "faults": {"bad_json": 1}})
        for pid in (100, 200, 201, 202):
            self.proc.write(pid, ticks=1, rss_kb=1)
        self.sampler.sample()
        found = families(self.metrics)
        ours = [name for name in found if name.startswith("dae_")]
        self.assertEqual(len(ours), 13)
        for name in ours:
            self.assertRegex(name, r"^dae_[a-z_]+$")
            family = found[name]
            if family.type == "counter":
                self.assertTrue(all(s.name == name + "_total" for s in family.samples), name)
        self.assertIn("process_cpu_seconds", found)
        self.assertIn("process_resident_memory_bytes", found)

    def test_ownRegistry(self) -> None:
        """
        Nothing is registered in C{prometheus_client}'s global registry
        (two managers in one process would collide there).
        """
        before = set(REGISTRY._collector_to_names)
        DaeMetrics(self.manager, self.sampler)
        self.assertEqual(set(REGISTRY._collector_to_names), before)

    def test_noSampler(self) -> None:
        """
        Without a sampler there are no CPU or memory samples, and the rest
        is there.
        """
        found = families(DaeMetrics(self.manager, None, processCollector=False))
        self.assertEqual(found["dae_daemon_cpu_seconds"].samples, [])
        self.assertEqual(value(found["dae_daemon_up"], daemon="alpha"), 1)
        self.assertNotIn("process_cpu_seconds", found)
