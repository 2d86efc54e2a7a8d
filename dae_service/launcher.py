"""
Starting child processes: what to run (L{LaunchSpec}, built by
L{pythonChildSpec} or L{commandChildSpec}), how to run it (L{SpawnLauncher},
an L{ILauncher} over L{IReactorProcess.spawnProcess}), and how the child's
pipes turn into L{IChildListener} events (L{ChildProcessProtocol}).

A python child (C{python -m dae_service.child}) gets five descriptors::

    0  stdin    closed by us at once: the child reads EOF
    1  stdout   captured line by line
    2  stderr   captured line by line
    3  CONTROL  parent -> child; EOF there means the manager is gone
    4  REPORT   child -> parent; one JSON object per line

A python child may get more (L{LaunchSpec.fds}): a pool worker gets the
pool's listening socket as descriptor 5 (L{POOL_FD}).

A foreign command gets only 0-2; it is started through a tiny wrapper
(L{WRAPPER}) that gives it its own session and process group, asks the
kernel for SIGTERM when its parent dies, and then C{exec}s the command.

L{FakeLauncher} is the in-memory L{ILauncher} for unit tests of
supervisors.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal as _signal
import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IChildListener, ILauncher

__all__ = [
    "CONTROL_FD",
    "REPORT_FD",
    "POOL_FD",
    "MAX_LINE_LENGTH",
    "WRAPPER",
    "LaunchSpec",
    "pythonChildSpec",
    "commandChildSpec",
    "LineSplitter",
    "ChildProcessProtocol",
    "SpawnLauncher",
    "FakeLauncher",
    "FakeProcess",
]

#: The child's end of the control pipe (parent -> child).
CONTROL_FD = 3

#: The child's end of the report pipe (child -> parent, JSON lines).
REPORT_FD = 4

#: Where a pool worker finds the pool's listening socket.
POOL_FD = 5

#: The longest output line passed on whole; longer ones are cut into pieces
#: of this size so that a child printing without newlines cannot make the
#: manager buffer without bound.
MAX_LINE_LENGTH = 64 * 1024

#: Environment variables the spec builders never pass on: a secret does not
#: belong in an environment (it shows in /proc/<pid>/environ, in core dumps,
#: in every grandchild).
_SECRET_VARIABLES = frozenset({"DAE_SECRET"})

_KINDS = frozenset({"python", "command"})

#: Exit codes of the wrapper when it cannot run the command at all.
WRAPPER_ORPHANED = 125
WRAPPER_CANNOT_EXEC = 126
WRAPPER_NOT_FOUND = 127

#: Run as C{python -S -c WRAPPER <parent pid> <executable> <argv...>}: a new
#: session (so a process group of its own), SIGTERM on the parent's death
#: (the setting survives execve), a re-check that the parent did not die
#: before that was set, then exec.  -S skips site: the whole thing costs
#: the interpreter's start-up and nothing else.
WRAPPER = f"""\
import os, sys
os.setsid()
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 15, 0, 0, 0)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit({WRAPPER_ORPHANED})
try:
    os.execv(sys.argv[2], sys.argv[3:])
except OSError as e:
    os.write(2, ("dae wrapper: cannot run %r: %s\\n" % (sys.argv[2], e.strerror)).encode())
    os._exit({WRAPPER_NOT_FOUND} if e.errno == 2 else {WRAPPER_CANNOT_EXEC})
"""


@dataclass(frozen=True)
class LaunchSpec:
    """
    What to start.

    @ivar name: the daemon's name (for logs).
    @ivar argv: the command line; C{argv[0]} is the executable, looked up on
        the C{PATH} of C{env} unless it contains a C{/}.
    @ivar env: the complete environment of the child (nothing is inherited).
    @ivar cwd: the child's working directory, or L{None} for the manager's.
    @ivar kind: C{"python"} (a C{dae_service.child} with the control and
        report pipes) or C{"command"} (a foreign program, stdio only).
    @ivar fds: more descriptors for a python child: C{{child fd: parent
        fd}}, each child fd above L{REPORT_FD}; the parent's descriptor
        must stay open until the launch returns.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Optional[str] = None
    kind: str = "command"
    fds: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be 'python' or 'command', not {self.kind!r}")
        if not self.argv:
            raise ValueError("argv must name an executable")
        if self.fds and self.kind != "python":
            raise ValueError("only a python child gets more descriptors")
        if any(not isinstance(fd, int) or fd <= REPORT_FD for fd in self.fds):
            raise ValueError(f"extra child descriptors must be above {REPORT_FD}")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "fds", MappingProxyType(dict(self.fds)))


def _childEnvironment(
    env: Mapping[str, str], name: str, managerPid: Optional[int], managerPort: Optional[int]
) -> dict[str, str]:
    environment = {k: v for k, v in env.items() if k not in _SECRET_VARIABLES}
    environment["DAE"] = name
    environment["DAE_PID"] = str(os.getpid() if managerPid is None else managerPid)
    environment["DAE_PORT"] = "" if managerPort is None else str(managerPort)
    return environment


def pythonChildSpec(
    name: str,
    reference: str,
    listen: str,
    *,
    env: Mapping[str, str],
    settings: Optional[Mapping[str, Any]] = None,
    maxLength: Optional[int] = None,
    cwd: Optional[str] = None,
    managerPid: Optional[int] = None,
    managerPort: Optional[int] = None,
    kind: str = "daemon",
    drainTimeout: Optional[float] = None,
    tls: Optional[tuple[str, str]] = None,
    poolSocket: Optional[int] = None,
    worker: Optional[int] = None,
) -> LaunchSpec:
    """
    The spec of a python daemon child: C{sys.executable -m dae_service.child}
    with the daemon described in C{DAE_CHILD} (JSON: C{name}, C{reference},
    C{listen}, C{settings}, C{maxLength}, C{kind}, C{drainTimeout}, C{tls}),
    plus C{DAE} (the name), C{DAE_PID} (the manager's pid), C{DAE_PORT}
    (the manager's port or C{""}), C{DAE_CONTROL_FD} and C{DAE_REPORT_FD};
    for a pool worker also C{DAE_POOL_FD} and C{DAE_WORKER} (its index).

    @param env: the environment to start from (the child must be able to
        import C{dae_service} and C{reference} with it); C{DAE_SECRET} is
        dropped from it.
    @param maxLength: the daemon's packet limit, or L{None} for its default.
    @param managerPid: defaults to this process's pid.
    @param kind: C{"daemon"} (C{reference} names a Daemon class) or
        C{"factory"} (a protocol factory, see L{dae_service.loader}).
    @param tls: C{(certificate file, key file)}, to serve TLS.
    @param poolSocket: the parent's descriptor of a pool's listening
        socket: the child gets it as L{POOL_FD} and serves on it.
    @param worker: the worker's index in its pool.
    @raise TypeError: if C{settings} cannot be encoded as JSON.
    """
    description: dict[str, Any] = {
        "name": name,
        "reference": reference,
        "listen": listen,
        "settings": dict(settings or {}),
        "maxLength": maxLength,
    }
    if kind != "daemon":
        description["kind"] = kind
    if drainTimeout is not None:
        description["drainTimeout"] = drainTimeout
    if tls is not None:
        description["tls"] = {"cert": tls[0], "key": tls[1]}
    environment = _childEnvironment(env, name, managerPid, managerPort)
    environment["DAE_CHILD"] = json.dumps(description, separators=(",", ":"))
    environment["DAE_CONTROL_FD"] = str(CONTROL_FD)
    environment["DAE_REPORT_FD"] = str(REPORT_FD)
    fds = {}
    if poolSocket is not None:
        environment["DAE_POOL_FD"] = str(POOL_FD)
        fds[POOL_FD] = poolSocket
    if worker is not None:
        environment["DAE_WORKER"] = str(worker)
    return LaunchSpec(
        name=name,
        argv=(sys.executable, "-m", "dae_service.child"),
        env=environment,
        cwd=cwd,
        kind="python",
        fds=fds,
    )


def commandChildSpec(
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Optional[str] = None,
    managerPid: Optional[int] = None,
    managerPort: Optional[int] = None,
    notifySocket: Optional[str] = None,
) -> LaunchSpec:
    """
    The spec of a foreign program: C{command} as given, with C{DAE},
    C{DAE_PID}, C{DAE_PORT} and, if C{notifySocket} is given,
    C{NOTIFY_SOCKET} (see L{dae_service.notify.NotifySocket}) added to
    C{env} (less C{DAE_SECRET}).
    """
    environment = _childEnvironment(env, name, managerPid, managerPort)
    if notifySocket is not None:
        environment["NOTIFY_SOCKET"] = notifySocket
    return LaunchSpec(name=name, argv=tuple(command), env=environment, cwd=cwd, kind="command")


def _cutPoint(data: bytes, limit: int) -> int:
    """
    Where to cut C{data} (longer than C{limit}) so that the first piece is
    at most C{limit} bytes and, if possible, does not split a UTF-8
    sequence.
    """
    for back in range(4):
        cut = limit - back
        if cut <= 0:
            break
        if (data[cut] & 0xC0) != 0x80:
            return cut
    return limit


class LineSplitter:
    """
    Turns a byte stream into lines for C{deliver(line)}: C{\\n} ends a line
    and is dropped with one C{\\r} before it; a line longer than
    C{maxLength} bytes is delivered in pieces of at most C{maxLength}
    (cut, where possible, between UTF-8 characters), so at most
    C{maxLength} bytes are ever held.
    """

    def __init__(
        self, deliver: Callable[[bytes], None], maxLength: int = MAX_LINE_LENGTH
    ) -> None:
        self._deliver = deliver
        self.maxLength = maxLength
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """
        Add C{data}; deliver every line it completes.
        """
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end == -1:
                break
            line = buffer[start:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._deliverPieces(line)
            start = end + 1
        rest = buffer[start:]
        while len(rest) > self.maxLength:
            cut = _cutPoint(rest, self.maxLength)
            self._deliver(rest[:cut])
            rest = rest[cut:]
        self._buffer = rest

    def _deliverPieces(self, line: bytes) -> None:
        while len(line) > self.maxLength:
            cut = _cutPoint(line, self.maxLength)
            self._deliver(line[:cut])
            line = line[cut:]
        self._deliver(line)

    def flush(self) -> None:
        """
        Deliver a last line that had no line end, if any.
        """
        rest, self._buffer = self._buffer, b""
        if rest:
            if rest.endswith(b"\r"):
                rest = rest[:-1]
            self._deliver(rest)


class ChildProcessProtocol(ProcessProtocol):
    """
    Tells an L{IChildListener} what one child (called C{name} in logs)
    does: C{childStarted} when connected, C{childOutput} per line of fds 1
    and 2, C{childReported} per JSON line of the report fd (a bad line is
    logged and skipped), and C{childExited} once the process is reaped and
    every holder of its pipes (a grandchild too) has let go, after the last
    partial lines are delivered.

    An exception raised by the listener is logged, never allowed to close
    the child's pipe.
    """

    log = Logger()

    def __init__(
        self,
        listener: IChildListener,
        reportFD: Optional[int] = REPORT_FD,
        maxLineLength: int = MAX_LINE_LENGTH,
        name: str = "",
    ) -> None:
        self.listener = listener
        self.name = name
        self._ended = False
        self._splitters: dict[int, LineSplitter] = {
            1: LineSplitter(lambda line: self._output("stdout", line), maxLineLength),
            2: LineSplitter(lambda line: self._output("stderr", line), maxLineLength),
        }
        if reportFD is not None:
            self._splitters[reportFD] = LineSplitter(self._report, maxLineLength)

    def _call(self, method: Callable[..., Any], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self.log.failure(
                "child listener {method} failed", method=method.__name__
            )

    def connectionMade(self) -> None:
        self._call(self.listener.childStarted, self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        splitter = self._splitters.get(childFD)
        if splitter is not None:
            splitter.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        splitter = self._splitters.get(childFD)
        if splitter is not None:
            splitter.flush()

    def _output(self, stream: str, line: bytes) -> None:
        self._call(self.listener.childOutput, stream, line.decode("utf-8", "replace"))

    def _report(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not (isinstance(message, dict) and isinstance(message.get("event"), str)):
            self.log.warn(
                "child {name}: ignoring a bad report line {line!r}",
                name=self.name,
                line=line[:200],
            )
            return
        self._call(self.listener.childReported, message)

    def processEnded(self, reason: Failure) -> None:
        if self._ended:
            return
        self._ended = True
        for splitter in self._splitters.values():
            splitter.flush()
        exitCode = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if exitCode is None and signal is None:
            exitCode = 0
        self._call(self.listener.childExited, exitCode, signal)


def _signalNumber(signalName: Any) -> int:
    if isinstance(signalName, int):
        return signalName
    name = str(signalName).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    number = getattr(_signal, name, None)
    if not isinstance(number, int):
        raise ValueError(f"unknown signal {signalName!r}")
    return int(number)


def _resolveExecutable(argv0: str, env: Mapping[str, str], cwd: Optional[str]) -> str:
    """
    The path of the executable C{argv0} names: as given if it contains a
    C{/} (relative to C{cwd}), else searched on C{env}'s C{PATH}.

    @raise FileNotFoundError: if there is no such executable.
    """
    if os.sep in argv0:
        path = argv0 if cwd is None else os.path.join(cwd, argv0)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    else:
        found = shutil.which(argv0, path=env.get("PATH", os.defpath))
        if found is not None:
            return found
    raise FileNotFoundError(errno.ENOENT, "no such executable", argv0)


@implementer(ILauncher)
class SpawnLauncher:
    """
    The default L{ILauncher}: C{reactor.spawnProcess}, one new process per
    child.

    @param reactor: an L{IReactorProcess}.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def launch(self, spec: LaunchSpec, listener: IChildListener) -> Any:
        """
        Start C{spec}, reporting to C{listener}.

        @raise OSError: if the executable does not exist or the process
            cannot be created.
        """
        executable = _resolveExecutable(spec.argv[0], spec.env, spec.cwd)
        if spec.kind == "python":
            args = [executable, *spec.argv[1:]]
            childFDs = {0: "w", 1: "r", 2: "r", CONTROL_FD: "w", REPORT_FD: "r", **spec.fds}
            reportFD: Optional[int] = REPORT_FD
        else:
            wrapper = [sys.executable, "-S", "-c", WRAPPER, str(os.getpid()), executable]
            args = [*wrapper, *spec.argv]
            executable = sys.executable
            childFDs = {0: "w", 1: "r", 2: "r"}
            reportFD = None
        protocol = ChildProcessProtocol(listener, reportFD=reportFD, name=spec.name)
        process = self._reactor.spawnProcess(
            protocol, executable, args, env=dict(spec.env), path=spec.cwd, childFDs=childFDs
        )
        process.closeStdin()
        self.log.debug(
            "started {name} (pid {pid}): {argv}", name=spec.name, pid=process.pid, argv=spec.argv
        )
        return process

    def signal(self, process: Any, signalName: Any) -> None:
        """
        Send C{signalName} (C{"TERM"}, C{"SIGTERM"} or a number) to the
        child's process group; to the child alone if it has no group of its
        own (yet).  A child already gone is not an error.
        """
        number = _signalNumber(signalName)
        pid = process.pid
        if pid is None:
            return
        try:
            os.killpg(pid, number)
            return
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.signalProcess(number)
        except ProcessExitedAlready:
            pass
        except ProcessLookupError:
            pass


@implementer(IProcessTransport)
class FakeProcess:
    """
    The process a L{FakeLauncher} "starts".

    @ivar spec: the L{LaunchSpec} it was launched with.
    @ivar listener: the L{IChildListener} it reports to.
    @ivar signals: the signal names sent to it, in order.
    @ivar closedFDs: the child descriptors closed by the parent, in order.
    @ivar written: C{(childFD, data)} written to it, in order.
    @ivar exited: True once L{FakeLauncher.exit} was called for it.
    """

    def __init__(self, pid: int, spec: LaunchSpec, listener: IChildListener) -> None:
        self.pid: Optional[int] = pid
        self.spec = spec
        self.listener = listener
        self.signals: list[Any] = []
        self.closedFDs: list[int] = []
        self.written: list[tuple[int, bytes]] = []
        self.exited = False

    def signalProcess(self, signalID: Any) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    def closeChildFD(self, descriptor: int) -> None:
        self.closedFDs.append(descriptor)

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written.append((childFD, data))

    def write(self, data: bytes) -> None:
        self.writeToChild(0, data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        for fd in (0, 1, 2):
            self.closeChildFD(fd)

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


@implementer(ILauncher)
class FakeLauncher:
    """
    An in-memory L{ILauncher} for unit tests: L{launch} records the spec and
    "starts" a L{FakeProcess} (pids count up from C{firstPid}); the test
    then plays the child with L{report}, L{output}, L{notify} and L{exit}.

    @ivar processes: every L{FakeProcess} launched, in order.
    @ivar launchError: if set, L{launch} raises it instead of starting
        anything (e.g. C{FileNotFoundError(2, "no such executable")}).
    """

    def __init__(self, firstPid: int = 1000) -> None:
        self._nextPid = firstPid
        self.processes: list[FakeProcess] = []
        self.launchError: Optional[BaseException] = None

    @property
    def specs(self) -> list[LaunchSpec]:
        """
        The spec of every launch, in order.
        """
        return [p.spec for p in self.processes]

    def launch(self, spec: LaunchSpec, listener: IChildListener) -> FakeProcess:
        if self.launchError is not None:
            raise self.launchError
        process = FakeProcess(self._nextPid, spec, listener)
        self._nextPid += 1
        self.processes.append(process)
        process.closeStdin()
        listener.childStarted(process)
        return process

    def signal(self, process: FakeProcess, signalName: Any) -> None:
        if process.pid is None:
            return
        process.signals.append(signalName)

    def _process(self, i: int) -> FakeProcess:
        return self.processes[i]

    def report(self, i: int, message: Mapping[str, Any]) -> None:
        """
        Child C{i} (launch order; -1 is the last) sends C{message} on its
        report channel.
        """
        p = self._process(i)
        p.listener.childReported(dict(message))

    def ready(self, i: int, port: int, created: int = 0) -> None:
        """
        Child C{i} reports C{ready} on C{port}.
        """
        p = self._process(i)
        self.report(i, {"event": "ready", "pid": p.pid, "port": port, "created": created})

    def output(self, i: int, line: str, stream: str = "stdout") -> None:
        """
        Child C{i} writes C{line} on C{stream}.
        """
        self._process(i).listener.childOutput(stream, line)

    def notify(self, i: int, state: Mapping[str, str]) -> None:
        """
        Child C{i} sends a C{NOTIFY_SOCKET} message.
        """
        self._process(i).listener.childNotified(dict(state))

    def exit(self, i: int, exitCode: Optional[int] = None, signal: Optional[int] = None) -> None:
        """
        Child C{i} is gone: exited with C{exitCode} or killed by
        C{signal} (a number); neither means C{exitCode=0}.

        @raise ValueError: if both are given, or it already exited.
        """
        if exitCode is not None and signal is not None:
            raise ValueError("a child exits with a code or by a signal, not both")
        if exitCode is None and signal is None:
            exitCode = 0
        p = self._process(i)
        if p.exited:
            raise ValueError(f"child {i} already exited")
        p.exited = True
        p.pid = None
        p.listener.childExited(exitCode, signal)
