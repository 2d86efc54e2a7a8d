"""
An opt-in L{ILauncher} that forks python daemon children from a warm fork
server (a "zygote") instead of starting a new interpreter for each one
(C{[dae] launcher = "forkserver"}).

A python child started the ordinary way (L{SpawnLauncher}) spends ~185 ms
of CPU importing Twisted and dae_service before its daemon starts.  The
fork server is one process, started by the manager with
C{reactor.spawnProcess} (C{python -m dae_service.forkserver}), that imports
all of that once, without installing a reactor, and then forks on request:
a forked child runs its daemon after a few ms, and shares the fork server's
pages (the imported modules) until it writes to them.

How the manager and the fork server talk::

    fd 3  REQUESTS  a SOCK_SEQPACKET socket pair, used synchronously by
                    launch(): one datagram per fork, a JSON header
                    {"id", "name", "argv", "env", "cwd", "fds"} with the
                    child's descriptors attached (SCM_RIGHTS, in the order
                    of "fds"); the answer is {"id", "pid"} with a pidfd of
                    the new process attached, or {"id", "error"}
    fd 4  EVENTS    a pipe, read by the reactor: JSON lines
                    {"event": "ready", "pid", "importMs"} once, then
                    {"event": "exit", "id", "pid", "status"} (a wait
                    status) each time the fork server reaped a child
    fd 1, 2         its own log lines, logged by the manager

The child's descriptors are made by the manager, exactly as
C{spawnProcess} would make them (stdin, stdout, stderr, CONTROL, REPORT,
and the pool's socket as fd 5 for a pool worker), and read with Twisted's
own process pipe readers, so L{ChildProcessProtocol} turns them into the
same L{IChildListener} events: C{childStarted} with a L{ForkedProcess}
(C{pid}, C{signalProcess}, C{writeToChild}, C{closeChildFD}), output
lines, reports, and C{childExited} exactly once, when the process is gone
and reaped and all its pipes are closed.

In the forked child (the fork server's child, the manager's grandchild):
C{setsid} first (so L{ILauncher.signal}'s C{killpg} reaches its group, as
with L{SpawnLauncher}), signal handlers reset, the received descriptors
C{dup2}ed to 0-5 and every other descriptor closed (the fork server's
sockets included), the spec's environment, working directory and
C{sys.path} (from its C{PYTHONPATH}) applied, C{random} reseeded, then
L{dae_service.child}'s main on a reactor installed there and then.  It
ends like a spawned child: C{sys.exit} and interpreter shutdown.

Who watches whom:

  - A forked child does not set a parent-death signal: its parent is the
    fork server, and it must survive the fork server.  What stops it when
    the manager dies is end-of-file on its control pipe, whose other end
    only the manager holds (the child stops gracefully, exit 0).
  - The fork server exits at end-of-file on its request socket (the
    manager closed it, or died), and has SIGTERM as its own parent-death
    signal.  It does not wait for its children.
  - The fork server reaps its children and reports their wait status.  If
    it dies, its running children are reparented (to init or a
    subreaper) and keep running; their exit can no longer be reaped by
    anyone we can ask.  Each child's pidfd (opened by the fork server
    before it could reap the child, so it names exactly that process, pid
    reuse or not) is then watched: readable means the process has ended.
    Its exit code is the one it wrote on its report pipe as it exited
    (C{{"event": "exit-code"}}, kept from the listener); a child that died
    without writing it (a signal) is reported as exit code
    L{EXIT_UNKNOWN}.
  - The launcher starts a new fork server after a death, after a delay
    that doubles after quick failures (L{RESTART_INITIAL} to
    L{RESTART_MAX}), and gives up after L{GIVE_UP_AFTER} quick failures
    in a row, or at once when one could not run here at all
    (L{EXIT_REFUSED}: no pidfd); meanwhile python children are spawned
    (L{SpawnLauncher}).

What is not forked, but spawned: foreign commands; a python spec whose
argv is not C{<the fork server's python> -m dae_service.child}; a spec
whose environment differs from the fork server's in a variable that only
acts at interpreter start-up (L{startupVariables}: C{PYTHON*} but
C{PYTHONPATH}, C{LD_*}, C{LANG}, C{LC_ALL}, C{LC_CTYPE}); and every launch
while no fork server is ready.

The request is synchronous because the L{ILauncher} contract is (the pid is
known, and C{childStarted} called, before C{launch} returns, as with
C{spawnProcess}, which forks in the manager itself): a fork server answers
in a few ms; one that does not answer within L{LAUNCH_TIMEOUT} is killed.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal as _signal
import socket
import sys
import time
from typing import Any, Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReadDescriptor

# The pipe helpers of Twisted's own spawnProcess, so that a forked child's
# pipes behave exactly like a spawned one's.
from twisted.internet.process import ProcessReader, ProcessWriter
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IChildListener, ILauncher
from .launcher import (
    CONTROL_FD,
    REPORT_FD,
    ChildProcessProtocol,
    LaunchSpec,
    LineSplitter,
    SpawnLauncher,
)

__all__ = [
    "CHILD_MODULE",
    "EXIT_UNKNOWN",
    "CannotFork",
    "ForkServer",
    "ForkServerLauncher",
    "ForkedProcess",
    "startupVariables",
]

#: The only module a fork server runs in its children.
CHILD_MODULE = "dae_service.child"

#: The exit code reported for a child whose exit status nobody could learn:
#: its fork server died before it, and it did not say its exit code.
EXIT_UNKNOWN = 255

#: Seconds a fork request may take before the fork server is declared
#: broken (killed, and replaced): a healthy one answers in milliseconds.
LAUNCH_TIMEOUT = 2.0

#: Seconds a new fork server has to import and say it is ready (~0.3 s).
READY_TIMEOUT = 10.0

#: Seconds a closed fork server has to exit before SIGKILL.
STOP_TIMEOUT = 5.0

#: Restart delays after a fork server died: RESTART_INITIAL after a healthy
#: run or a first quick failure, doubling with each further quick failure
#: in a row, at most RESTART_MAX; no more restarts after GIVE_UP_AFTER
#: quick failures in a row (an explicit refresh, e.g. a reload, tries
#: again).  A run of STABLE_AFTER seconds after it was ready is healthy.
RESTART_INITIAL = 1.0
RESTART_MAX = 60.0
GIVE_UP_AFTER = 5
STABLE_AFTER = 30.0

#: The fork server's exit code when it cannot serve on this host at all (no
#: pidfd, a pre-import installed a reactor or started a thread): the
#: launcher gives up at once instead of restarting it.
EXIT_REFUSED = 3

#: The largest request (the environment is most of it) and reply; a larger
#: request is spawned instead.  Below the socket's default send buffer.
MAX_REQUEST = 64 * 1024
MAX_REPLY = 4096

#: The most descriptors one child may be given.
MAX_FDS = 64

#: The fork server's descriptors (see the module docstring).
REQUEST_FD = 3
EVENT_FD = 4

#: The report event a forked child writes as it exits (kept from the
#: listener): its exit code, for when its fork server is gone.
EXIT_NOTE = "exit-code"

_STARTUP_NAMES = frozenset({"LANG", "LC_ALL", "LC_CTYPE"})


def startupVariables(env: Mapping[str, str]) -> dict[str, str]:
    """
    The variables of C{env} that act only when an interpreter starts (so a
    forked child cannot honour them): C{PYTHON*} except C{PYTHONPATH} (which
    the fork server applies to C{sys.path}), C{LD_*}, and the locale
    variables Python reads at start-up.
    """
    return {
        k: v
        for k, v in env.items()
        if (k.startswith("PYTHON") and k != "PYTHONPATH")
        or k.startswith("LD_")
        or k in _STARTUP_NAMES
    }


class CannotFork(Exception):
    """
    A fork server cannot start this child (the launcher spawns it instead).
    """


def _reasonFromStatus(status: int) -> BaseException:
    # As twisted.internet.process._BaseProcess._getReason.
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return ProcessDone(status) if code == 0 else ProcessTerminated(code, None, status)
    return ProcessTerminated(None, os.WTERMSIG(status), status)


def _reasonFromCode(code: int) -> BaseException:
    return ProcessDone(0) if code == 0 else ProcessTerminated(code, None, None)


# --------------------------------------------------------------------------
# The manager's side
# --------------------------------------------------------------------------


@implementer(IChildListener)
class _ExitNoteFilter:
    """
    Passes every event of a forked child on to its listener, except the
    exit-code note, which it keeps in C{exitCode}.
    """

    def __init__(self, listener: IChildListener) -> None:
        self.listener = listener
        self.exitCode: Optional[int] = None

    def childStarted(self, process: Any) -> None:
        self.listener.childStarted(process)

    def childReported(self, message: dict) -> None:
        if message.get("event") == EXIT_NOTE:
            code = message.get("code")
            if isinstance(code, int) and not isinstance(code, bool):
                self.exitCode = code
            return
        self.listener.childReported(message)

    def childOutput(self, stream: str, line: str) -> None:
        self.listener.childOutput(stream, line)

    def childNotified(self, state: dict) -> None:
        self.listener.childNotified(state)

    def childExited(self, exitCode: Optional[int], signal: Optional[int]) -> None:
        self.listener.childExited(exitCode, signal)


@implementer(IReadDescriptor)
class _PidfdWatcher:
    """
    Calls C{ended()} once, when a pidfd becomes readable (its process has
    ended).
    """

    def __init__(self, reactor: Any, pidfd: int, ended: Callable[[], None]) -> None:
        self._reactor = reactor
        self._pidfd = pidfd
        self._ended = ended
        self._watching = False

    def start(self) -> None:
        self._watching = True
        self._reactor.addReader(self)

    def stop(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self)

    def fileno(self) -> int:
        return self._pidfd

    def logPrefix(self) -> str:
        return "pidfd"

    def doRead(self) -> None:
        if self._watching:
            self.stop()
            self._ended()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor is shutting down: nothing to tell anyone.
        self._watching = False


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@implementer(IProcessTransport)
class ForkedProcess:
    """
    A child forked by a L{ForkServer}, as its L{ChildProcessProtocol} sees
    it: the same transport as a spawned process's (C{pid}, pipes, signals),
    except that its exit status comes from the fork server (or from its
    pidfd, once the fork server is gone).

    @ivar pid: the pid, or L{None} once the process has been reaped.
    @ivar server: the L{ForkServer} that forked it.
    """

    def __init__(
        self,
        reactor: Any,
        proto: Any,
        pid: int,
        pidfd: int,
        note: _ExitNoteFilter,
        server: "ForkServer",
    ) -> None:
        self._reactor = reactor
        self.proto = proto
        self.pid: Optional[int] = pid
        self._pidfd: Optional[int] = pidfd
        self._note = note
        self.server = server
        self.pipes: dict[int, Any] = {}
        self.status: Optional[int] = None
        self._gone = False
        self._statusUnknown = False
        self._ended = False
        self._watcher: Optional[_PidfdWatcher] = None

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid}>"

    def _attach(self, readers: Mapping[int, int], writers: Mapping[int, int]) -> None:
        for childFD, fd in readers.items():
            self.pipes[childFD] = ProcessReader(self._reactor, self, childFD, fd)
        for childFD, fd in writers.items():
            self.pipes[childFD] = ProcessWriter(
                self._reactor, self, childFD, fd, forceReadHack=True
            )

    # IProcessTransport

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.pipes[childFD].write(data)

    def closeChildFD(self, childFD: int) -> None:
        if childFD in self.pipes:
            self.pipes[childFD].loseConnection()

    def closeStdin(self) -> None:
        # The child's stdin is a pipe whose write end was closed at once.
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def loseConnection(self) -> None:
        self.closeStdin()
        self.closeStderr()
        self.closeStdout()

    def write(self, data: bytes) -> None:
        if 0 in self.pipes:
            self.pipes[0].write(data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def getHost(self) -> Any:
        raise NotImplementedError()

    def getPeer(self) -> Any:
        raise NotImplementedError()

    def signalProcess(self, signalID: Any) -> None:
        """
        Send C{signalID} (a number, or C{"TERM"}, C{"KILL"}, C{"INT"},
        C{"HUP"}, C{"STOP"}) to this very process, through its pidfd.

        @raise ProcessExitedAlready: if it has ended.
        """
        if signalID in ("HUP", "STOP", "INT", "KILL", "TERM"):
            signalID = getattr(_signal, f"SIG{signalID}")
        if self.hasExited():
            raise ProcessExitedAlready()
        try:
            _signal.pidfd_send_signal(self._pidfd, signalID)
        except ProcessLookupError:
            raise ProcessExitedAlready() from None

    def hasExited(self) -> bool:
        """
        True once the process has ended, even before anyone reaped it or
        told us: a signal to its pid (or group) could then reach another
        process that reused the number.
        """
        return self._gone or self._pidfd is None or _readable(self._pidfd)

    # From the pipes

    def childDataReceived(self, name: int, data: bytes) -> None:
        if self.proto is not None:
            self.proto.childDataReceived(name, data)

    def childConnectionLost(self, childFD: int, reason: Failure) -> None:
        os.close(self.pipes[childFD].fileno())
        del self.pipes[childFD]
        if self.proto is not None:
            try:
                self.proto.childConnectionLost(childFD)
            except Exception:
                ForkServer.log.failure("childConnectionLost of {process} failed", process=self)
        self._maybeEnded()

    # From the fork server

    def _reaped(self, status: int) -> None:
        """
        The fork server reaped it: C{status} is its wait status.
        """
        if self._gone:
            return
        self.status = status
        self._lost()

    def _orphaned(self) -> None:
        """
        Its fork server is gone: learn of its end from its pidfd.
        """
        if self._gone:
            return
        if self.hasExited():
            self._endedUnreaped()
            return
        self._watcher = _PidfdWatcher(self._reactor, self._pidfd, self._endedUnreaped)
        self._watcher.start()

    def _endedUnreaped(self) -> None:
        self._watcher = None
        self._statusUnknown = True
        self._lost()

    def _lost(self) -> None:
        self._gone = True
        self.pid = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.proto is not None:
            try:
                self.proto.processExited(Failure(self._reason()))
            except Exception:
                ForkServer.log.failure("processExited of {process} failed", process=self)
        self._maybeEnded()

    def _reason(self) -> BaseException:
        if not self._statusUnknown:
            return _reasonFromStatus(self.status)
        if self._note.exitCode is not None:
            return _reasonFromCode(self._note.exitCode)
        return ProcessTerminated(EXIT_UNKNOWN, None, None)

    def _maybeEnded(self) -> None:
        # As Process.maybeCallProcessEnded: the process is gone and every
        # pipe closed (the exit-code note, if any, was read by then).
        if self.pipes or not self._gone or self._ended:
            return
        self._ended = True
        reason = self._reason()
        if self._statusUnknown:
            ForkServer.log.warn(
                "a child of fork server {server} ended after it; its exit code, "
                "as it said: {code}",
                server=self.server.pid,
                code=self._note.exitCode,
            )
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.processEnded(Failure(reason))


class ForkServer(ProcessProtocol):
    """
    One fork server process, as the manager sees it: starts it, forks
    children through it (L{launch}) and tells them how they exited.

    @ivar state: C{"new"}, C{"starting"} (importing), C{"ready"} (forks),
        C{"retiring"} (forks no more; closes once its last child has
        exited), C{"closing"} (told to exit), C{"broken"} (being killed:
        it failed a request or was not ready in time), or C{"gone"}.
    @ivar pid: its pid once started.
    @ivar readyAt: C{reactor.seconds()} when it became ready, or L{None}.
    @ivar children: the children it forked that have not exited, by
        request id.
    @ivar onGone: called with this server once its process is gone.
    @ivar refused: True if it exited L{EXIT_REFUSED} before it was ready:
        it cannot serve on this host.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        executable: str,
        environ: Mapping[str, str],
        *,
        launchTimeout: float = LAUNCH_TIMEOUT,
        readyTimeout: float = READY_TIMEOUT,
        stopTimeout: float = STOP_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self.executable = executable
        self.environ = dict(environ)
        self.launchTimeout = launchTimeout
        self.readyTimeout = readyTimeout
        self.stopTimeout = stopTimeout
        self.state = "new"
        self.pid: Optional[int] = None
        self.readyAt: Optional[float] = None
        self.children: dict[int, ForkedProcess] = {}
        self.onGone: Optional[Callable[["ForkServer"], Any]] = None
        self.refused = False
        self._socket: Optional[socket.socket] = None
        self._timer: Any = None
        self._nextID = 1
        self._readyWaiters: list[Deferred] = []
        self._goneWaiters: list[Deferred] = []
        self._splitters = {
            1: LineSplitter(self._output),
            2: LineSplitter(self._output),
            EVENT_FD: LineSplitter(self._event),
        }

    def __repr__(self) -> str:
        return f"<ForkServer pid={self.pid} {self.state}>"

    # Lifecycle

    def start(self) -> None:
        """
        Start the process (C{python -m dae_service.forkserver}).

        @raise OSError: if it cannot be spawned.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = self._reactor.spawnProcess(
                self,
                self.executable,
                [self.executable, "-m", "dae_service.forkserver", str(os.getpid())],
                env=self.environ,
                childFDs={0: "w", 1: "r", 2: "r", REQUEST_FD: theirs.fileno(), EVENT_FD: "r"},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket = ours
        self.pid = process.pid
        self.state = "starting"
        process.closeStdin()
        self._timer = self._reactor.callLater(self.readyTimeout, self._readyTimedOut)

    def whenReady(self) -> Deferred:
        """
        @return: a Deferred of the caller's own, firing with True once this
            server is ready, or with False if it never will be; never failing.
        """
        if self.state == "ready":
            return succeed(True)
        if self.state != "starting":
            return succeed(False)
        d: Deferred = Deferred()
        self._readyWaiters.append(d)
        return d

    def whenGone(self) -> Deferred:
        """
        @return: a Deferred of the caller's own, firing (with None) once the
            process has exited and been reaped.
        """
        if self.state == "gone":
            return succeed(None)
        d: Deferred = Deferred()
        self._goneWaiters.append(d)
        return d

    def retire(self) -> None:
        """
        Fork no more; exit once every child this server forked has exited
        (it reaps them until then).
        """
        if self.state in ("new", "starting", "ready"):
            self.state = "retiring"
            self._cancelTimer()
            self._fireReady(False)
        self._closeIfIdle()

    def close(self) -> Deferred:
        """
        Tell the process to exit (end-of-file on its request socket), and
        SIGKILL it if it has not after C{stopTimeout}; its children keep
        running.

        @return: L{whenGone}.
        """
        if self.state == "gone":
            return succeed(None)
        if self.state != "closing":
            self._fireReady(False)
            self._cancelTimer()
            self.state = "closing"
            self._closeSocket()
            self._timer = self._reactor.callLater(self.stopTimeout, self._kill, "did not exit")
        return self.whenGone()

    def _closeIfIdle(self) -> None:
        if self.state == "retiring" and not self.children:
            self.close()

    def _closeSocket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fireReady(self, ready: bool) -> None:
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(ready)

    def _readyTimedOut(self) -> None:
        self._timer = None
        self._kill(f"not ready after {self.readyTimeout:g} s")

    def _kill(self, why: str) -> None:
        """
        SIGKILL the process (it is broken); L{processEnded} follows.
        """
        self._timer = None
        self.log.error("fork server {pid} {why}: killing it", pid=self.pid, why=why)
        if self.state != "closing":
            self.state = "broken"
        self._fireReady(False)
        self._closeSocket()
        try:
            self.transport.signalProcess("KILL")
        except (ProcessExitedAlready, OSError):
            pass

    # ProcessProtocol

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        splitter = self._splitters.get(childFD)
        if splitter is not None:
            splitter.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        splitter = self._splitters.get(childFD)
        if splitter is not None:
            splitter.flush()

    def _output(self, line: bytes) -> None:
        self.log.info(
            "fork server {pid}: {line}", pid=self.pid, line=line.decode("utf-8", "replace")
        )

    def _event(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.log.warn("fork server {pid}: bad event line {line!r}", pid=self.pid, line=line[:200])
            return
        event = message.get("event")
        if event == "ready":
            self._ready(message)
        elif event == "exit":
            self._childExited(message)
        else:
            self.log.warn("fork server {pid}: unknown event {line!r}", pid=self.pid, line=line[:200])

    def _ready(self, message: dict) -> None:
        if self.state != "starting":
            return
        self._cancelTimer()
        self.state = "ready"
        self.readyAt = self._reactor.seconds()
        self.log.info(
            "fork server {pid} ready (imports took {ms} ms)",
            pid=self.pid,
            ms=message.get("importMs"),
        )
        self._fireReady(True)

    def _childExited(self, message: dict) -> None:
        process = self.children.pop(message.get("id"), None)  # type: ignore[arg-type]
        status = message.get("status")
        if process is None or not isinstance(status, int):
            self.log.warn(
                "fork server {pid}: exit of an unknown child {message!r}",
                pid=self.pid,
                message=message,
            )
            return
        process._reaped(status)
        self._closeIfIdle()

    def processEnded(self, reason: Failure) -> None:
        previous = self.state
        self.state = "gone"
        self.refused = previous == "starting" and (
            getattr(reason.value, "exitCode", None) == EXIT_REFUSED
        )
        self._cancelTimer()
        self._closeSocket()
        orphans = list(self.children.values())
        self.children.clear()
        if previous == "closing":
            self.log.info("fork server {pid} exited", pid=self.pid)
        else:
            self.log.warn(
                "fork server {pid} died ({why}); {count} children it forked keep running",
                pid=self.pid,
                why=reason.getErrorMessage(),
                count=len(orphans),
            )
        for process in orphans:
            process._orphaned()
        # The launcher first, so that waiters see it without this server.
        if self.onGone is not None:
            self.onGone(self)
        self._fireReady(False)
        waiters, self._goneWaiters = self._goneWaiters, []
        for d in waiters:
            d.callback(None)

    # Forking

    def launch(self, spec: LaunchSpec, listener: IChildListener) -> ForkedProcess:
        """
        Fork the python child C{spec} (the caller checked that it may be
        forked), reporting to C{listener}.

        @raise CannotFork: if this server cannot (it is not ready, it
            refused, or it broke: then it is killed).
        """
        if self.state != "ready":
            raise CannotFork(f"the fork server is {self.state}")
        opened: list[int] = []

        def pipe() -> tuple[int, int]:
            r, w = os.pipe()
            opened.extend((r, w))
            return r, w

        try:
            stdinR, stdinW = pipe()
            outR, outW = pipe()
            errR, errW = pipe()
            controlR, controlW = pipe()
            reportR, reportW = pipe()
            childFDs = {0: stdinR, 1: outW, 2: errW, CONTROL_FD: controlR, REPORT_FD: reportW}
            childFDs.update(spec.fds)
            requestID, pid, pidfd = self._fork(spec, childFDs)
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        # The child has its ends; we keep ours.  Its stdin reads EOF.
        for fd in (stdinR, stdinW, outW, errW, controlR, reportW):
            os.close(fd)
        note = _ExitNoteFilter(listener)
        protocol = ChildProcessProtocol(note, reportFD=REPORT_FD, name=spec.name)
        process = ForkedProcess(self._reactor, protocol, pid, pidfd, note, self)
        process._attach({1: outR, 2: errR, REPORT_FD: reportR}, {CONTROL_FD: controlW})
        self.children[requestID] = process
        protocol.makeConnection(process)
        self.log.debug(
            "forked {name} (pid {pid}) from fork server {server}",
            name=spec.name,
            pid=pid,
            server=self.pid,
        )
        return process

    def _fork(self, spec: LaunchSpec, childFDs: Mapping[int, int]) -> tuple[int, int, int]:
        """
        One synchronous request: send it, wait (at most C{launchTimeout})
        for the answer.

        @return: C{(request id, pid, pidfd)}.
        """
        if len(childFDs) > MAX_FDS:
            raise CannotFork(f"{len(childFDs)} descriptors, more than {MAX_FDS}")
        requestID = self._nextID
        self._nextID += 1
        targets = sorted(childFDs)
        header = json.dumps(
            {
                "id": requestID,
                "name": spec.name,
                "argv": list(spec.argv),
                "env": dict(spec.env),
                "cwd": spec.cwd,
                "fds": targets,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        if len(header) > MAX_REQUEST:
            raise CannotFork(f"a request of {len(header)} bytes, more than {MAX_REQUEST}")
        sock = self._socket
        assert sock is not None
        deadline = time.monotonic() + self.launchTimeout
        try:
            sock.settimeout(self.launchTimeout)
            socket.send_fds(sock, [header], [childFDs[t] for t in targets])
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data, fds, flags, _ = socket.recv_fds(sock, MAX_REPLY, 1)
        except TimeoutError:
            self._kill(f"did not answer a fork request within {self.launchTimeout:g} s")
            raise CannotFork("the fork server did not answer") from None
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise CannotFork("the request is too large for the socket") from None
            self._kill(f"failed a fork request ({e})")
            raise CannotFork(f"the fork server failed: {e}") from None
        reply = None
        try:
            reply = json.loads(data) if data else None
        except ValueError:
            pass
        if (
            not isinstance(reply, dict)
            or reply.get("id") != requestID
            or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        ):
            for fd in fds:
                os.close(fd)
            self._kill(f"answered a fork request with {data[:200]!r}")
            raise CannotFork("the fork server answered nonsense")
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise CannotFork(str(reply["error"]))
        pid = reply.get("pid")
        if not isinstance(pid, int) or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self._kill(f"answered a fork request with {data[:200]!r} and {len(fds)} descriptors")
            raise CannotFork("the fork server answered nonsense")
        os.set_inheritable(fds[0], False)
        return requestID, pid, fds[0]


@implementer(ILauncher)
class ForkServerLauncher(Service):
    """
    An L{ILauncher} that forks python daemon children from a L{ForkServer}
    and spawns everything else (and everything while no fork server is
    ready) with C{fallback}.  A service: L{startService} starts the fork
    server, L{stopService} stops every fork server (call it once every
    child has exited: running children are orphaned otherwise).

    @ivar server: the current L{ForkServer}, or L{None} (none yet, or
        between a death and its restart, or given up).
    @ivar quickFailures: fork servers in a row that died soon after start.
    @ivar gaveUp: True once restarts stopped (L{refresh} tries again).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        environ: Optional[Mapping[str, str]] = None,
        executable: Optional[str] = None,
        fallback: Any = None,
        launchTimeout: float = LAUNCH_TIMEOUT,
        readyTimeout: float = READY_TIMEOUT,
        stopTimeout: float = STOP_TIMEOUT,
        restartInitial: float = RESTART_INITIAL,
        restartMax: float = RESTART_MAX,
        giveUpAfter: int = GIVE_UP_AFTER,
        stableAfter: float = STABLE_AFTER,
        serverFactory: Optional[Callable[..., ForkServer]] = None,
    ) -> None:
        """
        @param reactor: an L{IReactorProcess}, L{IReactorTime} and
            L{IReactorFDSet}.
        @param environ: the environment the fork server starts from (the
            manager's; by default C{os.environ}): C{DAE_SECRET} and the
            systemd variables are dropped, C{PYTHONPATH} made this
            process's C{sys.path}, C{DAE_PID} set.
        @param executable: the python to run; by default C{sys.executable}.
            Only specs naming this very python are forked.
        @param fallback: the L{ILauncher} for what is not forked, and whose
            C{signal} is used for every child; by default a
            L{SpawnLauncher}.
        @param serverFactory: makes a L{ForkServer} from the same arguments
            (for tests).
        """
        self._reactor = reactor
        self._environ = dict(os.environ if environ is None else environ)
        self.executable = sys.executable if executable is None else executable
        self.fallback = SpawnLauncher(reactor) if fallback is None else fallback
        self.launchTimeout = launchTimeout
        self.readyTimeout = readyTimeout
        self.stopTimeout = stopTimeout
        self.restartInitial = restartInitial
        self.restartMax = restartMax
        self.giveUpAfter = giveUpAfter
        self.stableAfter = stableAfter
        self._serverFactory = ForkServer if serverFactory is None else serverFactory
        self.server: Optional[ForkServer] = None
        self.quickFailures = 0
        self.gaveUp = False
        self._servers: list[ForkServer] = []
        self._restartTimer: Any = None
        self._serverEnviron: Optional[dict[str, str]] = None

    # The fork server's environment

    def serverEnvironment(self) -> dict[str, str]:
        """
        The environment a fork server starts with (see C{environ}).
        """
        if self._serverEnviron is None:
            from .sdnotify import SYSTEMD_VARIABLES

            env = {
                k: v
                for k, v in self._environ.items()
                if k != "DAE_SECRET" and k not in SYSTEMD_VARIABLES
            }
            paths = [p for p in sys.path if p]
            if env.get("PYTHONPATH"):
                paths.append(env["PYTHONPATH"])
            env["PYTHONPATH"] = os.pathsep.join(paths)
            # Shown by /proc/<pid>/environ of the fork server and of every
            # child it forks: they are this manager's.
            env["DAE_PID"] = str(os.getpid())
            self._serverEnviron = env
        return self._serverEnviron

    def forkable(self, spec: LaunchSpec) -> bool:
        """
        Can C{spec} be forked from a fork server, rather than spawned?  Only
        a python child run by our python, whose start-up variables
        (L{startupVariables}) are the fork server's.
        """
        return (
            spec.kind == "python"
            and tuple(spec.argv) == (self.executable, "-m", CHILD_MODULE)
            and startupVariables(spec.env) == startupVariables(self.serverEnvironment())
        )

    # Service

    def startService(self) -> None:
        super().startService()
        self._startServer()

    def stopService(self) -> Deferred:
        """
        Close every fork server.

        @return: a Deferred firing once their processes are gone.
        """
        super().stopService()
        self._cancelRestart()
        self.server = None
        closing = [server.close() for server in list(self._servers)]
        return DeferredList(closing).addCallback(lambda _: None)

    def whenReady(self) -> Deferred:
        """
        @return: a Deferred of the caller's own, firing (with None) once
            python children are forked, or once they will not be for now
            (the fork server failed to start); at once when no fork server
            is starting.  It never fails.
        """
        server = self.server
        if server is None or server.state != "starting":
            return succeed(None)
        return server.whenReady().addCallback(lambda _: None)

    def refresh(self) -> Deferred:
        """
        Start a new fork server (with the code now on disk); the current one
        forks no more and exits once its last child has exited.  Also
        clears a give-up.

        @return: L{whenReady} of the new one.
        """
        if not self.running:
            return succeed(None)
        self._cancelRestart()
        old, self.server = self.server, None
        if old is not None:
            old.retire()
        self.quickFailures = 0
        self.gaveUp = False
        self._startServer()
        return self.whenReady()

    def _cancelRestart(self) -> None:
        if self._restartTimer is not None and self._restartTimer.active():
            self._restartTimer.cancel()
        self._restartTimer = None

    def _startServer(self) -> None:
        self._restartTimer = None
        server = self._serverFactory(
            self._reactor,
            self.executable,
            self.serverEnvironment(),
            launchTimeout=self.launchTimeout,
            readyTimeout=self.readyTimeout,
            stopTimeout=self.stopTimeout,
        )
        server.onGone = self._serverGone
        try:
            server.start()
        except Exception:
            self.log.failure("cannot start a fork server")
            self._failed(server)
            return
        self.server = server
        self._servers.append(server)

    def _serverGone(self, server: ForkServer) -> None:
        if server in self._servers:
            self._servers.remove(server)
        if server is not self.server:
            return  # retired or stopped
        self.server = None
        if self.running:
            self._failed(server)

    def _failed(self, server: ForkServer) -> None:
        healthy = (
            server.readyAt is not None
            and self._reactor.seconds() - server.readyAt >= self.stableAfter
        )
        self.quickFailures = 0 if healthy else self.quickFailures + 1
        if server.refused:
            self.gaveUp = True
            self.log.error(
                "the fork server cannot run on this host (see its log lines above): "
                "python daemons are spawned"
            )
            return
        if self.quickFailures >= self.giveUpAfter:
            self.gaveUp = True
            self.log.error(
                "{count} fork servers in a row failed soon after starting: python daemons "
                "are spawned from now on (a reload tries again)",
                count=self.quickFailures,
            )
            return
        delay = min(self.restartMax, self.restartInitial * 2 ** max(0, self.quickFailures - 1))
        self.log.warn(
            "no fork server: python daemons are spawned; starting a new one in {delay:g} s",
            delay=delay,
        )
        self._restartTimer = self._reactor.callLater(delay, self._startServer)

    # ILauncher

    def launch(self, spec: LaunchSpec, listener: IChildListener) -> Any:
        """
        Fork C{spec} from the fork server if it is ready and C{spec} is
        L{forkable}; else start it with C{fallback}.

        @raise OSError: as L{SpawnLauncher.launch}.
        """
        server = self.server
        if server is not None and server.state == "ready" and self.forkable(spec):
            try:
                return server.launch(spec, listener)
            except CannotFork as e:
                self.log.warn(
                    "{name}: cannot fork it ({error}); spawning it", name=spec.name, error=e
                )
        return self.fallback.launch(spec, listener)

    def signal(self, process: Any, signalName: Any) -> None:
        """
        As L{SpawnLauncher.signal} (the child's process group, else the
        child), except that a forked child known to have ended is left
        alone: its pid may be another process's by now.
        """
        if isinstance(process, ForkedProcess) and process.hasExited():
            return
        self.fallback.signal(process, signalName)


# --------------------------------------------------------------------------
# The fork server's side: python -m dae_service.forkserver <manager pid>
# --------------------------------------------------------------------------

#: What a child imports before its daemon's own module, imported once by the
#: fork server.  Not twisted.internet.reactor: importing it installs a
#: reactor, which a forked child must create for itself.
PREIMPORTS = (
    "twisted.internet.default",
    "twisted.internet.epollreactor",
    "twisted.internet.task",
    "twisted.internet.endpoints",
    "twisted.internet.tcp",
    "twisted.internet.unix",
    "twisted.internet.ssl",
    "twisted.application.service",
    "twisted.logger",
    "twisted.plugin",
    "dae_service.child",
    "dae_service.daemon",
    "dae_service.loader",
    "dae_service.server",
    "dae_service.protocol",
    "dae_service.workerport",
    "dae_service.tls",
)

_EOF = object()


def _say(message: str) -> None:
    """
    One log line on the fork server's stderr (the manager logs it).
    """
    try:
        os.write(2, (message.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _threadCount() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _pythonPathEntries(env: Mapping[str, str]) -> list[str]:
    """
    What C{env}'s C{PYTHONPATH} adds to C{sys.path} at start-up (absolute;
    an empty entry is the working directory).
    """
    value = env.get("PYTHONPATH", "")
    if not value:
        return []
    return [os.path.abspath(p) if p else os.getcwd() for p in value.split(os.pathsep)]


def _basePath() -> list[str]:
    """
    The part of C{sys.path} a python started now would have whatever its
    C{PYTHONPATH} and working directory (the standard library, site
    packages and their C{.pth} entries): asked of such a python, once per
    fork server (~20 ms), since this process's own C{PYTHONPATH} (the
    manager's C{sys.path}) hides which entries are which.  If that fails,
    this process's C{sys.path} less its working directory.
    """
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys, json; sys.stdout.write(json.dumps(sys.path))"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        path = json.loads(out)
        if not (isinstance(path, list) and all(isinstance(p, str) for p in path)):
            raise ValueError("not a list of strings")
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        _say(f"dae fork server: cannot learn the default sys.path ({e}); using ours")
        return sys.path[0 if sys.flags.safe_path else 1 :]
    # With -c, the first entry is the working directory's ('').
    return path[0 if sys.flags.safe_path else 1 :]


class _ServerLoop:
    """
    The fork server's loop: fork on request, reap, report.  One thread, no
    reactor: C{poll} on the request socket and a wake-up pipe for SIGCHLD;
    events for the manager are queued and written without blocking.
    """

    def __init__(self, requests: socket.socket, eventFD: int) -> None:
        self.requests = requests
        self.eventFD = eventFD
        self.requestIDs: dict[int, int] = {}
        self.outgoing = b""
        self.wakeR, self.wakeW = os.pipe()

    def event(self, message: Mapping[str, Any]) -> None:
        self.outgoing += (json.dumps(message, separators=(",", ":")) + "\n").encode()

    def flush(self) -> bool:
        """
        Write what is queued, as much as the pipe takes.

        @return: False if the manager closed the pipe.
        """
        while self.outgoing:
            try:
                written = os.write(self.eventFD, self.outgoing)
            except BlockingIOError:
                return True
            except OSError:
                return False
            self.outgoing = self.outgoing[written:]
        return True

    def run(self, importMs: int) -> Any:
        """
        Serve until the manager closes the request socket (then return
        L{None}); in a forked child, return C{(request, fds)}.
        """
        for fd in (self.wakeR, self.wakeW, self.eventFD):
            os.set_blocking(fd, False)
        # A handler, not SIG_IGN (which would reap by itself): its only
        # effect is the byte on the wake-up pipe.
        _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)
        _signal.set_wakeup_fd(self.wakeW, warn_on_full_buffer=False)
        self.event({"event": "ready", "pid": os.getpid(), "importMs": importMs})
        poller = select.poll()
        poller.register(self.requests.fileno(), select.POLLIN)
        poller.register(self.wakeR, select.POLLIN)
        watchingEvents = False
        while True:
            if not self.flush():
                return None
            if bool(self.outgoing) != watchingEvents:
                watchingEvents = bool(self.outgoing)
                if watchingEvents:
                    poller.register(self.eventFD, select.POLLOUT)
                else:
                    poller.unregister(self.eventFD)
            for fd, _ in poller.poll():
                if fd == self.wakeR:
                    try:
                        while os.read(self.wakeR, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif fd == self.requests.fileno():
                    outcome = self.serveOne()
                    if outcome is _EOF:
                        return None
                    if outcome is not None:
                        return outcome

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            requestID = self.requestIDs.pop(pid, None)
            if requestID is not None:
                self.event({"event": "exit", "id": requestID, "pid": pid, "status": status})

    def reply(self, message: Mapping[str, Any], fds: list = ()) -> bool:
        data = json.dumps(message, separators=(",", ":")).encode()
        try:
            socket.send_fds(self.requests, [data], list(fds))
        except OSError:
            return False
        return True

    def serveOne(self) -> Any:
        try:
            data, fds, flags, _ = socket.recv_fds(self.requests, MAX_REQUEST, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return _EOF
        if not data and not fds:
            return _EOF
        requestID = None
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            requestID = request.get("id")
            _checkRequest(request, fds, flags)
            if _threadCount() != 1:
                raise ValueError("the fork server has more than one thread")
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            pid = os.fork()
        except (ValueError, OSError) as e:
            for fd in fds:
                os.close(fd)
            return None if self.reply({"id": requestID, "error": str(e)}) else _EOF
        if pid == 0:
            return request, fds
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            os.kill(pid, _signal.SIGKILL)
            return None if self.reply({"id": requestID, "error": f"pidfd_open: {e}"}) else _EOF
        # Before it could be reaped (we reap only in this loop), so the
        # pidfd names this very process.
        self.requestIDs[pid] = requestID
        try:
            sent = self.reply({"id": requestID, "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)
        return None if sent else _EOF


def _checkRequest(request: dict, fds: list, flags: int) -> None:
    """
    @raise ValueError: if C{request} (with C{fds} received) is not a fork
        request this server carries out.
    """
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise ValueError("truncated request")
    if not isinstance(request.get("id"), int):
        raise ValueError("no request id")
    argv = request.get("argv")
    if not (isinstance(argv, list) and argv[1:] == ["-m", CHILD_MODULE]):
        raise ValueError(f"only -m {CHILD_MODULE} is forked, not {argv!r}")
    env = request.get("env")
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise ValueError("env must map names to strings")
    if not isinstance(request.get("name"), str):
        raise ValueError("no name")
    if request.get("cwd") is not None and not isinstance(request["cwd"], str):
        raise ValueError("cwd must be a string")
    targets = request.get("fds")
    if not (
        isinstance(targets, list)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in targets)
        and len(set(targets)) == len(targets) == len(fds)
        and set(range(REPORT_FD + 1)) <= set(targets)
    ):
        raise ValueError(f"descriptors {targets!r} do not match the {len(fds)} received")


def _arrangeDescriptors(targets: list[int], fds: list[int]) -> None:
    """
    Make the received C{fds} the descriptors C{targets} (in order) and close
    every other one.
    """
    import fcntl

    base = max(targets) + 1
    # First above every target, so that no dup2 overwrites a source.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, base) for fd in fds]
    for target, fd in zip(targets, moved):
        os.dup2(fd, target)
    for fd in range(base):
        if fd not in targets:
            try:
                os.close(fd)
            except OSError:
                pass
    os.closerange(base, max(base + 1, os.sysconf("SC_OPEN_MAX")))


def _setName(name: str) -> None:
    """
    The process's name in C{/proc/<pid>/comm} (C{top}, C{ps -o comm}):
    C{dae:<daemon name>}, cut to 15 bytes.  Its command line stays the fork
    server's.
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, (f"dae:{name}".encode("utf-8"))[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _becomeChild(loop: _ServerLoop, request: dict, fds: list, basePath: list[str]) -> None:
    """
    In a forked child: shed the fork server, become the daemon C{request}
    describes.  Never returns: exits as a spawned child would.
    """
    arranged = False
    try:
        # First: a session and process group of our own, as a spawned
        # child's first act; killpg(pid) reaches us from now on.
        os.setsid()
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        # The socket object must not close descriptor 3 (ours, soon) later.
        loop.requests.detach()
        _arrangeDescriptors(request["fds"], fds)
        arranged = True
        os.environ.clear()
        os.environ.update(request["env"])
        if request["cwd"] is not None:
            os.chdir(request["cwd"])
        entries = [] if sys.flags.safe_path else [os.getcwd()]
        entries += _pythonPathEntries(os.environ) + basePath
        sys.path[:] = list(dict.fromkeys(entries))
        import importlib
        import random

        importlib.invalidate_caches()
        random.seed()
        time.tzset()
        _setName(request["name"])
    except BaseException as e:
        # Before the daemon's code runs: say why, as a spawned child whose
        # set-up failed would, and go.
        from dae_service.child import EX_FAILURE

        why = f"cannot start {request.get('name')!r} in a forked child: {e}"
        _say(f"dae fork server: {why}")
        if arranged:
            report = json.dumps({"event": "failed", "error": why[:1000]}) + "\n"
            try:
                os.write(REPORT_FD, report.encode())
            except OSError:
                pass
        os._exit(EX_FAILURE)
    _runChild()


def _runChild() -> None:
    """
    L{dae_service.child.run} without its parent-death signal (our parent is
    the fork server: see the module docstring), and with the exit-code
    note on the report pipe.
    """
    from twisted.internet import task
    from twisted.logger import globalLogBeginner

    from dae_service import child

    sys.argv = [child.__file__]
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    globalLogBeginner.beginLoggingTo(
        [child._textLineObserver(sys.stderr)], redirectStandardIO=False
    )
    try:
        task.react(child._reactMain, (os.environ, list(sys.argv)))
    except SystemExit as e:
        code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            code = 1
        note = json.dumps({"event": EXIT_NOTE, "code": code}) + "\n"
        try:
            os.write(int(os.environ.get("DAE_REPORT_FD") or REPORT_FD), note.encode())
        except (OSError, ValueError):
            pass
        raise


def main(argv: list[str]) -> int:
    """
    The fork server: C{python -m dae_service.forkserver <manager pid>}, with
    the request socket as descriptor 3 and the event pipe as 4.  Returns
    its exit code; in a forked child, never returns.
    """
    from dae_service.child import setParentDeathSignal

    managerPid = int(argv[1])
    try:
        os.setsid()  # no terminal signals: the manager stops us
    except OSError:
        pass
    setParentDeathSignal(_signal.SIGTERM)
    if os.getppid() != managerPid:
        _say("dae fork server: the manager is gone already")
        return 1
    started = time.perf_counter()
    import importlib

    for name in PREIMPORTS:
        try:
            importlib.import_module(name)
        except ImportError as e:
            _say(f"dae fork server: cannot pre-import {name}: {e}")
    if "twisted.internet.reactor" in sys.modules:
        _say("dae fork server: a pre-import installed a reactor; refusing to fork")
        return EXIT_REFUSED
    if _threadCount() != 1:
        _say("dae fork server: pre-imports started threads; refusing to fork")
        return EXIT_REFUSED
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as e:
        _say(f"dae fork server: no pidfd on this system (Linux 5.3+ needed): {e}")
        return EXIT_REFUSED
    importMs = round((time.perf_counter() - started) * 1000)
    basePath = _basePath()
    requests = socket.socket(fileno=REQUEST_FD)
    requests.setblocking(True)
    loop = _ServerLoop(requests, EVENT_FD)
    import gc

    # What is imported now stays out of the collector's way in every child
    # (fewer copy-on-write page copies).
    gc.freeze()
    forked = loop.run(importMs)
    if forked is None:
        return 0
    request, fds = forked
    _becomeChild(loop, request, fds, basePath)
    return 1  # not reached: _becomeChild exits


if __name__ == "__main__":
    sys.exit(main(sys.argv))
