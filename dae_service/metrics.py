"""
What the manager measures of its tree, for the dashboard and for Prometheus.

- L{readProcess} reads one process's CPU time and resident memory from
  C{/proc} (a pure function of the files there).
- L{ProcessSampler} is a service that samples every daemon (and every pool
  worker) every few seconds and keeps a bounded history per daemon: the
  dashboard's CPU/RSS over time.
- L{dae_service.stats.CommandStats} counts the Common TCP commands and
  faults one process serves (the protocol fills it).  A child sends its
  counts to the manager as a C{stats} report event; the manager hands them
  to L{DaeMetrics.recordStats}.
- L{DaeMetrics} is the C{prometheus_client} side: a custom collector over
  the registry, the sampler and the recorded counts, in a
  C{CollectorRegistry} of its own (never the global one), rendered by
  L{DaeMetrics.render}.

Metric names follow the Prometheus conventions (C{dae_} prefix, base units
in the name, C{_total} on counters); see L{DaeMetrics} for the list.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .registry import STATES
from .stats import (
    MAX_COMMAND_NAMES,
    MAX_FAULT_CODES,
    CommandStats,
    _BoundedCounts,
    _validCount,
    _validLabel,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_HISTORY",
    "ProcessSample",
    "readProcess",
    "ProcessSampler",
    "CommandStats",
    "DaeMetrics",
    "entryWorkers",
]

#: Seconds between two samples of every process.
DEFAULT_INTERVAL = 2.0

#: Samples kept per daemon: ten minutes at the default interval.
DEFAULT_HISTORY = 300

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcessSample:
    """
    One reading of one process.

    @ivar pid: the process.
    @ivar time: when it was read (the reactor's C{seconds()}).
    @ivar cpuSeconds: user plus system CPU time since the process started.
    @ivar rssBytes: resident memory now (0 for a zombie).
    @ivar startTicks: when the process started, in clock ticks since boot:
        together with C{pid}, identifies the process (pids are reused).
    @ivar cpuPercent: CPU use since the previous sample of the same process,
        in percent of one core; L{None} for the first sample.
    """

    pid: int
    time: float
    cpuSeconds: float
    rssBytes: int
    startTicks: int
    cpuPercent: Optional[float] = None

    def toDict(self) -> dict:
        """
        The sample as the dashboard gets it.
        """
        return {
            "pid": self.pid,
            "t": self.time,
            "cpu": None if self.cpuPercent is None else round(self.cpuPercent, 2),
            "cpuSeconds": round(self.cpuSeconds, 3),
            "rss": self.rssBytes,
        }


def readProcess(pid: int, now: float, procRoot: str = "/proc") -> Optional[ProcessSample]:
    """
    Read C{pid}'s CPU time (C{/proc/<pid>/stat}: utime + stime, in clock
    ticks) and resident memory (C{/proc/<pid>/status}: C{VmRSS}).

    @return: a L{ProcessSample} (without C{cpuPercent}), or L{None} if there
        is no such process (or it vanished between the two reads).
    """
    base = os.path.join(procRoot, str(pid))
    try:
        with open(os.path.join(base, "stat"), "rb") as f:
            stat = f.read()
        with open(os.path.join(base, "status"), "rb") as f:
            status = f.read()
    except OSError:
        return None
    try:
        # "pid (comm) S ppid ...": comm may hold spaces and parentheses, so
        # count the fields after the last ")"; field 3 (state) is rest[0].
        rest = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(rest[11]) + int(rest[12])  # fields 14 utime, 15 stime
        startTicks = int(rest[19])  # field 22 starttime
    except (ValueError, IndexError):
        return None
    rss = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            parts = line.split()
            try:
                rss = int(parts[1]) * (1024 if parts[2:3] == [b"kB"] else 1)
            except (ValueError, IndexError):
                rss = 0
            break
    return ProcessSample(pid, now, ticks / _CLOCK_TICKS, rss, startTicks)


def entryWorkers(entry: Any) -> list[dict]:
    """
    A pool entry's workers (C{[{index, pid, state, connections, restarts}]});
    an empty list for a plain daemon (or an entry from before pools).
    """
    workers = getattr(entry, "workers", None)
    if not workers:
        return []
    return [dict(w) for w in workers if isinstance(w, Mapping)]


class ProcessSampler(Service):
    """
    Samples the CPU time and resident memory of every daemon's process and
    every pool worker's process every C{interval} seconds.

    @ivar latest: C{{name: ProcessSample}}, the latest sample of each
        daemon's current process.
    @ivar latestWorkers: C{{(name, index): ProcessSample}}, likewise for
        pool workers.
    """

    log = Logger()

    def __init__(
        self,
        manager: Any,
        reactor: Any,
        interval: float = DEFAULT_INTERVAL,
        history: int = DEFAULT_HISTORY,
        procRoot: str = "/proc",
    ) -> None:
        """
        @param manager: the L{dae_service.manager.Dae} (only its C{registry}
            is used).
        @param reactor: an L{IReactorTime}.
        @param history: samples kept per daemon.
        @param procRoot: where C{/proc} is (tests point it elsewhere).
        """
        self.manager = manager
        self.reactor = reactor
        self.interval = interval
        self.historyLength = history
        self.procRoot = procRoot
        self.latest: dict[str, ProcessSample] = {}
        self.latestWorkers: dict[tuple[str, int], ProcessSample] = {}
        self._history: dict[str, deque] = {}
        self._observers: list[Callable[[dict], Any]] = []
        self._loop: Optional[LoopingCall] = None
        self._loopDone: Optional[Deferred] = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loopDone = self._loop.start(self.interval, now=True)
        self._loopDone.addErrback(self._loopFailed)

    def _tick(self) -> None:
        try:
            self.sample()
        except Exception:
            # A bug here must not stop the sampling for good.
            self.log.failure("process sampling failed")

    def _loopFailed(self, failure: Failure) -> None:
        self.log.failure("process sampling stopped", failure)

    def stopService(self) -> Deferred:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return succeed(None)

    def subscribe(self, observer: Callable[[dict], Any]) -> Callable[[], None]:
        """
        Call C{observer(samples)} after every round, with what
        L{snapshot} returns.

        @return: a callable that unsubscribes.
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def sample(self) -> dict:
        """
        Read every process now, record the samples, tell the observers.

        @return: L{snapshot}'s value.
        """
        now = self.reactor.seconds()
        seen = set()
        seenWorkers = set()
        for entry in self.manager.registry:
            seen.add(entry.name)
            if entry.pid is not None:
                sample = self._read(entry.pid, now, self.latest.get(entry.name))
                if sample is not None:
                    self.latest[entry.name] = sample
                    history = self._history.get(entry.name)
                    if history is None:
                        history = self._history[entry.name] = deque(maxlen=self.historyLength)
                    history.append(sample)
                else:
                    self.latest.pop(entry.name, None)
            else:
                self.latest.pop(entry.name, None)
            for worker in entryWorkers(entry):
                index, pid = worker.get("index"), worker.get("pid")
                if not isinstance(index, int) or not isinstance(pid, int):
                    continue
                key = (entry.name, index)
                sample = self._read(pid, now, self.latestWorkers.get(key))
                if sample is not None:
                    seenWorkers.add(key)
                    self.latestWorkers[key] = sample
        for name in list(self._history):
            if name not in seen:
                del self._history[name]
                self.latest.pop(name, None)
        for key in list(self.latestWorkers):
            if key not in seenWorkers:
                del self.latestWorkers[key]
        samples = self.snapshot()
        for observer in list(self._observers):
            try:
                observer(samples)
            except Exception:
                self.log.failure("sample observer {observer!r} failed", observer=observer)
        return samples

    def _read(self, pid: int, now: float, previous: Optional[ProcessSample]) -> Optional[ProcessSample]:
        sample = readProcess(pid, now, self.procRoot)
        if sample is None:
            return None
        if (
            previous is not None
            and previous.pid == sample.pid
            and previous.startTicks == sample.startTicks
            and sample.time > previous.time
        ):
            used = max(0.0, sample.cpuSeconds - previous.cpuSeconds)
            percent = 100.0 * used / (sample.time - previous.time)
            sample = ProcessSample(
                sample.pid, sample.time, sample.cpuSeconds, sample.rssBytes, sample.startTicks, percent
            )
        return sample

    def snapshot(self) -> dict:
        """
        The latest samples: C{{name: {pid, t, cpu, cpuSeconds, rss, workers:
        {index: {...}}}}}; daemons without a live process are left out.
        """
        result: dict[str, dict] = {}
        for name, sample in self.latest.items():
            result[name] = dict(sample.toDict(), workers={})
        for (name, index), sample in self.latestWorkers.items():
            result.setdefault(name, {"workers": {}})["workers"][str(index)] = sample.toDict()
        return result

    def history(self, name: str) -> list[dict]:
        """
        C{name}'s samples, oldest first (at most C{history} of them).
        """
        return [s.toDict() for s in self._history.get(name, ())]

    def histories(self) -> dict[str, list[dict]]:
        """
        Every daemon's samples, by name.
        """
        return {name: self.history(name) for name in self._history}


class _RecordedStats:
    """
    What the manager knows of one daemon's (or pool worker's) counts: the
    counts of the current process, and the totals of the processes before
    it, so that C{dae_commands_total} survives a restart.
    """

    def __init__(self) -> None:
        self.pid: Optional[int] = None
        self.current: dict[str, dict[str, int]] = {"commands": {}, "faults": {}}
        self.base: dict[str, _BoundedCounts] = {
            "commands": _BoundedCounts(MAX_COMMAND_NAMES),
            "faults": _BoundedCounts(MAX_FAULT_CODES),
        }

    def record(self, pid: Optional[int], stats: Mapping[str, Any]) -> None:
        fresh = {
            kind: {k: v for k, v in (stats.get(kind) or {}).items() if _validLabel(k) and _validCount(v)}
            if isinstance(stats.get(kind), Mapping)
            else {}
            for kind in ("commands", "faults")
        }
        # A new process, or counts that went down (the same pid reused, or
        # a reset): what the previous process counted is kept in the base.
        restarted = pid != self.pid or any(
            fresh[kind].get(k, 0) < v for kind in fresh for k, v in self.current[kind].items()
        )
        if restarted:
            for kind in ("commands", "faults"):
                for k, v in self.current[kind].items():
                    self.base[kind].add(k, v)
        self.pid = pid
        self.current = fresh

    def totals(self, kind: str) -> dict[str, int]:
        counts = _BoundedCounts(self.base[kind].limit)
        counts.counts = self.base[kind].copy()
        for k, v in self.current[kind].items():
            counts.add(k, v)
        return counts.counts


class DaeCollector(Collector):
    """
    The C{prometheus_client} collector of a L{DaeMetrics}: reads the
    registry, the sampler and the recorded counts at every scrape.
    """

    def __init__(self, metrics: "DaeMetrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics.families())


class DaeMetrics:
    """
    The manager's Prometheus metrics, in a C{CollectorRegistry} of their own
    (C{.registry}):

    =========================================  ==================  =====================================
    name                                       labels              value
    =========================================  ==================  =====================================
    C{dae_daemon_up}                           daemon              1 if ready, else 0
    C{dae_daemon_state}                        daemon, state       1 for its current state, 0 for others
    C{dae_daemon_restarts_total}               daemon              restarts by the supervisor
    C{dae_daemon_start_time_seconds}           daemon              when the current run was spawned
    C{dae_daemon_cpu_seconds_total}            daemon              CPU time of its (main) process
    C{dae_daemon_resident_memory_bytes}        daemon              resident memory of its (main) process
    C{dae_pool_worker_up}                      daemon, worker      1 if the worker is ready
    C{dae_pool_worker_connections}             daemon, worker      open client connections
    C{dae_pool_worker_restarts_total}          daemon, worker      restarts of that worker
    C{dae_pool_worker_cpu_seconds_total}       daemon, worker      CPU time of the worker's process
    C{dae_pool_worker_resident_memory_bytes}   daemon, worker      resident memory of the worker
    C{dae_commands_total}                      daemon, command     Common TCP commands answered
    C{dae_faults_total}                        daemon, code        fault replies sent
    C{process_*}                                                   the manager's own process (standard)
    =========================================  ==================  =====================================

    CPU and memory are the sampler's latest reading (at most one sampling
    interval old).  Commands and faults of the manager itself are under
    C{daemon="dae"}; those of children are what they last reported through
    L{recordStats}, plus what their previous processes had counted.
    """

    def __init__(self, manager: Any, sampler: Optional[ProcessSampler] = None, processCollector: bool = True) -> None:
        """
        @param manager: the L{dae_service.manager.Dae}: its C{registry}.
        @param sampler: where CPU and memory come from (none: not exposed).
        @param processCollector: also expose the manager's own standard
            C{process_*} metrics.
        """
        self.manager = manager
        self.sampler = sampler
        self._noStats = CommandStats()
        self._recorded: dict[tuple[str, Optional[int]], _RecordedStats] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaeCollector(self))
        if processCollector:
            ProcessCollector(registry=self.registry)

    @property
    def controlStats(self) -> CommandStats:
        """
        What the manager's own control daemon serves (C{daemon="dae"}),
        counted by its protocol like any daemon's.
        """
        control = getattr(self.manager, "control", None)
        return getattr(control, "commandStats", None) or self._noStats

    def recordStats(self, name: str, stats: Mapping[str, Any]) -> None:
        """
        Take a C{stats} report event from daemon C{name}'s child (the whole
        event as read from its report pipe)::

            {"event": "stats", "pid": 1234, "worker": 0,
             "commands": {"get": 12}, "faults": {"bad_args": 1}}

        Counts are cumulative for the reporting process; C{pid} (else the
        registry entry's pid) tells a new process apart, whose counts then
        add to the previous one's.  C{worker} (optional) is a pool worker's
        index: a pool's workers report one by one and their counts add up
        under the pool's name.  Invalid parts are ignored; nothing raises.
        """
        if not isinstance(stats, Mapping) or name not in self.manager.registry:
            return
        worker = stats.get("worker")
        if not _validCount(worker):
            worker = None
        pid = stats.get("pid")
        if not _validCount(pid):
            entry = self.manager.registry.get(name)
            pid = entry.pid if entry is not None else None
        key = (name, worker)
        recorded = self._recorded.get(key)
        if recorded is None:
            # Bounded by the configured daemons times their workers.
            recorded = self._recorded[key] = _RecordedStats()
        recorded.record(pid, stats)

    def forget(self, name: str) -> None:
        """
        Drop what was recorded of C{name} (a daemon removed by a reload).
        """
        for key in [k for k in self._recorded if k[0] == name]:
            del self._recorded[key]

    def commandTotals(self, name: str, kind: str) -> dict[str, int]:
        """
        C{name}'s counts of C{kind} (C{"commands"} or C{"faults"}), added up
        over its processes and workers.
        """
        totals: dict[str, int] = {}
        for (daemon, _), recorded in self._recorded.items():
            if daemon == name:
                for k, v in recorded.totals(kind).items():
                    totals[k] = totals.get(k, 0) + v
        return totals

    def families(self) -> list[Metric]:
        """
        Every C{dae_*} metric family, as of now.
        """
        up = GaugeMetricFamily("dae_daemon_up", "Whether the daemon is ready (1) or not (0).", labels=["daemon"])
        state = GaugeMetricFamily(
            "dae_daemon_state", "The daemon's state: 1 for the current one, 0 for the others.", labels=["daemon", "state"]
        )
        restarts = CounterMetricFamily(
            "dae_daemon_restarts", "Times the supervisor restarted the daemon.", labels=["daemon"]
        )
        startTime = GaugeMetricFamily(
            "dae_daemon_start_time_seconds",
            "When the daemon's current process was spawned, in seconds since the epoch.",
            labels=["daemon"],
        )
        cpu = CounterMetricFamily(
            "dae_daemon_cpu_seconds", "User and system CPU time of the daemon's process.", labels=["daemon"]
        )
        rss = GaugeMetricFamily(
            "dae_daemon_resident_memory_bytes", "Resident memory of the daemon's process.", labels=["daemon"]
        )
        workerUp = GaugeMetricFamily(
            "dae_pool_worker_up", "Whether the pool worker is ready (1) or not (0).", labels=["daemon", "worker"]
        )
        workerConnections = GaugeMetricFamily(
            "dae_pool_worker_connections", "Client connections open at the pool worker.", labels=["daemon", "worker"]
        )
        workerRestarts = CounterMetricFamily(
            "dae_pool_worker_restarts", "Times the pool restarted the worker.", labels=["daemon", "worker"]
        )
        workerCpu = CounterMetricFamily(
            "dae_pool_worker_cpu_seconds", "User and system CPU time of the worker's process.", labels=["daemon", "worker"]
        )
        workerRss = GaugeMetricFamily(
            "dae_pool_worker_resident_memory_bytes", "Resident memory of the worker's process.", labels=["daemon", "worker"]
        )
        commands = CounterMetricFamily(
            "dae_commands", "Common TCP commands answered.", labels=["daemon", "command"]
        )
        faults = CounterMetricFamily("dae_faults", "Common TCP fault replies sent.", labels=["daemon", "code"])

        latest = self.sampler.latest if self.sampler is not None else {}
        latestWorkers = self.sampler.latestWorkers if self.sampler is not None else {}
        for entry in self.manager.registry:
            name = entry.name
            up.add_metric([name], 1.0 if entry.state == "ready" else 0.0)
            for s in STATES:
                state.add_metric([name, s], 1.0 if entry.state == s else 0.0)
            restarts.add_metric([name], entry.restarts)
            if entry.started is not None and entry.pid is not None:
                startTime.add_metric([name], entry.started / 1000.0)
            sample = latest.get(name)
            if sample is not None and sample.pid == entry.pid:
                cpu.add_metric([name], sample.cpuSeconds)
                rss.add_metric([name], sample.rssBytes)
            for worker in entryWorkers(entry):
                index = worker.get("index")
                if not isinstance(index, int):
                    continue
                labels = [name, str(index)]
                workerUp.add_metric(labels, 1.0 if worker.get("state") == "ready" else 0.0)
                if _validCount(worker.get("connections")):
                    workerConnections.add_metric(labels, worker["connections"])
                if _validCount(worker.get("restarts")):
                    workerRestarts.add_metric(labels, worker["restarts"])
                sample = latestWorkers.get((name, index))
                if sample is not None and sample.pid == worker.get("pid"):
                    workerCpu.add_metric(labels, sample.cpuSeconds)
                    workerRss.add_metric(labels, sample.rssBytes)
            for command, count in sorted(self.commandTotals(name, "commands").items()):
                commands.add_metric([name, command], count)
            for code, count in sorted(self.commandTotals(name, "faults").items()):
                faults.add_metric([name, code], count)
        for command, count in sorted(self.controlStats.commands.items()):
            commands.add_metric(["dae", command], count)
        for code, count in sorted(self.controlStats.faults.items()):
            faults.add_metric(["dae", code], count)
        return [
            up, state, restarts, startTime, cpu, rss,
            workerUp, workerConnections, workerRestarts, workerCpu, workerRss,
            commands, faults,
        ]

    def render(self, accept: Optional[str] = None) -> tuple[bytes, str]:
        """
        The exposition for a scrape whose C{Accept} header is C{accept}
        (the Prometheus text format, or OpenMetrics when asked for).

        @return: C{(body, contentType)}.
        """
        encoder, contentType = choose_encoder(accept or "")
        return encoder(self.registry), contentType
