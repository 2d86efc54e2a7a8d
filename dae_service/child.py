"""
What runs inside a python daemon child: C{python -m dae_service.child}.

The manager (through L{dae_service.launcher.SpawnLauncher}) describes the
daemon in the environment variable C{DAE_CHILD} (JSON: C{name},
C{reference}, C{listen}, C{settings}, C{maxLength}, and optionally C{kind}
(C{"daemon"}, the default, or C{"factory"}: C{reference} names a Twisted
server factory, see L{dae_service.loader}), C{drainTimeout} and C{tls}
(C{{"cert": path, "key": path}})) and gives the child two private pipes,
named by C{DAE_CONTROL_FD} and C{DAE_REPORT_FD}:

  - the child writes JSON lines to the report pipe:
    C{{"event": "ready", "pid", "port", "created"}} once it listens, or
    C{{"event": "failed", "error": "<one line>"}} if it cannot start; a pool
    worker also C{{"event": "load", "connections": N, "peak": P}} when its
    number of open connections changed (at most every L{LOAD_INTERVAL}
    seconds; C{peak} is the most it had since the last report), and
    C{{"event": "draining"}} when told to drain;
  - the manager writes JSON lines to the control pipe:
    C{{"command": "drain", "deadline": T}} stops accepting, lets the open
    connections finish until T (seconds since the epoch), then exits 0;
    unknown commands are logged and ignored;
  - end-of-file on the control pipe means the manager is gone (or wants
    the child to go): the child stops gracefully and exits 0.

A pool worker is a child with C{DAE_POOL_FD}: the number of a descriptor
holding the pool's listening socket, which the child adopts (see
L{dae_service.workerport}) instead of listening on C{listen}.

Exit codes: 0 after a graceful stop (SIGTERM, SIGINT, control EOF); 78
(C{EX_CONFIG}) when the description cannot be turned into a daemon (bad
C{DAE_CHILD}, import error, not a Daemon, bad endpoint string, the
constructor refuses the settings); 1 when the daemon cannot listen or
otherwise fails to start.

By hand, without a manager: C{python -m dae_service.child module:Class
[endpoint]}.

Start-up is on the restart path, so this module imports little of its own
and does nothing before the daemon starts that the daemon does not need.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # First of all, before the imports below cost ~170 ms: a session and
    # process group of our own, so that the manager's stop signal to the
    # group never misses this process.
    try:
        os.setsid()
    except OSError:
        pass

import json
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet import fdesc
from twisted.internet.task import LoopingCall
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "EX_OK",
    "EX_FAILURE",
    "EX_CONFIG",
    "ChildConfigError",
    "childDescription",
    "setParentDeathSignal",
    "main",
    "run",
]

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78

#: A report line stays below PIPE_BUF (4096), so each write is atomic.
_MAX_ERROR_LENGTH = 1000

#: The longest control line kept; a longer one is dropped.
_MAX_CONTROL_LINE = 64 * 1024

#: Seconds between two reports of the command and fault counts, at most.
STATS_INTERVAL = 5.0

#: Seconds between two load reports of a pool worker, at most.
LOAD_INTERVAL = 0.5

_PR_SET_PDEATHSIG = 1

log = Logger(namespace="dae_service.child")


class ChildConfigError(Exception):
    """
    The child's description is missing or malformed; the message says why.
    """


def setParentDeathSignal(signum: int) -> bool:
    """
    Ask Linux to send C{signum} to this process when its parent (strictly:
    the parent's thread that started it) dies.

    @return: True if set; False where C{prctl} is unavailable.
    """
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def childDescription(
    environ: Mapping[str, str], argv: Sequence[str] = ()
) -> dict[str, Any]:
    """
    The daemon description from C{environ["DAE_CHILD"]}, or, if that is
    unset, from C{argv} (C{[program, reference, [endpoint]]}).

    @return: a dict with C{name}, C{reference}, C{listen}, C{settings} (a
        dict), C{maxLength} (an int or L{None}), C{kind} (C{"daemon"} or
        C{"factory"}), C{drainTimeout} (a number or L{None}) and C{tls}
        (C{{"cert", "key"}} or L{None}).
    @raise ChildConfigError: if it is missing or malformed.
    """
    from .daemon import DEFAULT_LISTEN

    text = environ.get("DAE_CHILD")
    if text is None:
        if len(argv) < 2:
            raise ChildConfigError("DAE_CHILD is not set and no module:Class was given")
        reference = argv[1]
        listen = argv[2] if len(argv) > 2 else DEFAULT_LISTEN
        return {
            "name": environ.get("DAE") or reference.rpartition(":")[2],
            "reference": reference,
            "listen": listen,
            "settings": {},
            "maxLength": None,
            "kind": "daemon",
            "drainTimeout": None,
            "tls": None,
        }
    try:
        description = json.loads(text)
    except ValueError as e:
        raise ChildConfigError(f"DAE_CHILD is not JSON: {e}") from None
    if not isinstance(description, dict):
        raise ChildConfigError("DAE_CHILD is not a JSON object")
    for key in ("name", "reference", "listen"):
        if not isinstance(description.get(key), str):
            raise ChildConfigError(f"DAE_CHILD: {key!r} must be a string")
    settings = description.get("settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ChildConfigError("DAE_CHILD: 'settings' must be an object")
    maxLength = description.get("maxLength")
    if maxLength is not None and (
        not isinstance(maxLength, int) or isinstance(maxLength, bool) or maxLength <= 0
    ):
        raise ChildConfigError("DAE_CHILD: 'maxLength' must be a positive integer")
    kind = description.get("kind", "daemon")
    if kind not in ("daemon", "factory"):
        raise ChildConfigError("DAE_CHILD: 'kind' must be 'daemon' or 'factory'")
    drainTimeout = description.get("drainTimeout")
    if drainTimeout is not None and (
        not isinstance(drainTimeout, (int, float)) or isinstance(drainTimeout, bool)
        or not drainTimeout > 0
    ):
        raise ChildConfigError("DAE_CHILD: 'drainTimeout' must be a positive number")
    tls = description.get("tls")
    if tls is not None and not (
        isinstance(tls, dict) and all(isinstance(tls.get(k), str) for k in ("cert", "key"))
    ):
        raise ChildConfigError("DAE_CHILD: 'tls' must be an object with 'cert' and 'key' paths")
    return {
        "name": description["name"],
        "reference": description["reference"],
        "listen": description["listen"],
        "settings": settings,
        "maxLength": maxLength,
        "kind": kind,
        "drainTimeout": drainTimeout,
        "tls": None if tls is None else {"cert": tls["cert"], "key": tls["key"]},
    }


def _fdFrom(environ: Mapping[str, str], key: str) -> Optional[int]:
    value = environ.get(key)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ChildConfigError(f"{key} must be a descriptor number, not {value!r}") from None


def _oneLine(error: object) -> str:
    text = " ".join(str(error).split())
    if len(text) > _MAX_ERROR_LENGTH:
        text = text[: _MAX_ERROR_LENGTH - 3] + "..."
    return text


class _Reporter:
    """
    Writes report lines to the report pipe.  The writes are plain blocking
    C{os.write}s: each line is a few hundred bytes at most (under
    C{PIPE_BUF}, so atomic), there are one or two of them in a child's life,
    and the manager drains the pipe, so they never wait; and unlike a
    buffered transport they are never lost when the process exits right
    after.
    """

    def __init__(self, fd: Optional[int]) -> None:
        self.fd = fd

    def report(self, message: Mapping[str, Any]) -> None:
        if self.fd is None:
            return
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as e:
            log.warn("cannot report to the manager: {error}", error=e)


@implementer(IReadDescriptor)
class _PipeWatcher:
    """
    Reads a pipe with the reactor; C{onData(bytes)} for what arrives and
    C{onEnd(reason)} once at EOF or error.  It never closes the descriptor.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        onData: Callable[[bytes], None],
        onEnd: Callable[[Failure], None],
    ) -> None:
        self._reactor = reactor
        self._fd = fd
        self._onData = onData
        self._onEnd = onEnd
        self._watching = False

    def start(self) -> None:
        fdesc.setNonBlocking(self._fd)
        self._watching = True
        self._reactor.addReader(self)

    def stop(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "pipe"

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fd, self._onData)

    def connectionLost(self, reason: Failure) -> None:
        if self._watching:
            self._watching = False
            self._onEnd(reason)


class _LoadReports:
    """
    Reports a pool worker's open connections: at most one report per
    C{interval}, and only when something changed since the last one.
    """

    def __init__(self, reactor: Any, reporter: _Reporter, interval: float = LOAD_INTERVAL) -> None:
        self._reactor = reactor
        self._reporter = reporter
        self._interval = interval
        self._count = 0
        self._peak = 0
        self._last: Optional[tuple[int, int]] = None
        self._call: Any = None
        self._stopped = False

    def changed(self, count: int) -> None:
        self._count = count
        self._peak = max(self._peak, count)
        if self._call is None and not self._stopped:
            self._call = self._reactor.callLater(self._interval, self._flush)

    def _flush(self) -> None:
        self._call = None
        now = (self._count, self._peak)
        if now != self._last:
            self._last = now
            self._reporter.report({"event": "load", "connections": now[0], "peak": now[1]})
        self._peak = self._count

    def stop(self) -> None:
        """
        Report no more (the worker is about to exit).
        """
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def _positiveFloat(text: Optional[str], default: float) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if value > 0 else default


class _StatsReports:
    """
    Sends the daemon's command and fault counts (a C{stats} event) every
    C{interval} seconds, only when they changed, and once more at the end.
    """

    def __init__(self, reactor: Any, stats: Any, reporter: _Reporter, interval: float) -> None:
        self._stats = stats
        self._reporter = reporter
        self._sent = 0
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor
        self._interval = interval

    def start(self) -> None:
        self._loop.start(self._interval, now=False)

    def flush(self) -> None:
        if self._stats.generation != self._sent:
            self._sent = self._stats.generation
            self._reporter.report(self._stats.reportEvent())

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.flush()


class _ChildRun:
    """
    One daemon's life inside the child: start, report, stop on control EOF
    or reactor shutdown.
    """

    def __init__(self, reactor: Any, daemon: Any, reporter: _Reporter, controlFD: Optional[int]):
        self._reactor = reactor
        self._daemon = daemon
        self._reporter = reporter
        self._controlFD = controlFD
        self._control: Optional[_PipeWatcher] = None
        self._done: Deferred = Deferred()
        self._stopping: Optional[Deferred] = None
        self._stopWaiters: list[Deferred] = []
        self._code: Optional[int] = None
        self._trigger: Any = None
        self._shuttingDown = False
        self._controlBuffer = b""
        self._load: Optional[_LoadReports] = None
        self._stats: Optional[_StatsReports] = None

    def run(self) -> Deferred:
        self._trigger = self._reactor.addSystemEventTrigger(
            "before", "shutdown", self._reactorShutdown
        )
        if self._controlFD is not None:
            self._control = _PipeWatcher(
                self._reactor, self._controlFD, self._controlData, self._controlEnded
            )
            self._control.start()
        try:
            self._daemon.startService()
        except Exception as e:
            log.failure("{name} cannot start", name=self._daemon.name)
            self._fail(e)
        else:
            self._daemon.whenListening().addCallbacks(self._ready, self._listenFailed)
        return self._done

    def _ready(self, port: Any) -> None:
        if hasattr(port, "observers"):
            # A pool worker's port: the manager wants its load.
            self._load = _LoadReports(self._reactor, self._reporter)
            port.observers.append(self._load.changed)
        # Under task.react the daemon listens before reactor.run() installs
        # the SIGTERM handler: report ready only once the reactor runs, so a
        # stop right after "ready" is always a graceful one.
        self._reactor.callWhenRunning(self._reportReady)

    def _reportReady(self) -> None:
        if self._stopping is not None:
            return
        stats = getattr(self._daemon, "commandStats", None)
        if stats is not None:
            interval = _positiveFloat(os.environ.get("DAE_STATS_INTERVAL"), STATS_INTERVAL)
            self._stats = _StatsReports(self._reactor, stats, self._reporter, interval)
            self._stats.start()
        self._reporter.report(
            {
                "event": "ready",
                "pid": os.getpid(),
                "port": self._daemon.port,
                "created": self._daemon.created,
            }
        )

    def _listenFailed(self, failure: Failure) -> None:
        # The daemon has logged it already.
        if self._stopping is None:
            self._fail(failure.value)

    def _fail(self, error: BaseException) -> None:
        self._reporter.report({"event": "failed", "error": _oneLine(error)})
        self._code = EX_FAILURE
        self.stop()

    def _controlData(self, data: bytes) -> None:
        buffer = self._controlBuffer + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > _MAX_CONTROL_LINE:
            log.warn("{name}: dropping an overlong control line", name=self._daemon.name)
            rest = b""
        self._controlBuffer = rest
        for line in lines:
            if line.strip():
                self._command(line)

    def _command(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        command = message.get("command") if isinstance(message, dict) else None
        if command == "drain":
            deadline = message.get("deadline")
            if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
                self.drain(float(deadline))
                return
        log.warn("{name}: ignoring control line {line!r}", name=self._daemon.name, line=line[:200])

    def drain(self, deadline: float) -> Deferred:
        """
        Stop accepting and let the open connections finish until
        C{deadline} (seconds since the epoch); then the child exits 0.
        """
        if self._stopping is None:
            remaining = max(0.0, deadline - time.time())
            log.info("{name}: draining, for at most {remaining:.1f} s",
                     name=self._daemon.name, remaining=remaining)
            self._daemon.drainTimeout = remaining
            self._reporter.report({"event": "draining"})
        return self.stop()

    def _controlEnded(self, reason: Failure) -> None:
        log.info("{name}: the manager closed the control channel; stopping",
                 name=self._daemon.name)
        self.stop()

    def _reactorShutdown(self) -> Deferred:
        self._shuttingDown = True
        return self.stop()

    def stop(self) -> Deferred:
        """
        Stop the daemon (once); the Deferred fires when it has stopped.
        """
        d: Deferred = Deferred()
        if self._stopping is None:
            if self._control is not None:
                self._control.stop()
            if self._daemon.running:
                self._stopping = maybeDeferred(self._daemon.stopService)
            else:
                self._stopping = succeed(None)
            self._stopping.addErrback(
                lambda f: log.failure("{name}: error while stopping", f, name=self._daemon.name)
            )
            self._stopping.addCallback(self._stopped)
        if self._stopWaiters is None:
            d.callback(None)
        else:
            self._stopWaiters.append(d)
        return d

    def _stopped(self, ignored: object) -> None:
        if self._load is not None:
            # Reported while draining; not after.
            self._load.stop()
        if self._stats is not None:
            self._stats.stop()
        waiters, self._stopWaiters = self._stopWaiters, None  # type: ignore[assignment]
        if not self._shuttingDown:
            self._reactor.removeSystemEventTrigger(self._trigger)
        for d in waiters:
            d.callback(None)
        self._done.callback(EX_OK if self._code is None else self._code)


def main(reactor: Any, environ: Mapping[str, str], argv: Sequence[str] = ()) -> Deferred:
    """
    Run the daemon that C{environ} describes (see the module docstring) on
    C{reactor} until it is told to stop.  It neither detaches, nor sets up
    logging, nor stops the reactor: L{run} does those.

    @return: a Deferred firing with the exit code: L{EX_OK} after a graceful
        stop (control EOF, or the reactor shutting down), L{EX_CONFIG} at
        once if the description is bad, L{EX_FAILURE} if the daemon could
        not start.
    """
    from .loader import LoadError

    reporter = _Reporter(None)
    try:
        reporter.fd = _fdFrom(environ, "DAE_REPORT_FD")
        controlFD = _fdFrom(environ, "DAE_CONTROL_FD")
        poolFD = _fdFrom(environ, "DAE_POOL_FD")
        description = childDescription(environ, argv)
        daemon = _build(reactor, description, poolFD)
    except (ChildConfigError, LoadError) as e:
        return _refuse(reporter, str(e))
    except Exception as e:
        return _refuse(reporter, f"{type(e).__name__}: {e}")
    return _ChildRun(reactor, daemon, reporter, controlFD).run()


def _build(reactor: Any, description: Mapping[str, Any], poolFD: Optional[int]) -> Any:
    """
    The daemon (a L{dae_service.Daemon}, or a L{FactoryServer} around a
    plain factory) that C{description} asks for, listening on the pool's
    socket when C{poolFD} is given, wrapped in TLS when asked.

    @raise ChildConfigError: or L{LoadError}, or whatever the daemon's
        constructor raises: all mean it cannot run.
    """
    from twisted.internet.endpoints import serverFromString

    from .loader import isDaemonClass, makeFactory, resolveServer

    target = resolveServer(description["reference"], factory=description["kind"] == "factory")
    # Parse (not listen on) the endpoint now, to tell a config error from a
    # listening failure.
    endpoint: Any = serverFromString(reactor, description["listen"])
    name, listen, settings = description["name"], description["listen"], description["settings"]
    if isDaemonClass(target):
        options: dict[str, Any] = {"settings": settings}
        if description["maxLength"] is not None:
            options["maxLength"] = description["maxLength"]
        if description["drainTimeout"] is not None:
            options["drainTimeout"] = description["drainTimeout"]
        daemon = target(name, listen, reactor, **options)
    else:
        from .server import FactoryServer

        drain = description["drainTimeout"]
        daemon = FactoryServer(
            name, listen, reactor, makeFactory(target, settings), settings=settings,
            **({} if drain is None else {"drainTimeout": drain}),
        )
    custom = False
    if poolFD is not None:
        from .workerport import WorkerEndpoint

        endpoint, custom = WorkerEndpoint(reactor, poolFD), True
    if description["tls"] is not None:
        from .tls import TLSServerEndpoint, serverContextFactory

        tls = description["tls"]
        try:
            context = serverContextFactory(tls["cert"], tls["key"])
        except (OSError, ValueError) as e:
            raise ChildConfigError(f"TLS: {e}") from None
        endpoint, custom = TLSServerEndpoint(endpoint, context), True
    if custom:
        daemon.endpoint = endpoint
    return daemon


def _refuse(reporter: _Reporter, error: str) -> Deferred:
    log.error("cannot start: {error}", error=error)
    reporter.report({"event": "failed", "error": _oneLine(error)})
    return succeed(EX_CONFIG)


def _textLineObserver(stream: Any) -> Callable[[dict], None]:
    """
    A log observer writing C{namespace level: message} lines to C{stream}
    (the manager captures them, one per line), tracebacks after.
    """
    from twisted.logger import LogLevel, formatEvent

    def observe(event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < LogLevel.info:
            return
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback().rstrip()}"
        namespace = event.get("log_namespace", "-")
        try:
            stream.write(f"{namespace} {level.name}: {text}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    return observe


def _reactMain(reactor: Any, environ: Mapping[str, str], argv: Sequence[str]) -> Deferred:
    def exit(code: int) -> None:
        if code:
            raise SystemExit(code)

    return main(reactor, environ, argv).addCallback(exit)


def run(argv: Optional[Sequence[str]] = None) -> None:
    """
    The C{python -m dae_service.child} entry point: a session and process
    group of its own, SIGTERM if the manager dies, logs as text lines on
    stderr, print()s line-buffered on stdout, then L{main} on the global
    reactor; exits with its code.
    """
    import signal

    _detach()
    setParentDeathSignal(signal.SIGTERM)

    from twisted.internet import task
    from twisted.logger import globalLogBeginner

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    globalLogBeginner.beginLoggingTo(
        [_textLineObserver(sys.stderr)], redirectStandardIO=False
    )
    task.react(_reactMain, (os.environ, list(sys.argv if argv is None else argv)))


def _detach() -> None:
    try:
        os.setsid()
    except OSError:
        # Already the leader of a process group (started by hand from an
        # interactive shell): it is in a group of its own already.
        pass


if __name__ == "__main__":
    run()
