"""
One port, many worker processes.

A L{Pool} is how the manager runs a daemon configured with C{workers} (or
C{min_workers}/C{max_workers}) behind one port.  The manager binds the
listening sockets (L{bindListeningSocket}): one per worker slot, all on the
pool's one port with C{SO_REUSEPORT}, so the kernel spreads new connections
evenly over the slots (by a hash of the client's address and port), and
every worker, a python child like any daemon's, inherits its slot's socket
and accepts on it (L{dae_service.workerport}).  The manager is never on the
data path, and a worker sees the client's real address.  The manager keeps
each slot's socket open across the worker's restarts, so a replacement
takes over the very queue its predecessor was serving.  (Why not one
socket shared by every worker, or accepted sockets passed to the
least-loaded worker over a UNIX socket: see README, Pools; all three were
measured.)

Each worker is kept running by a L{Supervisor} of its own (readiness,
restart with backoff, give-up, TERM then KILL), on a registry private to the
pool; the pool sums them up in its one entry of the manager's registry:
C{ready} while at least one worker is, C{port} the pool's port, and a
C{workers} list with each worker's index, pid, state, open connections and
restarts.  Workers report their open connections on their report pipe
(C{{"event": "load"}}).

The pool offers the manager what a L{Supervisor} does (C{name}, C{state},
C{quickFailures}, C{start}, C{stop}, C{restart}, C{wait}):

  - C{restart} is a rolling restart: one worker at a time, its replacement
    is ready (accepting on the slot's socket) before the old one is told to
    drain, and the old one finishes its open connections up to
    C{drainTimeout}, so no connection is refused or cut;
  - C{stop} drains every worker at once, with one deadline;
  - with C{min_workers} < C{max_workers} it scales: one more worker (and
    slot) when every ready worker has an open connection, one fewer when a
    worker had none for C{idle_timeout} seconds while another ready worker
    has room.  One change at a time, and never both ways at once, so it
    does not thrash.

While a slot's worker is being restarted after a crash, the connections the
kernel gives that slot wait in its queue (they are not refused).  A slot
whose worker gave up, or that scaling removes, is closed; connections
queued on it at that moment are reset, unless the host sets
C{net.ipv4.tcp_migrate_req = 1} (Linux 5.14+), which moves them to another
slot.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.endpoints import _parse as _parseEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IChildListener, ILauncher
from .launcher import CONTROL_FD
from .registry import Entry, Registry
from .supervisor import RestartPolicy, StartFailed, Supervisor

__all__ = ["Pool", "bindListeningSocket", "POOL_BACKLOG", "BUSY_CONNECTIONS"]

#: The listen backlog of a pool's socket unless its endpoint string says
#: C{backlog=}: one queue feeds every worker, and it must also hold a burst
#: that arrives while a worker is being replaced.  (Twisted's own default is
#: 50; the kernel caps it at C{net.core.somaxconn}.)
POOL_BACKLOG = 1024

#: A ready worker with at least this many open connections is busy: the
#: pool grows when every ready worker is.
BUSY_CONNECTIONS = 1

#: Most seconds between two scaling checks (less when C{idle_timeout} is
#: short).
SCALE_INTERVAL = 1.0


def bindListeningSocket(
    listen: str, port: Optional[int] = None, defaultBacklog: int = POOL_BACKLOG
) -> socket.socket:
    """
    A non-blocking listening socket for C{listen}, a C{tcp:} or C{tcp6:}
    server endpoint string (C{port}, C{interface}, C{backlog} as Twisted
    reads them), with C{SO_REUSEADDR} as Twisted sets it, and
    C{SO_REUSEPORT}, so that a pool's slots can all bind its port.

    @param port: the port to bind instead of the endpoint's (the pool's
        port, once its first socket has one).
    @raise CannotListenError: if it cannot be bound.
    @raise ValueError: for another kind of endpoint.
    """
    args, kwargs = _parseEndpoint(listen)
    kind = args[0].lower() if args else ""
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"a pool listens on tcp: or tcp6:, not {listen!r}")
    if port is None:
        port = int(kwargs.get("port", args[1] if len(args) > 1 else 0))
    interface = kwargs.get("interface", args[3] if len(args) > 3 else "")
    backlog = int(kwargs.get("backlog", args[2] if len(args) > 2 else defaultBacklog))
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    if family == socket.AF_INET6:
        interface = interface or "::"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            address = socket.getaddrinfo(interface, port, family, socket.SOCK_STREAM)[0][4]
        else:
            address = (interface, port)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise CannotListenError(interface, port, e) from None
    return sock


class _Worker:
    """
    One worker process slot: its supervisor and what it last reported.
    """

    def __init__(self, index: int, key: str) -> None:
        self.index = index
        self.key = key
        self.supervisor: Any = None
        self.connections = 0
        self.readyAt: Optional[float] = None
        self.lastBusy: Optional[float] = None
        self.retiring = False
        #: It gave up, and its slot was closed for it.
        self.abandoned = False


class _WorkerLog:
    """
    A pool's child log, as one worker writes to it: every line prefixed
    with the worker's index.
    """

    def __init__(self, log: Any, index: int) -> None:
        self._log = log
        self._prefix = f"worker {index}: "

    def line(self, stream: str, line: str) -> None:
        self._log.line(stream, self._prefix + line)

    def event(self, message: str) -> None:
        self._log.event(self._prefix + message)


@implementer(IChildListener)
class _WorkerListener:
    """
    Passes every event of a worker process to its supervisor, and its load
    reports to the pool too.
    """

    def __init__(self, supervisor: IChildListener, pool: "Pool", worker: _Worker) -> None:
        self._supervisor = supervisor
        self._pool = pool
        self._worker = worker

    def childStarted(self, process: Any) -> None:
        self._supervisor.childStarted(process)

    def childReported(self, message: dict) -> None:
        event = message.get("event")
        if event == "load":
            self._pool._loadReported(self._worker, message)
        elif event == "stats" and self._pool.onReport is not None:
            self._pool.onReport(dict(message, worker=self._worker.index))
        self._supervisor.childReported(message)

    def childOutput(self, stream: str, line: str) -> None:
        self._supervisor.childOutput(stream, line)

    def childNotified(self, state: dict) -> None:
        self._supervisor.childNotified(state)

    def childExited(self, exitCode: Optional[int], signal: Optional[int]) -> None:
        self._pool._workerExited(self._worker)
        self._supervisor.childExited(exitCode, signal)


@implementer(ILauncher)
class _WorkerLauncher:
    """
    The pool's launcher as one worker's supervisor sees it: the same
    processes, with the listener wrapped in a L{_WorkerListener}.
    """

    def __init__(self, launcher: ILauncher, pool: "Pool", worker: _Worker) -> None:
        self._launcher = launcher
        self._pool = pool
        self._worker = worker

    def launch(self, spec: Any, listener: IChildListener) -> Any:
        return self._launcher.launch(spec, _WorkerListener(listener, self._pool, self._worker))

    def signal(self, process: Any, signalName: Any) -> None:
        self._launcher.signal(process, signalName)


class Pool:
    """
    Runs one daemon as C{minWorkers} to C{maxWorkers} worker processes
    behind one port (see the module docstring).

    @param specFactory: C{specFactory(index, fd)} builds the L{LaunchSpec}
        of worker C{index}, to be given its slot's socket, open on C{fd}.
    @param socketFactory: C{socketFactory(listen, port)} binds one slot's
        listening socket (L{bindListeningSocket}; C{port} is L{None} for
        the first); it returns an object with C{fileno()},
        C{getsockname()} and C{close()}.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        launcher: ILauncher,
        clock: Any,
        registry: Registry,
        specFactory: Callable[[int, int], Any],
        policy: RestartPolicy,
        *,
        listen: str,
        minWorkers: int = 1,
        maxWorkers: int = 1,
        idleTimeout: float = 60.0,
        drainTimeout: float = 5.0,
        childLog: Any = None,
        socketFactory: Callable[[str, Optional[int]], Any] = bindListeningSocket,
        wallClock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.launcher = launcher
        self.clock = clock
        self.registry = registry
        self.specFactory = specFactory
        self.policy = policy
        self.listen = listen
        self.minWorkers = minWorkers
        self.maxWorkers = max(maxWorkers, minWorkers)
        self.idleTimeout = idleTimeout
        self.drainTimeout = drainTimeout
        self.childLog = childLog
        #: Given every worker's C{stats} report (with its C{worker} index).
        self.onReport: Optional[Callable[[dict], Any]] = None
        self._socketFactory = socketFactory
        self._wallClock = wallClock
        #: The workers' own registry: one entry per worker process slot.
        self.workerRegistry = Registry()
        self.workerRegistry.subscribe(lambda entry: self._refresh())
        self._workers: list[_Worker] = []
        self._generation = 0
        #: Each slot's listening socket, by worker index.
        self._sockets: dict[int, Any] = {}
        self._port: Optional[int] = None
        self._wanted = False
        self._stopping: Optional[Deferred] = None
        self._rolling: Optional[Deferred] = None
        self._rollingWaiters: list[Deferred] = []
        self._failure: Optional[str] = None
        self._retiredRestarts = 0
        self._started: Optional[int] = None
        self._scaleTimer: Any = None

    # What the manager sees

    @property
    def state(self) -> str:
        return self.registry.get(self.name).state

    @property
    def scalable(self) -> bool:
        return self.minWorkers < self.maxWorkers

    @property
    def quickFailures(self) -> int:
        """
        The most quick failures in a row of any worker.
        """
        return max((w.supervisor.quickFailures for w in self._workers), default=0)

    @property
    def workers(self) -> list[dict]:
        """
        Every worker, as in the registry entry.
        """
        return [self._describe(w) for w in sorted(self._workers, key=self._order)]

    def childNotified(self, state: dict) -> None:
        """
        Workers are python children: they report readiness on their pipe.
        """

    # Commands

    def start(self) -> Deferred:
        """
        Start the pool: bind its slots' sockets, start C{minWorkers} workers
        (and start again any that gave up).

        @return: a Deferred that fires with the pool's entry once every
            worker started has become ready or given up, at least one being
            ready; it fails with L{StartFailed} if none is, or if the port
            cannot be bound.
        """
        if self._stopping is not None:
            # The old socket may still be open in draining workers.
            return _chain(self._stopping).addCallback(lambda _: self.start())
        self._wanted = True
        self._failure = None
        wanted = {w.index for w in self._active()} | set(range(self.minWorkers))
        try:
            for index in sorted(wanted):
                self._socketFor(index)
        except Exception as e:
            self._wanted = False
            self._closeSockets()
            why = f"cannot listen on {self.listen}: {e}"
            self.log.error("{name}: {why}", name=self.name, why=why)
            self._say(why)
            self._failure = why
            self._refresh()
            return _failed(StartFailed(f"{self.name}: {why}"))
        if self._started is None or not self._workers:
            self._started = int(self._wallClock() * 1000)
        starts = []
        for worker in self._active():
            if worker.supervisor.state in ("stopped", "failed", "exited", "backoff"):
                starts.append(worker.supervisor.start())
            else:
                starts.append(worker.supervisor.wait())
        while len(self._active()) < self.minWorkers:
            starts.append(self._spawn().supervisor.start())
        self._scheduleScaling()
        self._refresh()
        return self._whenSettled(starts)

    def wait(self) -> Deferred:
        """
        @return: a Deferred firing with the entry once the pool is ready
            (at once if it is).
        """
        if self.state == "ready":
            return succeed(self.registry.get(self.name))
        return self._whenSettled([w.supervisor.wait() for w in self._active()])

    def stop(self) -> Deferred:
        """
        Stop the pool: every worker drains for up to C{drainTimeout}
        seconds, then is stopped (its stop signal, SIGKILL after its stop
        timeout); the slots' sockets are closed at once, so that new
        clients are refused instead of queued.

        @return: a Deferred that fires once every worker has exited.
        """
        self._wanted = False
        self._cancelScaling()
        if self._stopping is not None:
            return _chain(self._stopping)
        deadline = self._wallClock() + self.drainTimeout
        retiring = [self._retire(w, deadline) for w in list(self._workers)]
        self._closeSockets()
        if not retiring:
            self._refresh()
            return succeed(None)
        self._stopping = DeferredList(retiring)

        def stopped(_: Any) -> None:
            self._stopping = None
            self._refresh()

        self._stopping.addCallback(stopped)
        self._refresh()
        return _chain(self._stopping)

    def restart(self) -> Deferred:
        """
        A rolling restart (see the module docstring); a pool that is not
        running is just started.

        @return: a Deferred firing with the entry once every worker has
            been replaced, or failing with L{StartFailed} if a replacement
            did not become ready (the old workers then keep serving).
        """
        if not self._sockets or not self._wanted:
            return self.stop().addCallback(lambda _: self.start())
        d: Deferred = Deferred()
        self._rollingWaiters.append(d)
        if self._rolling is None:
            self._rolling = ensureDeferred(self._roll())
            self._rolling.addBoth(self._rolled)
        return d

    # Rolling restart

    async def _roll(self) -> Entry:
        self.log.info("{name}: rolling restart of {count} workers", name=self.name,
                      count=len(self._active()))
        self._say("rolling restart")
        for old in sorted(self._active(), key=self._order):
            if not self._wanted:
                raise StartFailed(f"{self.name}: stopped during its rolling restart")
            if old not in self._workers or old.retiring:
                continue
            new = self._spawn(old.index)
            try:
                await new.supervisor.start()
            except StartFailed as e:
                await self._retire(new, self._wallClock())
                if not self._wanted:
                    raise StartFailed(f"{self.name}: stopped during its rolling restart") from None
                raise StartFailed(
                    f"{self.name}: the new worker {old.index} did not start ({e}); "
                    "the old workers keep serving"
                ) from None
            await self._retire(old, self._wallClock() + self.drainTimeout)
        self._say("rolling restart done")
        return self.registry.get(self.name)

    def _rolled(self, result: Any) -> None:
        self._rolling = None
        waiters, self._rollingWaiters = self._rollingWaiters, []
        if isinstance(result, Failure):
            self.log.error("{name}: rolling restart failed: {why}", name=self.name,
                           why=result.getErrorMessage())
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    # Workers

    def _active(self) -> list[_Worker]:
        return [w for w in self._workers if not w.retiring]

    @staticmethod
    def _order(worker: _Worker) -> tuple:
        return (worker.index, worker.key)

    def _freeIndex(self) -> int:
        taken = {w.index for w in self._active()}
        index = 0
        while index in taken:
            index += 1
        return index

    def _spawn(self, index: Optional[int] = None) -> _Worker:
        """
        A new worker slot (not started yet): the lowest free index unless
        C{index} is given (a replacement).
        """
        if index is None:
            index = self._freeIndex()
        self._generation += 1
        worker = _Worker(index, f"{self.name}[{index}]#{self._generation}")
        self.workerRegistry.add(Entry(worker.key))
        log = None if self.childLog is None else _WorkerLog(self.childLog, index)
        worker.supervisor = Supervisor(
            worker.key,
            _WorkerLauncher(self.launcher, self, worker),
            self.clock,
            self.workerRegistry,
            lambda: self.specFactory(worker.index, self._socketFor(worker.index).fileno()),
            self.policy,
            childLog=log,
        )
        self._workers.append(worker)
        return worker

    def _retire(self, worker: _Worker, deadline: float) -> Deferred:
        """
        Tell C{worker} to drain until C{deadline} and stop it; forget it
        once it has exited.
        """
        worker.retiring = True
        process = worker.supervisor.process
        if process is not None and worker.supervisor.state == "ready":
            line = json.dumps({"command": "drain", "deadline": deadline}) + "\n"
            try:
                process.writeToChild(CONTROL_FD, line.encode("ascii"))
            except Exception:
                self.log.failure("{name}: cannot tell worker {index} to drain",
                                 name=self.name, index=worker.index)
        d = worker.supervisor.stop()

        def forget(result: Any) -> Any:
            if worker in self._workers:
                self._workers.remove(worker)
                self._retiredRestarts += self.workerRegistry.get(worker.key).restarts
                self.workerRegistry.remove(worker.key)
            return result

        return d.addBoth(forget)

    def _socketFor(self, index: int) -> Any:
        """
        Slot C{index}'s listening socket, bound now if it has none.
        """
        sock = self._sockets.get(index)
        if sock is None:
            sock = self._socketFactory(self.listen, self._port)
            if self._port is None:
                self._port = sock.getsockname()[1]
            self._sockets[index] = sock
        return sock

    def _closeSocket(self, index: int) -> None:
        """
        Close slot C{index}: the kernel stops giving it connections.
        """
        sock = self._sockets.pop(index, None)
        if sock is not None:
            sock.close()
        if not self._sockets:
            self._port = None

    def _closeSockets(self) -> None:
        for index in list(self._sockets):
            self._closeSocket(index)

    def _closeAbandonedSlots(self) -> None:
        """
        Close the slot of a worker that has just given up (unless another
        worker serves it), so that no new connection waits there in vain.
        """
        for worker in self._active():
            gaveUp = self.workerRegistry.get(worker.key).state in ("failed", "exited")
            if gaveUp and not worker.abandoned:
                worker.abandoned = True
                serving = any(
                    w.index == worker.index and not w.abandoned for w in self._active()
                )
                if not serving:
                    self._closeSocket(worker.index)
            elif not gaveUp:
                worker.abandoned = False

    def _whenSettled(self, starts: list[Deferred]) -> Deferred:
        """
        A Deferred of this caller's own: the entry once every one of
        C{starts} has fired, if one of them succeeded; else L{StartFailed}.
        """
        if not starts:
            return _failed(StartFailed(f"{self.name}: no worker to start"))
        settled = DeferredList(starts, consumeErrors=True)
        d: Deferred = Deferred(lambda d: settled.cancel())

        def done(results: list) -> None:
            if d.called:
                return
            if any(ok for ok, _ in results):
                d.callback(self.registry.get(self.name))
            else:
                failure = next(r for ok, r in results if not ok)
                d.errback(failure if failure.check(StartFailed) else
                          Failure(StartFailed(f"{self.name}: {failure.getErrorMessage()}")))

        settled.addCallback(done)
        return d

    # Reports

    def _loadReported(self, worker: _Worker, message: dict) -> None:
        connections = message.get("connections")
        peak = message.get("peak", connections)
        if not isinstance(connections, int) or isinstance(connections, bool) or connections < 0:
            return
        worker.connections = connections
        if connections or (isinstance(peak, int) and peak > 0):
            worker.lastBusy = self.clock.seconds()
        self._refresh()
        self._maybeGrow()

    def _workerExited(self, worker: _Worker) -> None:
        worker.connections = 0
        worker.readyAt = None

    # Scaling

    def _scheduleScaling(self) -> None:
        if self.scalable and self._scaleTimer is None and self._wanted:
            interval = min(SCALE_INTERVAL, self.idleTimeout / 2)
            self._scaleTimer = self.clock.callLater(interval, self._scaleCheck)

    def _cancelScaling(self) -> None:
        if self._scaleTimer is not None and self._scaleTimer.active():
            self._scaleTimer.cancel()
        self._scaleTimer = None

    def _steady(self) -> bool:
        """
        Nothing else is changing the worker set right now.
        """
        return (
            self._wanted
            and self._stopping is None
            and self._rolling is None
            and not any(w.supervisor.state == "starting" for w in self._active())
        )

    def _maybeGrow(self) -> None:
        if not (self.scalable and self._steady()):
            return
        active = self._active()
        ready = [w for w in active if w.supervisor.state == "ready"]
        if len(active) >= self.maxWorkers or not ready:
            return
        if all(w.connections >= BUSY_CONNECTIONS for w in ready):
            worker = self._spawn()
            self.log.info("{name}: every worker is busy; adding worker {index}",
                          name=self.name, index=worker.index)
            self._say(f"every worker busy: adding worker {worker.index}")
            worker.supervisor.start().addErrback(lambda f: None)

    def _scaleCheck(self) -> None:
        self._scaleTimer = None
        try:
            self._maybeShrink()
            self._maybeGrow()
        finally:
            self._scheduleScaling()

    def _maybeShrink(self) -> None:
        active = self._active()
        if len(active) <= self.minWorkers or not self._steady():
            return
        now = self.clock.seconds()
        ready = [w for w in active if w.supervisor.state == "ready"]

        def idle(w: _Worker) -> bool:
            since = max(
                w.lastBusy if w.lastBusy is not None else 0.0,
                w.readyAt if w.readyAt is not None else now,
            )
            return w.connections == 0 and now - since >= self.idleTimeout

        for worker in sorted(ready, key=self._order, reverse=True):
            others = [w for w in ready if w is not worker]
            if idle(worker) and any(w.connections < BUSY_CONNECTIONS for w in others):
                self.log.info("{name}: worker {index} idle for {timeout:g} s; stopping it",
                              name=self.name, index=worker.index, timeout=self.idleTimeout)
                self._say(f"worker {worker.index} idle: stopping it")
                self._retire(worker, self._wallClock() + self.drainTimeout)
                self._closeSocket(worker.index)
                return

    # The pool's entry

    def _say(self, message: str) -> None:
        if self.childLog is not None:
            self.childLog.event(message)

    def _describe(self, worker: _Worker) -> dict:
        entry = self.workerRegistry.get(worker.key)
        return {
            "index": worker.index,
            "pid": entry.pid,
            "state": entry.state,
            "connections": worker.connections,
            "restarts": entry.restarts,
            "started": entry.started,
        }

    def _refresh(self) -> None:
        """
        Sum the workers up into the pool's registry entry.
        """
        if self.name not in self.registry:
            return
        now = self.clock.seconds()
        for worker in self._workers:
            entry = self.workerRegistry.get(worker.key)
            if entry is not None and entry.state == "ready" and worker.readyAt is None:
                worker.readyAt = now
        active = [self.workerRegistry.get(w.key) for w in self._active()]
        states = {e.state for e in active}
        self._closeAbandonedSlots()
        reason = None
        if self._failure is not None:
            state, reason = "failed", self._failure
        elif self._stopping is not None:
            state = "stopping"
        elif "ready" in states:
            state = "ready"
            down = [e for e in active if e.state in ("failed", "exited")]
            if down:
                reason = f"{len(down)} of {len(active)} workers down: {down[0].reason}"
        elif "starting" in states:
            state = "starting"
        elif "backoff" in states:
            state, reason = "backoff", next(e.reason for e in active if e.state == "backoff")
        elif active and states <= {"failed", "exited"}:
            state = "failed" if "failed" in states else "exited"
            worst = next(e for e in active if e.state == state)
            reason = f"worker {self._indexOf(worst.name)}: {worst.reason}"
        else:
            state = "stopped"
        restarts = self._retiredRestarts + sum(
            self.workerRegistry.get(w.key).restarts for w in self._workers
        )
        self.registry.update(
            self.name,
            state=state,
            pid=None,
            port=self._port if state == "ready" else None,
            restarts=restarts,
            started=self._started if self._workers else None,
            reason=reason,
            workers=tuple(self.workers),
        )

    def _indexOf(self, key: str) -> Optional[int]:
        for w in self._workers:
            if w.key == key:
                return w.index
        return None


def _failed(error: Exception) -> Deferred:
    d: Deferred = Deferred()
    d.errback(error)
    return d


def _chain(d: Deferred) -> Deferred:
    """
    A Deferred of the caller's own that fires with C{None} when C{d} does.
    """
    mine: Deferred = Deferred()

    def fire(result: Any) -> Any:
        if not mine.called:
            mine.callback(None)
        return result

    d.addBoth(fire)
    return mine
