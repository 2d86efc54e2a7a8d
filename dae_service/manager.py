"""
The Dae manager: spawns every configured daemon as a supervised child
process, starts them in dependency order, keeps the registry, and answers
control commands over Common TCP (L{ControlDaemon}).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import secrets
import signal
import sys
import tempfile
import time
from typing import Any, Optional
from weakref import WeakKeyDictionary, WeakSet

from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    gatherResults,
    succeed,
)
from twisted.internet.endpoints import _parse as _parseEndpoint
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import wire
from .childlog import ChildLog
from .commands import command
from .config import DaeConfig, DaemonConfig, loadConfig
from .daemon import Daemon
from .errors import Fault
from .loader import resolveClasses
from .metrics import DaeMetrics, ProcessSampler
from .sdnotify import SYSTEMD_VARIABLES, SystemdNotifier
from .registry import Entry, Registry, StateFile, writeAtomically
from .supervisor import RestartPolicy, StartFailed, Supervisor

__all__ = ["Dae", "ControlDaemon", "clientEndpointFor"]


def clientEndpointFor(listen: str, port: Optional[int]) -> str:
    """
    A client endpoint string reaching the manager that listens on C{listen}
    (bound to C{port}): the same UNIX path, or the same loopback interface.
    """
    args, kwargs = _parseEndpoint(listen)
    kind = args[0] if args else ""
    if kind == "unix":
        path = kwargs.get("address") or (args[1] if len(args) > 1 else "")
        return f"unix:path={quoteStringArgument(path)}"
    host = kwargs.get("interface", "")
    if host in ("", "0.0.0.0"):
        host = "::1" if kind == "tcp6" and host else "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"tcp:host={quoteStringArgument(host)}:port={port}"


class ControlDaemon(Daemon):
    """
    The manager's own Common TCP daemon.  C{list}, C{lookup}, C{status} and
    C{subscribe} are open to every client that can connect; C{start},
    C{stop}, C{restart} and C{reload} need C{auth [token]} first when the
    manager listens on TCP (a UNIX socket is protected by its file mode).
    """

    def __init__(self, manager: "Dae", listen: str, reactor: Any, requireAuth: bool) -> None:
        super().__init__("dae", listen, reactor)
        self.manager = manager
        self.requireAuth = requireAuth
        self._authenticated: WeakSet = WeakSet()

    def _authorize(self, connection: Any, name: str) -> None:
        if self.requireAuth and connection not in self._authenticated:
            raise Fault(wire.UNAUTHORIZED, f"{name} needs auth [token] first", name)

    def _entry(self, name: Any, command: str) -> Entry:
        entry = self.manager.registry.get(name) if isinstance(name, str) else None
        if entry is None:
            raise Fault(wire.NOT_FOUND, f"no daemon named {name!r}", command)
        return entry

    @command(connection=True)
    def auth(self, connection: Any, token: Any) -> bool:
        """
        Authenticate this connection with the manager's token.
        """
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode("utf-8"), self.manager.token.encode("utf-8")
        ):
            raise Fault(wire.UNAUTHORIZED, "wrong token", "auth")
        self._authenticated.add(connection)
        return True

    @command(name="list", reply="daemons")
    def list_(self) -> list:
        """
        Every configured daemon's entry (Node's C{list}; reply C{daemons}).
        """
        return self.manager.registry.toList()

    @command
    def lookup(self, name: Any) -> dict:
        """
        One daemon's entry, or a C{not_found} fault.
        """
        return self._entry(name, "lookup").toDict()

    @command
    def status(self, name: Any = None) -> dict:
        """
        The manager's own status and every entry, or one daemon's details.
        """
        if name is not None:
            return self.manager.details(self._entry(name, "status").name)
        return self.manager.statusReport()

    def _act(self, connection: Any, action: str, name: Any) -> Deferred:
        self._authorize(connection, action)
        if name == "all":
            return self.manager.actAll(action).addCallback(lambda _: self.manager.registry.toList())
        entry = self._entry(name, action)
        d = self.manager.act(action, entry.name)

        def failed(f: Any) -> Any:
            f.trap(StartFailed)
            raise Fault("start_failed", str(f.value), action)

        return d.addCallbacks(lambda _: self.manager.registry.get(entry.name).toDict(), failed)

    @command(connection=True)
    def start(self, connection: Any, name: Any) -> Deferred:
        """
        Start a daemon (and what it requires); answers once it is ready.
        """
        return self._act(connection, "start", name)

    @command(connection=True)
    def stop(self, connection: Any, name: Any) -> Deferred:
        """
        Stop a daemon (and what requires it); answers once it has exited.
        """
        return self._act(connection, "stop", name)

    @command(connection=True)
    def restart(self, connection: Any, name: Any) -> Deferred:
        """
        Restart a daemon; answers once it is ready again.
        """
        return self._act(connection, "restart", name)

    @command(connection=True)
    def reload(self, connection: Any) -> Deferred:
        """
        Re-read the config: restart changed daemons, start new ones, stop
        removed ones.  Answers with what changed.
        """
        self._authorize(connection, "reload")
        return self.manager.reload()

    @command(connection=True)
    def subscribe(self, connection: Any) -> bool:
        """
        Push a C{changed [entry]} event to this connection on every change.
        """
        self.manager.addSubscriber(connection)
        return True

    @command(connection=True)
    def follow(self, connection: Any, name: Any) -> bool:
        """
        Push a C{log [name, time, stream, line]} event to this connection
        for every new line of the daemon's output, until it disconnects.  A
        reader too slow to keep up loses lines and is told how many.
        """
        entry = self._entry(name, "follow")
        self.manager.addFollower(entry.name, connection)
        return True

    @command
    def logs(self, name: Any, count: Any = 50) -> list:
        """
        The last C{count} lines of a daemon's output: C{[time, stream, line]}.
        """
        entry = self._entry(name, "logs")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise Fault(wire.BAD_ARGS, "count must be a non-negative integer", "logs")
        recent = list(self.manager.childLogs[entry.name].recent)
        return [list(r) for r in recent[-count:]] if count else []


class Dae(MultiService):
    """
    The manager: a L{MultiService} holding the control daemon, with one
    L{Supervisor} per configured daemon.

    @ivar registry: the authoritative L{Registry}.
    @ivar token: the secret that C{auth} checks (also in the state dir's
        C{token} file, mode 0600).  Never sent, never logged.
    """

    log = Logger()

    def __init__(
        self,
        config: DaeConfig,
        classes: dict[str, type],
        reactor: Any,
        launcher: Any = None,
        listeningPorts: Any = None,
        environ: Optional[dict] = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.classes = classes
        self.reactor = reactor
        self.launcher = launcher
        self.listeningPorts = listeningPorts
        self.environ = dict(os.environ if environ is None else environ)
        self.registry = Registry()
        self.supervisors: dict[str, Supervisor] = {}
        self.childLogs: dict[str, ChildLog] = {}
        self.token = ""
        self.control: Optional[ControlDaemon] = None
        self.started: Optional[float] = None
        self._pendingStarts: dict[str, list] = {}
        self._startChains: dict[str, Deferred] = {}
        # Subscribed connections, and whether each missed changes while it
        # was not reading (it then gets every entry again).
        self._subscribers: WeakKeyDictionary = WeakKeyDictionary()
        self._followers: dict[str, dict] = {}
        self._stateFile: Optional[StateFile] = None
        self._notifySockets: dict[str, Any] = {}
        self._shortNotifyDir: Optional[str] = None
        self._listenFailure: Optional[Failure] = None
        self.sampler: Optional[ProcessSampler] = None
        self.metrics: Optional[DaeMetrics] = None
        self.web: Any = None
        self.systemd: Optional[SystemdNotifier] = None
        self._threadPool: Optional[ThreadPool] = None
        self._stopping = False

    # Lifecycle

    def startService(self) -> None:
        self.started = time.time()
        os.makedirs(self.config.stateDir, mode=0o700, exist_ok=True)
        if self.launcher is None:
            self.launcher = self._makeLauncher()
        if self.listeningPorts is None:
            from .procnet import listeningPorts

            self.listeningPorts = listeningPorts
        requireAuth = not self.config.listen.startswith("unix:")
        self.token = self._loadToken()
        self.control = ControlDaemon(self, self.config.listen, self.reactor, requireAuth)
        self.control.setServiceParent(self)
        self.sampler = ProcessSampler(self, self.reactor)
        self.sampler.setServiceParent(self)
        self.metrics = DaeMetrics(self, self.sampler)
        if self.config.web is not None:
            from .web import WebService

            self.web = WebService(self, self.reactor, self.sampler, self.metrics)
            self.web.setServiceParent(self)
        self.systemd = SystemdNotifier(self, self.reactor, self.environ)
        self.systemd.setServiceParent(self)
        for d in self.config.daemons:
            self._add(d)
        self.registry.subscribe(self._broadcast)
        if hasattr(self.reactor, "callFromThread") and self._threadPool is None:
            self._threadPool = ThreadPool(0, 1, name="dae-state-file")
            self._threadPool.start()
        self._stateFile = StateFile(
            self.reactor,
            os.path.join(self.config.stateDir, "state.json"),
            self.registry,
            extra=self._managerState,
            writer=self._writeInThread,
        )
        self._stateFile.start()
        super().startService()
        self.reactor.callWhenRunning(self.installSignalHandlers)
        self.control.whenListening().addCallbacks(self._controlListening, self._controlFailed)
        if self._listenFailure is not None:
            # Endpoints usually fail at once: refuse to start, so twistd
            # exits non-zero instead of running a manager that manages
            # nothing (no daemon was started yet).
            self._stateFile.stop()
            if self._threadPool is not None:
                self._threadPool.stop()
                self._threadPool = None
            raise SystemExit(
                f"dae: cannot listen on {self.config.listen}: "
                f"{self._listenFailure.getErrorMessage()}"
            )

    def _makeLauncher(self) -> Any:
        """
        The launcher C{[dae] launcher} names.  A fork server launcher is a
        child service: L{stopService} stops it after every daemon exited.
        """
        if self.config.launcher == "forkserver":
            from .forkserver import ForkServerLauncher

            launcher = ForkServerLauncher(self.reactor, environ=self.environ)
            launcher.setServiceParent(self)
            return launcher
        from .launcher import SpawnLauncher

        return SpawnLauncher(self.reactor)

    def _writeInThread(self, path: str, data: bytes) -> Any:
        """
        Write the state file in the manager's own one-thread pool (its fsync
        must not block the reactor); at once on a reactor without threads.
        """
        if self._threadPool is None:
            return writeAtomically(path, data)
        return deferToThreadPool(self.reactor, self._threadPool, writeAtomically, path, data)

    def _managerState(self) -> dict:
        """
        What the state file says of the manager itself: enough for a client
        (the C{dae} command) to find it, nothing secret.
        """
        port = self.control.port if self.control is not None else None
        return {
            "manager": {
                "pid": os.getpid(),
                "started": self.started,
                "config": self.config.path,
                "listen": self.config.listen,
                "port": port,
                "endpoint": clientEndpointFor(self.config.listen, port)
                if port is not None or self.config.listen.startswith("unix:")
                else None,
            }
        }

    def _loadToken(self) -> str:
        path = os.path.join(self.config.stateDir, "token")
        try:
            with open(path, encoding="ascii") as f:
                token = f.read().strip()
            if len(token) >= 32:
                return token
        except OSError:
            pass
        token = secrets.token_urlsafe(32)
        writeAtomically(path, token.encode("ascii") + b"\n", 0o600)
        return token

    def _controlListening(self, port: Any) -> None:
        if self._stateFile is not None:
            self._stateFile.write()
        self.log.info(
            "dae manager listening on {listen}; {count} daemons",
            listen=self.config.listen,
            count=len(self.supervisors),
        )
        # A fork server launcher first gets ready (or fails to), so that the
        # daemons are forked, not spawned.  READY=1 for systemd once every
        # daemon is ready or has given up.
        whenReady = getattr(self.launcher, "whenReady", None)
        launcherReady = whenReady() if whenReady is not None else succeed(None)

        def startAll(_: Any) -> Any:
            if self._stopping:
                return None
            return self.startAll().addCallback(lambda _: self.systemd.ready())

        launcherReady.addCallback(startAll)

    def _controlFailed(self, failure: Failure) -> None:
        self._listenFailure = failure
        self.log.critical(
            "dae manager cannot listen on {listen}: {error}; stopping",
            listen=self.config.listen,
            error=failure.getErrorMessage(),
        )
        self.reactor.callWhenRunning(self.reactor.stop)

    def installSignalHandlers(self) -> None:
        """
        SIGHUP reloads the config; SIGTERM and SIGINT stop the tree and exit
        0 (twistd's own handlers would re-raise the signal at exit).
        """
        def reload(signum: int, frame: Any) -> None:
            # reload() logs a rejected config itself; nothing else to do.
            self.reactor.callFromThread(lambda: self.reload().addErrback(lambda f: None))

        def terminate(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self._terminate, signal.Signals(signum).name)

        signal.signal(signal.SIGHUP, reload)
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, terminate)

    def _terminate(self, name: str) -> None:
        if not self._stopping:
            self.log.info("{signal}: stopping every daemon", signal=name)
            self.reactor.stop()

    def stopService(self) -> Deferred:
        self._stopping = True
        if self.systemd is not None:
            self.systemd.stopping()
        d = self.stopAll()

        def stopRest(_: Any) -> Deferred:
            # Every daemon has exited: a fork server launcher (a child
            # service) can stop its fork servers now.
            return MultiService.stopService(self)

        def finish(result: Any) -> Any:
            for name in list(self._notifySockets):
                self._closeNotifySocket(name)
            if self._shortNotifyDir is not None:
                shutil.rmtree(self._shortNotifyDir, ignore_errors=True)
            for log in self.childLogs.values():
                log.close()
            written = succeed(None) if self._stateFile is None else self._stateFile.stop()

            def stopThreads(_: Any) -> Any:
                if self._threadPool is not None:
                    self._threadPool.stop()
                    self._threadPool = None
                return result

            return written.addCallback(stopThreads)

        return d.addCallback(stopRest).addBoth(finish)

    # Building

    def _policy(self, d: DaemonConfig) -> RestartPolicy:
        return RestartPolicy.fromConfig(d)

    def _pool(self, d: DaemonConfig, log: ChildLog) -> Any:
        """
        The L{Pool} that runs C{d}'s workers (in place of a supervisor).
        """
        from .pool import Pool

        least, most = d.workerRange(os.cpu_count() or 1)
        return Pool(
            d.name,
            self.launcher,
            self.reactor,
            self.registry,
            lambda index, fd, d=d: self._spec(d, worker=index, poolSocket=fd),
            self._policy(d),
            listen=d.listen,
            minWorkers=least,
            maxWorkers=most,
            idleTimeout=d.idleTimeout,
            drainTimeout=d.drainTimeout,
            childLog=log,
        )

    def _add(self, d: DaemonConfig) -> None:
        kind = "command" if d.command is not None else "daemon"
        self.registry.add(Entry(d.name, kind=kind, requires=tuple(d.requires)))
        log = self.childLogs.get(d.name)
        if log is not None:
            log.close()
        log = ChildLog(d.name, d.logFile, d.logMaxBytes, d.logBackups, onLine=self._logLine)
        try:
            log.open()
        except OSError as e:
            self.log.error("{name}: cannot open log file {path}: {error}", name=d.name, path=d.logFile, error=e)
        self.childLogs[d.name] = log
        report = lambda message, name=d.name: self._childReported(name, message)  # noqa: E731
        if d.isPool:
            pool = self.supervisors[d.name] = self._pool(d, log)
            pool.onReport = report
            self._closeNotifySocket(d.name)
            return
        probeFactory = None
        if kind == "command":
            probeFactory = self._probeFactory
        supervisor = self.supervisors[d.name] = Supervisor(
            d.name,
            self.launcher,
            self.reactor,
            self.registry,
            lambda d=d: self._spec(d),
            self._policy(d),
            probeFactory=probeFactory,
            childLog=log,
            onReport=report,
        )
        if kind == "command":
            self._openNotifySocket(d.name, supervisor)
        else:
            self._closeNotifySocket(d.name)

    def _childReported(self, name: str, message: dict) -> None:
        """
        A report event of C{name}'s child that its supervisor leaves to us:
        C{stats} (its command and fault counts) go to the metrics.
        """
        if message.get("event") == "stats" and self.metrics is not None:
            self.metrics.recordStats(name, message)

    def _notifyPath(self, name: str) -> str:
        """
        Where C{name}'s notify socket lives: under the state dir, or, when
        that path would pass the AF_UNIX limit (107 bytes), in a private
        directory under the temp dir.
        """
        path = os.path.join(self.config.stateDir, "notify", f"{name}.sock")
        if len(path.encode()) <= 100:
            return path
        if self._shortNotifyDir is None:
            self._shortNotifyDir = tempfile.mkdtemp(prefix="dae-notify-")
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        return os.path.join(self._shortNotifyDir, f"{digest}.sock")

    def _openNotifySocket(self, name: str, supervisor: Supervisor) -> None:
        """
        A NOTIFY_SOCKET of its own for a foreign program, in a directory
        only we can enter, so C{READY=1} there can only come from it.
        """
        from .notify import NotifySocket

        old = self._notifySockets.pop(name, None)
        if old is not None:
            old.stop()
        directory = os.path.dirname(self._notifyPath(name))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        sock = NotifySocket(self.reactor, self._notifyPath(name), supervisor.childNotified)
        try:
            sock.start()
        except Exception:
            self.log.failure("{name}: cannot open its notify socket", name=name)
            return
        self._notifySockets[name] = sock

    def _closeNotifySocket(self, name: str) -> Deferred:
        sock = self._notifySockets.pop(name, None)
        return succeed(None) if sock is None else sock.stop()

    def _probeFactory(self, supervisor: Supervisor, process: Any) -> Any:
        from .readiness import CommandProbe

        return CommandProbe(self.reactor, supervisor, process.pid, self.listeningPorts)

    def _childEnvironment(self, d: DaemonConfig) -> dict:
        env = dict(self.environ) if d.inheritEnv else {}
        env.update(d.envDict())
        env.pop("DAE_SECRET", None)
        # Our NOTIFY_SOCKET, LISTEN_FDS... are the manager's, not theirs.
        for variable in SYSTEMD_VARIABLES:
            env.pop(variable, None)
        if d.command is None:
            # The child must import what the manager imported when it checked
            # the config: give it the manager's import path.
            paths = [p for p in sys.path if p]
            if env.get("PYTHONPATH"):
                paths.append(env["PYTHONPATH"])
            env["PYTHONPATH"] = os.pathsep.join(paths)
        port = self.control.port if self.control is not None else None
        env["DAE_MANAGER"] = clientEndpointFor(self.config.listen, port)
        return env

    def _spec(
        self, d: DaemonConfig, worker: Optional[int] = None, poolSocket: Optional[int] = None
    ) -> Any:
        """
        How to start C{d}'s child: its one process, or worker C{worker} of
        its pool, serving on the pool's socket (open on C{poolSocket}).
        """
        from .launcher import commandChildSpec, pythonChildSpec
        from .loader import isDaemonClass

        env = self._childEnvironment(d)
        managerPort = self.control.port if self.control is not None else None
        if d.command is None:
            target = self.classes[d.name]
            if isDaemonClass(target):
                kind, reference = "daemon", f"{target.__module__}:{target.__qualname__}"
            else:
                kind, reference = "factory", d.factory or d.daemon
            return pythonChildSpec(
                d.name,
                reference,
                d.listen,
                settings=d.settingsDict(),
                maxLength=d.maxLength,
                env=env,
                cwd=d.cwd,
                managerPid=os.getpid(),
                managerPort=managerPort,
                kind=kind,
                drainTimeout=d.drainTimeout,
                tls=None if d.tlsCert is None else (d.tlsCert, d.tlsKey),
                poolSocket=poolSocket,
                worker=worker,
            )
        return commandChildSpec(
            d.name,
            d.command,
            env=env,
            cwd=d.cwd,
            managerPid=os.getpid(),
            managerPort=managerPort,
            notifySocket=self._notifyPath(d.name) if d.name in self._notifySockets else None,
        )

    # Dependency order

    def _dependents(self, name: str) -> list[str]:
        return [d.name for d in self.config.daemons if name in d.requires]

    def startAll(self) -> Deferred:
        """
        Start every daemon, each once everything it requires is ready.
        """
        return DeferredList(
            [self.startWithRequirements(name) for name in self.config.startOrder()],
            consumeErrors=True,
        )

    def startWithRequirements(self, name: str) -> Deferred:
        """
        Start C{name} once all it requires is ready (starting those too).

        @return: a Deferred of this caller's own: it fires with the entry
            once C{name} is ready, or fails with L{StartFailed}; cancelling
            it only stops this caller waiting.
        """
        waiters = self._pendingStarts.get(name)

        def forget(d: Deferred) -> None:
            if d in waiters:
                waiters.remove(d)

        d: Deferred = Deferred(forget)
        if waiters is None:
            # Register this caller before the chain runs: it may finish at
            # once (already ready, or a spawn error).
            waiters = self._pendingStarts[name] = [d]
            chain = self._startChain(name, waiters)
            if self._pendingStarts.get(name) is waiters:
                self._startChains[name] = chain
        else:
            waiters.append(d)
        return d

    def _startChain(self, name: str, waiters: list) -> Deferred:
        """
        The one start of C{name} that every caller of
        L{startWithRequirements} waits on.  Cancelling it (a stop, shutdown)
        means C{name} is not launched.
        """
        requires = self.config.daemon(name).requires
        supervisor = self.supervisors[name]
        waits = [self.startWithRequirements(r) for r in requires]
        if waits and supervisor.state in ("stopped", "exited", "failed"):
            self.registry.update(name, state="waiting", reason="waiting for " + ", ".join(requires))

        def requirementsReady(_: Any) -> Deferred:
            return supervisor.start()

        def requirementFailed(f: Failure) -> Failure:
            if f.check(FirstError):
                f = f.value.subFailure
            if self.registry.get(name).state == "waiting":
                bad = [r for r in requires if self.registry.get(r).state in ("failed", "exited")]
                if bad:
                    why = f"requires {', '.join(bad)}, which did not start"
                    self.registry.update(name, state="failed", reason=why)
                    f = Failure(StartFailed(f"{name}: {why}"))
                else:
                    self.registry.update(name, state="stopped", reason=None)
            return f

        def finish(result: Any) -> None:
            if self._pendingStarts.get(name) is waiters:
                del self._pendingStarts[name]
                self._startChains.pop(name, None)
            if isinstance(result, Failure) and result.check(CancelledError):
                result = Failure(StartFailed(f"{name}: stopped before it was ready"))
                if self.registry.get(name).state == "waiting":
                    self.registry.update(name, state="stopped", reason=None)
            for w in list(waiters):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        d = gatherResults(waits, consumeErrors=True) if waits else succeed(None)
        d.addCallbacks(requirementsReady, requirementFailed)
        d.addBoth(finish)
        return d

    def _cancelStart(self, name: str) -> None:
        chain = self._startChains.get(name)
        if chain is not None:
            chain.cancel()

    def stopWithDependents(self, name: str, _stopping: Optional[dict] = None) -> Deferred:
        """
        Stop C{name} after every daemon that requires it has stopped.
        """
        stopping = {} if _stopping is None else _stopping
        if name in stopping:
            return stopping[name]
        first = [self.stopWithDependents(n, stopping) for n in self._dependents(name) if n in self.supervisors]
        # Dependents' starts are cancelled first, so they do not see this
        # one's cancelled start as a failure.
        self._cancelStart(name)
        d = DeferredList(first).addCallback(lambda _: self.supervisors[name].stop())
        stopping[name] = d
        return d

    def stopAll(self) -> Deferred:
        """
        Stop every daemon in reverse dependency order.
        """
        stopping: dict = {}
        return DeferredList(
            [self.stopWithDependents(n, stopping) for n in reversed(self.config.startOrder())]
        )

    def act(self, action: str, name: str) -> Deferred:
        """
        C{start}, C{stop} or C{restart} one daemon.
        """
        if action == "start":
            return self.startWithRequirements(name)
        if action == "stop":
            return self.stopWithDependents(name)
        return self.supervisors[name].restart()

    def actAll(self, action: str) -> Deferred:
        if action == "start":
            return self.startAll()
        if action == "stop":
            return self.stopAll()
        return self.stopAll().addCallback(lambda _: self.startAll())

    # Reload

    def reload(self) -> Deferred:
        """
        Re-read the config file.  An invalid file changes nothing.

        @return: a Deferred firing with C{{"added": [...], "removed": [...],
            "changed": [...]}} once every affected daemon is started or
            stopped.
        """
        try:
            new = loadConfig(self.config.path, self.environ)
            classes = resolveClasses(new)
        except Exception as e:
            self.log.error("reload of {path} rejected; keeping the running config:\n{error}", path=self.config.path, error=e)
            f = Fault("bad_config", str(e).splitlines()[0] if str(e) else type(e).__name__, "reload")
            d: Deferred = Deferred()
            d.errback(f)
            return d
        if new.launcher != self.config.launcher:
            self.log.warn("reload: [dae] launcher changes at the next start of the manager")
        # A fork server's imports may be stale: a new one serves from now
        # on (the old one exits once its children have).
        refresh = getattr(self.launcher, "refresh", None)
        refreshed = refresh() if refresh is not None else succeed(None)
        old = {d.name: d for d in self.config.daemons}
        fresh = {d.name: d for d in new.daemons}
        removed = [n for n in old if n not in fresh]
        added = [n for n in fresh if n not in old]
        changed = [
            n for n in fresh if n in old and (old[n] != fresh[n] or self._classChanged(n, classes))
        ]
        self.log.info(
            "reload: added {added}, removed {removed}, changed {changed}",
            added=added, removed=removed, changed=changed,
        )
        running = {
            e.name for e in self.registry if e.state in ("starting", "ready", "backoff", "waiting")
        }
        stopping: dict = {}
        stops = [self.stopWithDependents(n, stopping) for n in removed + changed]

        def swap(_: Any) -> Deferred:
            oldConfig = self.config
            self.config = new
            self.classes = classes
            for n in removed:
                if self.metrics is not None:
                    self.metrics.forget(n)
                self._closeNotifySocket(n)
                self.supervisors.pop(n, None)
                log = self.childLogs.pop(n, None)
                if log is not None:
                    log.close()
                self.registry.remove(n)
            for n in changed:
                entry = self.registry.get(n)
                self._add(new.daemon(n))
                self.registry.update(n, restarts=entry.restarts)
            for n in added:
                self._add(new.daemon(n))
            restart = set(added) | set(changed)
            # Daemons stopped because something they require changed come back too.
            for name in stopping:
                if name in fresh and name in running:
                    restart.add(name)
            del oldConfig
            starts = [self.startWithRequirements(n) for n in new.startOrder() if n in restart]
            return DeferredList(starts, consumeErrors=True)

        summary = {"added": added, "removed": removed, "changed": changed}
        stopped = DeferredList(stops).addCallback(lambda _: refreshed)
        return stopped.addCallback(swap).addCallback(lambda _: summary)

    def _classChanged(self, name: str, classes: dict) -> bool:
        return self.classes.get(name) is not classes.get(name)

    # Reporting

    def addFollower(self, name: str, connection: Any) -> None:
        """
        Send C{connection} every new line of C{name}'s output.
        """
        followers = self._followers.setdefault(name, {})
        if connection not in followers:
            followers[connection] = 0
            connection.whenClosed().addCallback(lambda _: followers.pop(connection, None))

    def _logLine(self, name: str, when: float, stream: str, line: str) -> None:
        followers = self._followers.get(name)
        if not followers:
            return
        for connection, dropped in list(followers.items()):
            if connection.closed:
                continue
            if getattr(connection, "writeBlocked", False):
                followers[connection] = dropped + 1
                continue
            if dropped:
                note = f"{dropped} lines dropped: the reader did not keep up"
                connection.sendEvent("log", [name, when, "dae", note])
                followers[connection] = 0
            connection.sendEvent("log", [name, when, stream, line])

    def addSubscriber(self, connection: Any) -> None:
        self._subscribers.setdefault(connection, False)

    def _broadcast(self, entry: Entry) -> None:
        """
        Push C{entry} to every subscriber.  One that is not reading its
        replies (its send buffer is full) is skipped rather than buffered
        for without bound; once it reads again it gets every entry anew
        (entries are whole states, so that is all it missed).
        """
        payload = [entry.toDict()]
        for connection, missed in list(self._subscribers.items()):
            if connection.closed:
                continue
            if getattr(connection, "writeBlocked", False):
                self._subscribers[connection] = True
                continue
            if missed:
                self._subscribers[connection] = False
                for e in self.registry:
                    if e.name != entry.name:
                        connection.sendEvent("changed", [e.toDict()])
            connection.sendEvent("changed", payload)

    def statusReport(self) -> dict:
        return {
            "manager": {
                "pid": os.getpid(),
                "port": self.control.port if self.control else None,
                "started": int(self.started * 1000) if self.started else None,
                "config": self.config.path,
            },
            "daemons": self.registry.toList(),
        }

    def details(self, name: str) -> dict:
        entry = self.registry.get(name).toDict()
        supervisor = self.supervisors[name]
        entry["quick_failures"] = supervisor.quickFailures
        entry["log_file"] = self.childLogs[name].path
        return entry
