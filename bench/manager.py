#!/usr/bin/env python
"""
Manager benchmark: how fast ``twistd -n dae`` brings up a tree, how fast it
brings back a killed daemon, and what the tree costs in memory.

Run from the repository root with the project's interpreter::

    python bench/manager.py

In one run it measures:

1. cold start: a tree of ``--daemons`` echo daemons, from spawning twistd
   until the manager has reported every daemon ``ready``;
2. the floor: as many bare Twisted processes (import twisted, listen on
   127.0.0.1:0, print the port) spawned with ``reactor.spawnProcess`` from
   one parent Twisted process, from its first spawn until every port is
   reported; and the ratio of the two (target: <= 1.5x);
3. restart: a tree of ``--tree`` daemons; ``--kills`` times, a random
   daemon that has been ready for a random 2.1-3 s is SIGKILLed, and the
   time to the manager's ``changed`` event showing it ready again with a
   new pid is taken; compared with one ``python -c "import
   twisted.internet.reactor; from dae_service.daemon import Daemon"``
   (target: restart p50 <= that + 20 ms);
4. memory: the manager's RSS with the big tree up, and each daemon's PSS
   (and the fork server's, with ``--launcher forkserver``).

``--launcher forkserver`` sets ``[dae] launcher = "forkserver"`` in both
trees (see dae_service/forkserver.py); the default is ``spawn``.  Run it
once with each to compare the two.

Beside the wall-clock figures it reports CPU time (from
/proc/<pid>/schedstat: on CPU, and runnable but waiting for one) of the
manager, the daemons, the floor's processes and everything else on the
machine, so that a figure disturbed by other load can be told from one that
is not.  See bench/README.rst.

The benchmark process is no reactor: it runs processes with ``subprocess``
and talks to the manager over its UNIX socket with a blocking socket,
``subscribe []`` then ``list []``, following the ``changed`` events.  Every
process it starts carries a marker in its environment and is killed in a
``finally`` (Ctrl-C and SIGTERM included).  Only UNIX sockets and 127.0.0.1
are used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import benchutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

DEFAULT_DAEMONS = 50
DEFAULT_REPEAT = 3
DEFAULT_KILLS = 30
DEFAULT_TREE = 4
DEFAULT_STARTS = 10
DEFAULT_SEED = None
DEFAULT_LAUNCHER = "spawn"

# Targets.
START_RATIO_TARGET = 1.5  # cold start of the tree / floor <= this
RESTART_MARGIN_S = 0.020  # restart p50 <= one Python+Twisted start + this
# A restarted child that waited longer than this (median) for a CPU was
# slowed down by other load on the machine: the restart figures say so.
DISTURBED_WAIT_S = 0.010

# A kill only hits a daemon that has been ready for a random time in this
# range (s): longer than the default stable_after (2 s, counted from the
# spawn, which comes before ready), so every restart is "at once".
STABLE_WAIT = (2.1, 3.0)
# After a restart completes, the next kill waits a random time in this range
# (s), so that two restarts never overlap: each is measured alone.
KILL_GAP = (0.05, 0.3)

DAEMON_CLASS = "dae_service.examples.echo:Echo"
DAEMON_LISTEN = "tcp:0:interface=127.0.0.1"

# `python -m twisted.scripts.twistd` does nothing (that module has no
# `if __name__ == "__main__"`) and exits 0; this is what the twistd console
# script runs.
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv[0] = 'twistd'; sys.exit(run())"
)

# One floor process: a session of its own first (as dae_service.child does:
# with the kernel's autogroup scheduling a session is one scheduling entity,
# and 50 children sharing their parent's would get one share of the CPU
# against the rest of the machine, where the manager's 50 get 50), then
# import Twisted, listen with a trivial protocol, say the port, serve until
# killed.
FLOOR_CHILD = """\
import os, sys
try:
    os.setsid()
except OSError:
    pass
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
sys.stdout.write("%d\\n" % port.getHost().port)
sys.stdout.flush()
reactor.run()
"""

# "One Python+Twisted start", the restart target's reference, and the bare
# interpreter for scale.
PYTHON_STARTS = {
    "python -c pass": "pass",
    "python + twisted reactor + Daemon": (
        "import twisted.internet.reactor; from dae_service.daemon import Daemon"
    ),
}
REFERENCE_START = "python + twisted reactor + Daemon"

MAX_LINE = 1024 * 1024
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
RESTART_TIMEOUT = 15.0


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _now() -> float:
    return time.perf_counter()


def _median(values: list) -> float:
    return statistics.median(values)


def _percentile(values: list, p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def _procField(pid: int, name: str, field: str) -> Optional[int]:
    """A ``Field:  N kB`` line of /proc/<pid>/<name>, in kB; None if gone."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def schedstat(pid: int) -> Optional[tuple]:
    """
    C{(on-CPU s, runnable-but-waiting s)} of C{pid} so far, from
    /proc/<pid>/schedstat (ns resolution); None if gone.  The wait is the
    time it was ready to run while every CPU was busy: contention.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return None


def cpuSeconds(pid: int) -> Optional[float]:
    """CPU time of C{pid} so far; None if gone."""
    stat = schedstat(pid)
    if stat is not None:
        return stat[0]
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return None


def machineBusy() -> float:
    """CPU seconds the whole machine has spent not idle since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


def _cpu(pids) -> dict:
    stats = [v for v in (schedstat(p) for p in pids) if v is not None]
    if not stats:
        return {"count": 0, "total_s": 0.0, "mean_s": None, "wait_mean_s": None}
    return {"count": len(stats), "total_s": sum(r for r, _ in stats),
            "mean_s": statistics.fmean(r for r, _ in stats),
            "wait_mean_s": statistics.fmean(w for _, w in stats)}


def rssKB(pid: int) -> Optional[int]:
    return _procField(pid, "status", "VmRSS")


def pssKB(pid: int) -> Optional[int]:
    return _procField(pid, "smaps_rollup", "Pss")


#: Set in the environment of every process the benchmark starts (the manager
#: and the floor parent pass their environment on to their children), so
#: that the clean-up finds them all, also those whose pid it never learned,
#: and never kills a process of someone else that happens to reuse a pid.
TOKEN_VARIABLE = "DAE_BENCH_RUN"
TOKEN = f"{os.getpid()}-{random.SystemRandom().getrandbits(64):016x}"


def _ours(pid: int, token: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{TOKEN_VARIABLE}={token}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _killOurs(pids, token: str, timeout: float = 5.0) -> None:
    """SIGKILL every pid in C{pids} that is still a process of this run,
    and wait (up to C{timeout}) until none is left."""
    for pid in pids:
        if _ours(pid, token):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = _now() + timeout
    while _now() < deadline and any(_ours(p, token) for p in pids):
        time.sleep(0.01)


def sweep() -> None:
    """Kill every process this benchmark started that is still alive."""
    _killOurs([int(d) for d in os.listdir("/proc") if d.isdigit()], TOKEN)


def _killGroup(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _memory(pids) -> dict:
    values = [v for v in (pssKB(p) for p in pids) if v is not None]
    if not values:
        return {"count": 0}
    return {"count": len(values), "mean_kb": statistics.fmean(values), "max_kb": max(values),
            "total_kb": sum(values)}


# --------------------------------------------------------------------------
# The manager's control socket, from blocking code
# --------------------------------------------------------------------------


class ControlClient:
    """
    A blocking Common TCP client for the manager's UNIX socket: send
    commands, and L{poll} for the packets that arrive, each stamped with the
    moment it was read.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, name: str, args: list) -> None:
        self.sock.sendall(name.encode() + b" " + json.dumps(args).encode() + b"\n")

    def poll(self, timeout: float) -> list:
        """
        Wait up to C{timeout} s for data; return every complete packet as
        C{(time, name, args)}.
        """
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not readable:
            return []
        data = self.sock.recv(1 << 20)
        t = _now()
        if not data:
            raise BenchError("the manager closed the control connection")
        self._buffer += data
        packets = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            name, _, raw = line.rstrip(b"\r").partition(b" ")
            packets.append((t, name.decode(), json.loads(raw) if raw else []))
        if len(self._buffer) > MAX_LINE:
            raise BenchError("a line from the manager longer than 1 MiB")
        return packets


# --------------------------------------------------------------------------
# A dae tree under twistd
# --------------------------------------------------------------------------


class Tree:
    """
    One ``twistd -n dae`` in a temporary directory, with C{names} echo
    daemons.  Tracks every entry and every child pid it hears of.
    """

    def __init__(self, names: list, launcher: str = "spawn") -> None:
        self.names = list(names)
        self.launcher = launcher
        self.work = tempfile.mkdtemp(prefix="dae-bench-")
        self.socketPath = os.path.join(self.work, "dae.sock")
        self.configPath = os.path.join(self.work, "dae.toml")
        self.logPath = os.path.join(self.work, "twistd.log")
        self.proc: Optional[subprocess.Popen] = None
        self.ctl: Optional[ControlClient] = None
        self.entries: dict = {}
        self.pids: set = set()
        self.t0 = 0.0
        self.wall0 = 0.0
        with open(self.configPath, "w") as f:
            f.write("[dae]\n")
            f.write(f'listen = "unix:address={self.socketPath}:mode=600:lockfile=0"\n')
            f.write(f'state_dir = "{os.path.join(self.work, "state")}"\n')
            f.write(f'launcher = "{launcher}"\n')
            for n in self.names:
                f.write(f'\n[daemons.{n}]\ndaemon = "{DAEMON_CLASS}"\nlisten = "{DAEMON_LISTEN}"\n')

    def command(self) -> list:
        return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={self.logPath}",
                "dae", "--config", self.configPath]

    def start(self) -> None:
        self.wall0 = time.time()
        self.t0 = _now()
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO, env=dict(os.environ, **{TOKEN_VARIABLE: TOKEN}),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def wallToBench(self, ms: Optional[int]) -> Optional[float]:
        """A wall-clock ms stamp from the manager, as s since L{start}."""
        return None if ms is None else ms / 1000.0 - self.wall0

    def connect(self) -> float:
        """Connect to the control socket as soon as it accepts; subscribe."""
        deadline = self.t0 + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"twistd exited with {self.proc.returncode}:\n"
                                 + _tail(self.logPath))
            try:
                self.ctl = ControlClient(self.socketPath)
                break
            except OSError:
                if _now() > deadline:
                    raise BenchError("the manager's socket never accepted:\n"
                                     + _tail(self.logPath))
                time.sleep(0.002)
        t = _now()
        self.ctl.send("subscribe", [])
        self.ctl.send("list", [])
        return t - self.t0

    def track(self, packet) -> list:
        """Update the entries from one packet; return the entries it changed."""
        _, name, args = packet
        if name == "changed":
            changed = [args[0]]
        elif name == "daemons":
            changed = list(args[0])
        elif name == "fault":
            raise BenchError(f"the manager answered a fault: {args}")
        else:
            return []
        for e in changed:
            self.entries[e["name"]] = e
            if e.get("pid"):
                self.pids.add(e["pid"])
        return changed

    def allReady(self) -> bool:
        return all(self.entries.get(n, {}).get("state") == "ready" for n in self.names)

    def waitAllReady(self) -> float:
        """Follow events until every daemon is ready; the moment, s since L{start}."""
        deadline = self.t0 + START_TIMEOUT
        last = _now()
        while not self.allReady():
            if _now() > deadline:
                states = {n: self.entries.get(n, {}).get("state") for n in self.names}
                raise BenchError(f"not all ready after {START_TIMEOUT:g} s: {states}\n"
                                 + _tail(self.logPath))
            if self.proc.poll() is not None:
                raise BenchError(f"twistd exited with {self.proc.returncode}:\n"
                                 + _tail(self.logPath))
            for packet in self.ctl.poll(0.5):
                last = packet[0]
                for e in self.track(packet):
                    if e["state"] in ("failed", "exited"):
                        raise BenchError(f"{e['name']} {e['state']}: {e.get('reason')}\n"
                                         + _tail(self.logPath))
        return last - self.t0

    def childPids(self) -> list:
        return [self.entries[n]["pid"] for n in self.names if self.entries.get(n, {}).get("pid")]

    def forkServerPids(self) -> list:
        """The manager's children that are no daemon: its fork server(s)."""
        daemons = set(self.childPids())
        found = []
        try:
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{tid}/children") as f:
                    found += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return [p for p in found if p not in daemons]

    def stop(self) -> Optional[float]:
        """SIGTERM the manager (a graceful stop of the tree); s until it exited."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.proc is None or self.proc.poll() is not None:
            return None
        t = _now()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None
        return _now() - t

    def kill(self) -> None:
        """Whatever is left: the manager's group, then every child pid heard of."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.proc is not None:
            if self.proc.poll() is None:
                _killGroup(self.proc.pid)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        _killOurs(self.pids, TOKEN)
        sweep()
        shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------
# 1 + 4. Cold start of the tree, and its memory
# --------------------------------------------------------------------------


def coldStart(a) -> dict:
    tree = Tree([f"d{i}" for i in range(a.daemons)], a.launcher)
    try:
        busy0 = machineBusy()
        tree.start()
        connected = tree.connect()
        ready = tree.waitAllReady()
        busy = machineBusy() - busy0
        pids = tree.childPids()
        children = _cpu(pids)
        managerCPU = cpuSeconds(tree.proc.pid) or 0.0
        started = [tree.wallToBench(tree.entries[n].get("started")) for n in tree.names]
        started = [s for s in started if s is not None]
        time.sleep(0.2)  # let the last ready children finish their start-up writes
        memory = {"manager_rss_kb": rssKB(tree.proc.pid), "daemon_pss": _memory(pids),
                  "forkserver_pss": _memory(tree.forkServerPids())}
        stopped = tree.stop()
        return {
            "children_cpu": children,
            "manager_cpu_s": managerCPU,
            "machine_busy_s": busy,
            "others_cpu_s": busy - children["total_s"] - managerCPU,
            "all_ready_s": ready,
            "connected_s": connected,
            "first_spawn_s": min(started) if started else None,
            "last_spawn_s": max(started) if started else None,
            "first_spawn_to_all_ready_s": ready - min(started) if started else None,
            "stop_s": stopped,
            **memory,
        }
    finally:
        tree.kill()


# --------------------------------------------------------------------------
# 2. The floor: bare Twisted processes from one parent Twisted process
# --------------------------------------------------------------------------


def floorParentMain(n: int) -> None:
    """
    Runs in its own process (``--floor-parent N``): spawn C{n} floor
    children with C{reactor.spawnProcess}, print one JSON line when every
    port is in, then serve until killed.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol

    env = dict(os.environ)
    times: dict = {}
    ports: dict = {}
    pids: list = []

    def report(result: dict) -> None:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()

    class Child(ProcessProtocol):
        def __init__(self, i: int) -> None:
            self.i = i
            self.out = b""
            self.err = b""

        def outReceived(self, data: bytes) -> None:
            self.out += data
            if b"\n" in self.out and self.i not in ports:
                ports[self.i] = int(self.out.split(b"\n", 1)[0])
                if len(ports) == n:
                    done = time.perf_counter()
                    report({"all_ports_s": done - times["first"],
                            "spawn_loop_s": times["spawned"] - times["first"],
                            "first_spawn_mono": times["first"],
                            "pids": pids})

        def errReceived(self, data: bytes) -> None:
            self.err = (self.err + data)[-2000:]

        def processEnded(self, reason) -> None:
            if self.i not in ports:
                report({"error": f"floor child {self.i} ended: {reason.value}; "
                                 + self.err.decode("utf-8", "replace")})

    def go() -> None:
        times["first"] = time.perf_counter()
        for i in range(n):
            p = reactor.spawnProcess(Child(i), sys.executable,
                                     [sys.executable, "-c", FLOOR_CHILD], env=env, path=REPO)
            pids.append(p.pid)
        times["spawned"] = time.perf_counter()

    reactor.callWhenRunning(go)
    reactor.run()


def floorStart(a) -> dict:
    # time.perf_counter is CLOCK_MONOTONIC on Linux: comparable across
    # processes, so the parent's own start-up can be told apart.
    env = dict(os.environ, **{TOKEN_VARIABLE: TOKEN})
    busy0 = machineBusy()
    t0 = _now()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--floor-parent", str(a.daemons)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True)
    pids: list = []
    try:
        readable, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if readable else b""
        t1 = _now()
        if not line:
            proc.kill()
            raise BenchError("the floor parent reported nothing: "
                             + proc.stderr.read().decode("utf-8", "replace")[-2000:])
        result = json.loads(line)
        if "error" in result:
            raise BenchError(result["error"])
        pids = result["pids"]
        busy = machineBusy() - busy0
        children = _cpu(pids)
        parentCPU = cpuSeconds(proc.pid) or 0.0
        time.sleep(0.2)
        memory = _memory(pids)
        return {
            "children_cpu": children,
            "parent_cpu_s": parentCPU,
            "machine_busy_s": busy,
            "others_cpu_s": busy - children["total_s"] - parentCPU,
            "all_ports_s": result["all_ports_s"],
            "spawn_loop_s": result["spawn_loop_s"],
            "parent_start_s": result["first_spawn_mono"] - t0,
            "popen_to_all_ports_s": t1 - t0,
            "parent_rss_kb": rssKB(proc.pid),
            "child_pss": memory,
        }
    finally:
        # The children have sessions of their own: the parent's group is
        # the parent alone.
        _killGroup(proc.pid)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        _killOurs(pids, TOKEN)
        sweep()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------
# 3. Restart after SIGKILL, and one Python+Twisted start
# --------------------------------------------------------------------------


class StartSampler:
    """
    Times C{python -c CODE} start-to-exit for each of L{PYTHON_STARTS}, one
    sample of each at a time, so that the samples can be taken in the idle
    moments of the restart test (under the same conditions as the restarts)
    and the rest afterwards.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.wall: dict = {label: [] for label in PYTHON_STARTS}
        self.cpu: dict = {label: [] for label in PYTHON_STARTS}
        self.during = 0

    def pending(self) -> bool:
        return any(len(v) < self.count for v in self.wall.values())

    def sampleOnce(self) -> None:
        for label, code in PYTHON_STARTS.items():
            if len(self.wall[label]) >= self.count:
                continue
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = _now()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                           stdin=subprocess.DEVNULL)
            self.wall[label].append(_now() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.cpu[label].append(after.ru_utime + after.ru_stime
                                   - before.ru_utime - before.ru_stime)

    def finish(self) -> dict:
        while self.pending():
            self.sampleOnce()
        return {label: {"median_s": _median(self.wall[label]), "min_s": min(self.wall[label]),
                        "cpu_median_s": _median(self.cpu[label]),
                        "samples": self.wall[label]}
                for label in PYTHON_STARTS}


def restarts(a, rng: random.Random, sampler: StartSampler) -> dict:
    names = [f"r{i}" for i in range(a.tree)]
    tree = Tree(names, a.launcher)
    samples: list = []
    try:
        tree.start()
        tree.connect()
        tree.waitAllReady()
        now = _now()
        eligibleAt = {n: now + rng.uniform(*STABLE_WAIT) for n in names}
        nextKill = 0.0
        inflight: Optional[dict] = None
        began = _now()
        while len(samples) < a.kills:
            now = _now()
            if tree.proc.poll() is not None:
                raise BenchError(f"twistd exited with {tree.proc.returncode}:\n"
                                 + _tail(tree.logPath))
            if inflight is None and now >= nextKill:
                candidates = [n for n in names if eligibleAt[n] <= now
                              and tree.entries[n]["state"] == "ready"]
                if candidates:
                    name = rng.choice(candidates)
                    pid = tree.entries[name]["pid"]
                    restartsBefore = tree.entries[name]["restarts"]
                    t = _now()
                    os.kill(pid, signal.SIGKILL)
                    inflight = {"name": name, "pid": pid, "t": t, "restarts": restartsBefore}
            if inflight is not None:
                if now - inflight["t"] > RESTART_TIMEOUT:
                    raise BenchError(f"{inflight['name']} not ready {RESTART_TIMEOUT:g} s "
                                     f"after SIGKILL: {tree.entries[inflight['name']]}")
                timeout = 0.5
            else:
                upcoming = [eligibleAt[n] for n in names if tree.entries[n]["state"] == "ready"]
                timeout = max(nextKill, min(upcoming, default=now + 0.5)) - now
                if timeout > 0.6 and sampler.pending():
                    # Idle for a while: time a Python start now, in the same
                    # conditions as the restarts.
                    sampler.sampleOnce()
                    sampler.during += 1
                    continue
            for packet in tree.ctl.poll(timeout):
                for e in tree.track(packet):
                    if inflight is None or e["name"] != inflight["name"]:
                        if e["state"] != "ready":
                            raise BenchError(f"{e['name']} went {e['state']} unasked: "
                                             f"{e.get('reason')}")
                        continue
                    t = packet[0] - inflight["t"]
                    if e["state"] == "backoff":
                        inflight.setdefault("exit_seen_s", t)
                    elif e["state"] == "starting":
                        inflight.setdefault("spawning_s", t)
                        spawned = tree.wallToBench(e.get("started"))
                        if spawned is not None:
                            inflight.setdefault("spawned_s", spawned - (inflight["t"] - tree.t0))
                    elif e["state"] == "ready" and e.get("pid") and e["pid"] != inflight["pid"]:
                        inflight["ready_s"] = t
                        inflight["new_pid"] = e["pid"]
                        stat = schedstat(e["pid"])
                        if stat is not None:
                            inflight["child_cpu_s"], inflight["child_wait_s"] = stat
                        inflight["immediate"] = e["restarts"] == inflight["restarts"] + 1
                        samples.append(inflight)
                        inflight = None
                        eligibleAt[e["name"]] = packet[0] + rng.uniform(*STABLE_WAIT)
                        nextKill = packet[0] + rng.uniform(*KILL_GAP)
                    elif e["state"] in ("failed", "exited"):
                        raise BenchError(f"{e['name']} {e['state']}: {e.get('reason')}")
        elapsed = _now() - began
        ready = [s["ready_s"] for s in samples]
        return {
            "tree": a.tree,
            "kills": len(samples),
            "kill_phase_s": elapsed,
            "p50_s": _percentile(ready, 50),
            "p99_s": _percentile(ready, 99),
            "max_s": max(ready),
            "min_s": min(ready),
            "exit_seen_p50_s": _median([s["exit_seen_s"] for s in samples if "exit_seen_s" in s]),
            "spawned_p50_s": _median([s["spawned_s"] for s in samples if "spawned_s" in s]),
            "all_immediate": all(s["immediate"] for s in samples),
            "child_cpu_p50_s": _median([s["child_cpu_s"] for s in samples
                                        if s.get("child_cpu_s") is not None] or [0.0]),
            "child_wait_p50_s": _median([s["child_wait_s"] for s in samples
                                         if s.get("child_wait_s") is not None] or [0.0]),
            # What the new child's own CPU time and CPU wait do not explain:
            # noticing the exit, spawning, reporting, delivering the event.
            "p50_less_wait_s": _percentile([s["ready_s"] - s["child_wait_s"] for s in samples
                                            if s.get("child_wait_s") is not None]
                                           or ready, 50),
            "rest_p50_s": _median([s["ready_s"] - s["child_cpu_s"] - s["child_wait_s"]
                                   for s in samples if s.get("child_cpu_s") is not None]
                                  or [0.0]),
            "samples": samples,
        }
    finally:
        tree.stop()
        tree.kill()


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def bytecodeFacts() -> str:
    """
    Whether the daemons import dae_service from cached bytecode: without it
    every child compiles the package's modules from source (~12 ms of CPU
    each on the reference machine).
    """
    import importlib.util

    source = os.path.join(REPO, "dae_service", "daemon.py")
    cached = os.path.exists(importlib.util.cache_from_source(source))
    writes = not (sys.flags.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"))
    return (f"dae_service bytecode {'cached' if cached else 'NOT cached'}, "
            f"bytecode writing {'on' if writes else 'off (PYTHONDONTWRITEBYTECODE)'}")


def reproduceCommand(a) -> str:
    here = os.path.abspath(os.getcwd()) == REPO
    cmd = [sys.executable, os.path.join("bench", "manager.py") if here
           else os.path.abspath(__file__)]
    for flag, value, default in (("--daemons", a.daemons, DEFAULT_DAEMONS),
                                 ("--repeat", a.repeat, DEFAULT_REPEAT),
                                 ("--kills", a.kills, DEFAULT_KILLS),
                                 ("--tree", a.tree, DEFAULT_TREE),
                                 ("--starts", a.starts, DEFAULT_STARTS),
                                 ("--seed", a.seed if a.kills else None, None),
                                 ("--launcher", a.launcher, DEFAULT_LAUNCHER)):
        if value != default:
            cmd += [flag, str(value)]
    return " ".join(cmd)


def _ms(s: Optional[float]) -> str:
    return "-" if s is None else f"{s * 1000:.0f}"


def _mb(kb: Optional[float]) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def report(a, mach: dict, cold: list, floor: list, restart: Optional[dict],
           starts: dict) -> dict:
    def med(runs: list, key: str) -> Optional[float]:
        values = [r[key] for r in runs if r.get(key) is not None]
        return _median(values) if values else None

    def medIn(runs: list, outer: str, key: str) -> Optional[float]:
        values = [r[outer][key] for r in runs if r[outer].get(key) is not None]
        return _median(values) if values else None

    summary: dict = {"machine": mach, "launcher": a.launcher, "daemons": a.daemons,
                     "repeat": a.repeat,
                     "seed": a.seed, "cold_start": cold, "floor": floor,
                     "restart": restart, "python_starts": starts, "targets": {}}
    n = a.daemons
    print()
    print(f"dae manager benchmark: {n} daemons, median of {a.repeat}; "
          f"restarts: {a.kills} SIGKILLs in a tree of {a.tree}; launcher = {a.launcher}")
    print(f"machine: nproc={mach['nproc']} (usable {mach['usable_cpus']}, {mach['cpu']}), "
          f"Python {mach['python']} ({mach['executable']}), Twisted {mach['twisted']}, "
          f"load {mach['loadavg'][0]:.2f} at the start; {mach['bytecode']}")
    print("ready = the manager's `changed` events, after `subscribe []` and `list []` on its "
          "UNIX socket, timed as they are read")
    print()
    rows = []
    if cold:
        rows += [
            (f"cold start, {n} daemons: twistd spawn -> all ready", _ms(med(cold, "all_ready_s")),
             "ms", "  ".join(_ms(r["all_ready_s"]) for r in cold)),
            ("  twistd spawn -> control socket accepts", _ms(med(cold, "connected_s")), "ms", ""),
            ("  twistd spawn -> first daemon spawned", _ms(med(cold, "first_spawn_s")), "ms", ""),
            ("  twistd spawn -> last daemon spawned", _ms(med(cold, "last_spawn_s")), "ms", ""),
            ("  first daemon spawned -> all ready", _ms(med(cold, "first_spawn_to_all_ready_s")),
             "ms", ""),
            ("  CPU of the daemons, total", _ms(medIn(cold, "children_cpu", "total_s")), "ms",
             f"each {_ms(medIn(cold, 'children_cpu', 'mean_s'))} ms, and "
             f"{_ms(medIn(cold, 'children_cpu', 'wait_mean_s'))} ms waiting for a CPU"),
            ("  CPU of the manager (twistd), spawn -> all ready", _ms(med(cold, "manager_cpu_s")),
             "ms", ""),
            ("  CPU of other processes meanwhile", _ms(med(cold, "others_cpu_s")), "ms",
             "the machine's busy time less ours"),
            ("  stop (SIGTERM -> twistd exited)", _ms(med(cold, "stop_s")), "ms", ""),
        ]
    if floor:
        rows += [
            (f"floor, {n} bare Twisted: first spawn -> all ports", _ms(med(floor, "all_ports_s")),
             "ms", "  ".join(_ms(r["all_ports_s"]) for r in floor)),
            ("  parent spawn -> its first spawn", _ms(med(floor, "parent_start_s")), "ms", ""),
            ("  parent spawn -> all ports", _ms(med(floor, "popen_to_all_ports_s")), "ms", ""),
            (f"  spawnProcess loop ({n} calls)", _ms(med(floor, "spawn_loop_s")), "ms", ""),
            ("  CPU of the children, total", _ms(medIn(floor, "children_cpu", "total_s")), "ms",
             f"each {_ms(medIn(floor, 'children_cpu', 'mean_s'))} ms, and "
             f"{_ms(medIn(floor, 'children_cpu', 'wait_mean_s'))} ms waiting for a CPU"),
            ("  CPU of the parent, spawn -> all ports", _ms(med(floor, "parent_cpu_s")), "ms", ""),
            ("  CPU of other processes meanwhile", _ms(med(floor, "others_cpu_s")), "ms",
             "the machine's busy time less ours"),
        ]
    if restart:
        rows += [
            ("restart after SIGKILL -> ready, p50", _ms(restart["p50_s"]), "ms",
             f"n={restart['kills']} in a tree of {restart['tree']}, one at a time, "
             f"min {_ms(restart['min_s'])}"),
            ("restart after SIGKILL -> ready, p99", _ms(restart["p99_s"]), "ms",
             "nearest rank: the max below 100 kills" if restart["kills"] < 100 else ""),
            ("restart after SIGKILL -> ready, max", _ms(restart["max_s"]), "ms", ""),
            ("  kill -> manager reports the exit, p50", _ms(restart["exit_seen_p50_s"]), "ms", ""),
            ("  kill -> new child spawned, p50", _ms(restart["spawned_p50_s"]), "ms",
             "the entry's 'started' stamp"),
            ("  new child's CPU when ready, p50", _ms(restart["child_cpu_p50_s"]), "ms",
             f"and {_ms(restart['child_wait_p50_s'])} ms waiting for a CPU"),
            ("  the rest (kill -> ready less those two), p50", _ms(restart["rest_p50_s"]), "ms",
             "exit noticed, spawn, report, event"),
        ]
    for label, s in starts.items():
        rows.append((f"{label}, start to exit", _ms(s["median_s"]), "ms",
                     f"median of {len(s['samples'])}, min {_ms(s['min_s'])}, "
                     f"CPU {_ms(s['cpu_median_s'])} ms"))
    if cold:
        rows += [
            (f"manager RSS with {n} daemons", _mb(med(cold, "manager_rss_kb")), "MiB", ""),
            ("daemon PSS, mean", _mb(medIn(cold, "daemon_pss", "mean_kb")), "MiB", ""),
            ("daemon PSS, max", _mb(medIn(cold, "daemon_pss", "max_kb")), "MiB", ""),
        ]
        if any(r["forkserver_pss"].get("count") for r in cold):
            rows.append(("fork server PSS", _mb(medIn(cold, "forkserver_pss", "total_kb")),
                         "MiB", "shared with the daemons it forked"))
    if floor:
        rows.append(("bare Twisted process PSS, mean (floor)",
                     _mb(medIn(floor, "child_pss", "mean_kb")), "MiB", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}} {'value':>7}        notes")
    print("-" * (width + 40))
    for label, value, unit, note in rows:
        print(f"{label:<{width}} {value:>7} {unit:<6} {note}")
    print()

    coldMed, floorMed = med(cold, "all_ready_s"), med(floor, "all_ports_s")
    if coldMed and floorMed:
        ratio = coldMed / floorMed
        met = ratio <= START_RATIO_TARGET
        summary["targets"]["start_ratio"] = {"value": ratio, "target": f"<= {START_RATIO_TARGET}",
                                             "met": met}
        print(f"cold start / floor:                 {ratio:5.2f}x  "
              f"(target <= {START_RATIO_TARGET}x)  {'met' if met else 'NOT MET'}")
        fair = med(cold, "first_spawn_to_all_ready_s")
        if fair:
            print(f"  like for like (first spawn -> all ready / first spawn -> all ports): "
                  f"{fair / floorMed:.2f}x;")
        popen = med(floor, "popen_to_all_ports_s")
        if popen:
            print(f"  both from their parent's spawn: {coldMed / popen:.2f}x")
        ours = [r["children_cpu"]["total_s"] + r["manager_cpu_s"] for r in cold]
        base = [r["children_cpu"]["total_s"] + r["parent_cpu_s"] for r in floor]
        if ours and base and _median(base) > 0:
            cpuRatio = _median(ours) / _median(base)
            summary["cpu_ratio"] = cpuRatio
            print(f"  CPU used, manager + daemons / parent + children: {cpuRatio:.2f}x "
                  f"(a CPU-bound start: other load moves the wall-clock ratios, not this)")
    if restart and REFERENCE_START in starts:
        ref = starts[REFERENCE_START]["median_s"]
        target = ref + RESTART_MARGIN_S
        met = restart["p50_s"] <= target
        summary["targets"]["restart_p50"] = {"value_s": restart["p50_s"], "target_s": target,
                                             "met": met}
        print(f"restart p50 vs one Python+Twisted start + {RESTART_MARGIN_S * 1000:.0f} ms: "
              f"{_ms(restart['p50_s'])} ms vs {_ms(target)} ms  {'met' if met else 'NOT MET'}")
        wait = restart["child_wait_p50_s"]
        if wait > DISTURBED_WAIT_S:
            lessWait = restart["p50_less_wait_s"]
            summary["targets"]["restart_p50"]["less_wait_s"] = lessWait
            summary["targets"]["restart_p50"]["disturbed"] = True
            print(f"  disturbed: the new children waited {_ms(wait)} ms (p50) for a CPU taken "
                  f"by other load; without that wait the p50 is {_ms(lessWait)} ms, "
                  f"{'met' if lessWait <= target else 'NOT MET'}.  Rerun on a quieter machine.")
        if not restart["all_immediate"]:
            print("  warning: some restarts were not immediate (restarts counter jumped)")
    cmd = reproduceCommand(a)
    summary["reproduce"] = cmd
    print()
    print(f"reproduce: {cmd}")
    return summary


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminated(signum: int, frame: Any) -> None:
    # Unwind through the finally blocks, which kill what was started; a
    # second signal must not cut the clean-up short.
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def benchMain(a) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)
    if a.seed is None:
        a.seed = random.randrange(1 << 31)
    rng = random.Random(a.seed)
    mach = machine()
    cold: list = []
    floor: list = []
    restart: Optional[dict] = None
    starts: dict = {}
    failed = False
    try:
        # Alternate which goes first, so that a disturbance on the machine
        # hits both rather than one.
        for i in range(a.repeat):
            order = ("floor", "cold") if i % 2 == 0 else ("cold", "floor")
            for kind in order:
                if kind == "floor":
                    r = floorStart(a)
                    floor.append(r)
                    _progress(f"[floor {i + 1}] {_ms(r['all_ports_s'])} ms to {a.daemons} ports")
                else:
                    r = coldStart(a)
                    cold.append(r)
                    _progress(f"[cold {i + 1}] {_ms(r['all_ready_s'])} ms to {a.daemons} ready")
        sampler = StartSampler(a.starts)
        if a.kills > 0:
            restart = restarts(a, rng, sampler)
            _progress(f"[restart] p50 {_ms(restart['p50_s'])} ms over {restart['kills']} kills "
                      f"in {restart['kill_phase_s']:.1f} s")
        starts = sampler.finish()
        _progress("[python] " + ", ".join(f"{k}: {_ms(v['median_s'])} ms"
                                          for k, v in starts.items())
                  + f" ({sampler.during} rounds of samples taken during the restart test)")
    except BenchError as e:
        failed = True
        _progress(f"FAILED: {e}")
    finally:
        # Whatever an interrupted clean-up may have missed.
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        sweep()
    summary = report(a, mach, cold, floor, restart, starts)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        print(f"figures written to {a.json}")
    return 1 if failed else 0


def machine() -> dict:
    facts = benchutil.machine()
    facts["bytecode"] = bytecodeFacts()
    return facts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Manager benchmark: cold start of a dae tree against bare Twisted "
                    "processes, restart after SIGKILL, memory.")
    p.add_argument("--daemons", type=int, default=DEFAULT_DAEMONS,
                   help="daemons in the cold-start tree (default %(default)s)")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                   help="cold starts and floor runs each; medians are reported "
                        "(default %(default)s)")
    p.add_argument("--kills", type=int, default=DEFAULT_KILLS,
                   help="SIGKILLs in the restart test; 0 skips it (default %(default)s)")
    p.add_argument("--tree", type=int, default=DEFAULT_TREE,
                   help="daemons in the restart tree (default %(default)s)")
    p.add_argument("--starts", type=int, default=DEFAULT_STARTS,
                   help="timed Python starts per variant (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of the kill schedule's random choices (default: a random "
                        "one, printed in the reproduce line)")
    p.add_argument("--launcher", choices=("spawn", "forkserver"), default=DEFAULT_LAUNCHER,
                   help="the trees' [dae] launcher (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--floor-parent", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.floor_parent is not None:
        floorParentMain(a.floor_parent)
        return 0
    if a.daemons < 1 or a.repeat < 1 or a.kills < 0 or a.tree < 1 or a.starts < 1:
        p.error("need daemons, repeat, tree, starts >= 1 and kills >= 0")
    return benchMain(a)


if __name__ == "__main__":
    sys.exit(main())
