"""
Tests for L{dae_service.launcher}: specs, line splitting and the process
protocol on fakes, then a few real children.
"""

from __future__ import annotations

import json
import operator
import os
import signal
import stat
import sys
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import dae_service
from dae_service import launcher
from dae_service.interfaces import IChildListener, ILauncher
from dae_service.launcher import (
    CONTROL_FD,
    MAX_LINE_LENGTH,
    REPORT_FD,
    WRAPPER,
    ChildProcessProtocol,
    FakeLauncher,
    FakeProcess,
    LaunchSpec,
    LineSplitter,
    SpawnLauncher,
    commandChildSpec,
    pythonChildSpec,
)
from dae_service.procnet import listeningPorts

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dae_service.__file__)))


def childEnvironment() -> dict[str, str]:
    """
    Our environment, with the project importable by a child.
    """
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PROJECT_ROOT + (os.pathsep + path if path else "")
    return env


@implementer(IChildListener)
class RecordingListener:
    """
    An L{IChildListener} that records every event as a tuple in C{events}
    and lets a test wait for a report or the exit.
    """

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._reportWaiters: list[Deferred] = []
        self._exitWaiters: list[Deferred] = []
        self._outputWaiters: list[tuple[Any, Deferred]] = []
        self.exited: Optional[tuple] = None

    def childStarted(self, process: Any) -> None:
        self.events.append(("started", process))

    def childReported(self, message: dict) -> None:
        self.events.append(("reported", message))
        waiters, self._reportWaiters = self._reportWaiters, []
        for d in waiters:
            d.callback(message)

    def childOutput(self, stream: str, line: str) -> None:
        self.events.append(("output", stream, line))
        for entry in list(self._outputWaiters):
            predicate, d = entry
            if predicate(stream, line):
                self._outputWaiters.remove(entry)
                d.callback(line)

    def childNotified(self, state: dict) -> None:
        self.events.append(("notified", state))

    def childExited(self, exitCode: Optional[int], signal: Optional[int]) -> None:
        self.events.append(("exited", exitCode, signal))
        self.exited = (exitCode, signal)
        waiters, self._exitWaiters = self._exitWaiters, []
        for d in waiters:
            d.callback(self.exited)

    def whenReported(self) -> Deferred:
        d: Deferred = Deferred()
        self._reportWaiters.append(d)
        return d

    def whenExited(self) -> Deferred:
        d: Deferred = Deferred()
        if self.exited is not None:
            d.callback(self.exited)
        else:
            self._exitWaiters.append(d)
        return d

    def whenOutput(self, predicate: Any) -> Deferred:
        d: Deferred = Deferred()
        self._outputWaiters.append((predicate, d))
        return d

    def lines(self, stream: str) -> list[str]:
        return [e[2] for e in self.events if e[0] == "output" and e[1] == stream]


class SpecTests(SynchronousTestCase):
    """
    L{LaunchSpec}, L{pythonChildSpec} and L{commandChildSpec}.
    """

    def test_specIsFrozenWithReadOnlyCopies(self) -> None:
        """
        A spec keeps argv as a tuple and a read-only copy of env.
        """
        env = {"A": "1"}
        spec = LaunchSpec(name="x", argv=["prog", "-v"], env=env)
        env["A"] = "2"
        self.assertEqual(spec.argv, ("prog", "-v"))
        self.assertEqual(spec.env["A"], "1")
        self.assertRaises(TypeError, operator.setitem, spec.env, "A", "3")
        self.assertEqual((spec.cwd, spec.kind), (None, "command"))

    def test_specRejectsBadKindAndEmptyArgv(self) -> None:
        """
        The kind is C{"python"} or C{"command"}; argv is not empty.
        """
        self.assertRaises(ValueError, LaunchSpec, name="x", argv=("a",), env={}, kind="java")
        self.assertRaises(ValueError, LaunchSpec, name="x", argv=(), env={})

    def test_pythonChildSpec(self) -> None:
        """
        A python child runs C{sys.executable -m dae_service.child} with its
        description in C{DAE_CHILD} and the manager's identity in C{DAE},
        C{DAE_PID}, C{DAE_PORT}.
        """
        env = {"PATH": "/bin", "HOME": "/root"}
        spec = pythonChildSpec(
            "store",
            "pkg.mod:Store",
            "tcp:0:interface=127.0.0.1",
            settings={"size": 3},
            maxLength=1000,
            env=env,
            cwd="/srv",
            managerPid=42,
            managerPort=7000,
        )
        self.assertEqual(spec.argv, (sys.executable, "-m", "dae_service.child"))
        self.assertEqual((spec.kind, spec.cwd, spec.name), ("python", "/srv", "store"))
        self.assertEqual(
            json.loads(spec.env["DAE_CHILD"]),
            {
                "name": "store",
                "reference": "pkg.mod:Store",
                "listen": "tcp:0:interface=127.0.0.1",
                "settings": {"size": 3},
                "maxLength": 1000,
            },
        )
        self.assertEqual(spec.env["DAE"], "store")
        self.assertEqual(spec.env["DAE_PID"], "42")
        self.assertEqual(spec.env["DAE_PORT"], "7000")
        self.assertEqual(spec.env["DAE_CONTROL_FD"], str(CONTROL_FD))
        self.assertEqual(spec.env["DAE_REPORT_FD"], str(REPORT_FD))
        self.assertEqual(spec.env["PATH"], "/bin")
        self.assertEqual(env, {"PATH": "/bin", "HOME": "/root"})

    def test_pythonChildSpecDefaults(self) -> None:
        """
        Without a manager port C{DAE_PORT} is empty; the pid defaults to
        ours; no settings is an empty table and C{maxLength} null.
        """
        spec = pythonChildSpec("e", "m:E", "tcp:0", env={})
        self.assertEqual(spec.env["DAE_PORT"], "")
        self.assertEqual(spec.env["DAE_PID"], str(os.getpid()))
        description = json.loads(spec.env["DAE_CHILD"])
        self.assertEqual((description["settings"], description["maxLength"]), ({}, None))

    def test_noSecretInTheEnvironment(self) -> None:
        """
        C{DAE_SECRET} inherited from the manager's environment is not passed
        on, to either kind of child.
        """
        env = {"DAE_SECRET": "s3cret", "X": "1"}
        python = pythonChildSpec("e", "m:E", "tcp:0", env=env)
        command = commandChildSpec("c", ["prog"], env=env)
        for spec in (python, command):
            self.assertNotIn("DAE_SECRET", spec.env)
            self.assertNotIn("s3cret", "".join(spec.env.values()))
            self.assertEqual(spec.env["X"], "1")

    def test_commandChildSpec(self) -> None:
        """
        A foreign command is kept as given; C{NOTIFY_SOCKET} is set only when
        a socket is given; there are no control/report variables.
        """
        spec = commandChildSpec(
            "redis", ["redis-server", "--port", "0"], env={}, managerPid=9, notifySocket="/run/n"
        )
        self.assertEqual(spec.argv, ("redis-server", "--port", "0"))
        self.assertEqual(spec.kind, "command")
        self.assertEqual(spec.env["NOTIFY_SOCKET"], "/run/n")
        self.assertEqual((spec.env["DAE"], spec.env["DAE_PID"]), ("redis", "9"))
        self.assertNotIn("DAE_REPORT_FD", spec.env)
        plain = commandChildSpec("redis", ["redis-server"], env={})
        self.assertNotIn("NOTIFY_SOCKET", plain.env)


class LineSplitterTests(SynchronousTestCase):
    """
    L{LineSplitter} framing.
    """

    def split(self, chunks: list[bytes], maxLength: int = MAX_LINE_LENGTH, flush=True):
        lines: list[bytes] = []
        splitter = LineSplitter(lines.append, maxLength)
        for chunk in chunks:
            splitter.feed(chunk)
        if flush:
            splitter.flush()
        return lines

    def test_lines(self) -> None:
        """
        Lines end at C{\\n}, which is dropped with one C{\\r} before it.
        """
        self.assertEqual(
            self.split([b"a\nb\r\n\nc\r\r\n"]), [b"a", b"b", b"", b"c\r"]
        )

    def test_acrossChunks(self) -> None:
        """
        A line may arrive in many pieces, and a C{\\r\\n} split between two.
        """
        self.assertEqual(self.split([b"he", b"llo\r", b"\nwor", b"ld\n"]), [b"hello", b"world"])

    def test_flushDeliversThePartialLine(self) -> None:
        """
        A last line without a line end waits for C{flush}, which is
        idempotent.
        """
        lines: list[bytes] = []
        splitter = LineSplitter(lines.append)
        splitter.feed(b"one\ntwo")
        self.assertEqual(lines, [b"one"])
        splitter.flush()
        splitter.flush()
        self.assertEqual(lines, [b"one", b"two"])

    def test_longLineIsCut(self) -> None:
        """
        A line longer than the limit comes in pieces of at most the limit,
        whether it arrives whole or bit by bit.
        """
        self.assertEqual(self.split([b"abcdefghij\n"], 4), [b"abcd", b"efgh", b"ij"])
        self.assertEqual(
            self.split([b"abc", b"def", b"ghij", b"\n"], 4), [b"abcd", b"efgh", b"ij"]
        )

    def test_boundedBuffer(self) -> None:
        """
        Output that never ends a line is passed on as it comes, never held
        beyond the limit.
        """
        lines = self.split([b"x" * 10] * 3, 8, flush=False)
        self.assertEqual(lines, [b"x" * 8] * 3)
        self.assertEqual(self.split([b"x" * (3 * MAX_LINE_LENGTH + 5)]),
                         [b"x" * MAX_LINE_LENGTH] * 3 + [b"x" * 5])

    def test_exactLimit(self) -> None:
        """
        A line of exactly the limit is delivered whole.
        """
        self.assertEqual(self.split([b"abcd", b"\nef\n"], 4), [b"abcd", b"ef"])

    def test_cutBetweenCharacters(self) -> None:
        """
        A cut backs off to the start of a UTF-8 character rather than split
        it.
        """
        text = "ab\u20ac\u20ac".encode("utf-8")  # 2 + 3 + 3 bytes
        lines = self.split([text + b"\n"], 4)
        self.assertEqual(lines, [b"ab", "\u20ac".encode(), "\u20ac".encode()])


class FakeProcessTransport(FakeProcess):
    """
    A transport for L{ChildProcessProtocol} unit tests.
    """

    def __init__(self) -> None:
        super().__init__(77, LaunchSpec(name="x", argv=("x",), env={}), None)  # type: ignore


class ChildProcessProtocolTests(SynchronousTestCase):
    """
    L{ChildProcessProtocol} fed directly.
    """

    def setUp(self) -> None:
        self.listener = RecordingListener()
        self.protocol = ChildProcessProtocol(self.listener)
        self.transport = FakeProcessTransport()
        self.protocol.makeConnection(self.transport)

    def test_listenerIsAChildListener(self) -> None:
        """
        The recording listener used here provides L{IChildListener}.
        """
        verifyObject(IChildListener, self.listener)

    def test_started(self) -> None:
        """
        Connecting tells the listener the child started, with the
        transport.
        """
        self.assertEqual(self.listener.events, [("started", self.transport)])

    def test_output(self) -> None:
        """
        fds 1 and 2 become decoded C{stdout}/C{stderr} lines; bytes that are
        not UTF-8 are replaced.
        """
        self.protocol.childDataReceived(1, b"out 1\nout")
        self.protocol.childDataReceived(2, b"err \xff\r\n")
        self.protocol.childDataReceived(1, b" 2\n")
        self.assertEqual(self.listener.lines("stdout"), ["out 1", "out 2"])
        self.assertEqual(self.listener.lines("stderr"), ["err \ufffd"])

    def test_reports(self) -> None:
        """
        Each line of fd 4 is a JSON object given to C{childReported}.
        """
        self.protocol.childDataReceived(REPORT_FD, b'{"event":"ready","port":')
        self.protocol.childDataReceived(REPORT_FD, b'5}\n{"event":"x"}\n')
        reports = [e[1] for e in self.listener.events if e[0] == "reported"]
        self.assertEqual(reports, [{"event": "ready", "port": 5}, {"event": "x"}])

    def test_badReportLogged(self) -> None:
        """
        A report line that is not a JSON object with an C{event} is logged
        and skipped; later lines still count.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for bad in (b"not json", b"[1, 2]", b'{"port": 1}', b'{"event": 3}'):
            self.protocol.childDataReceived(REPORT_FD, bad + b"\n")
        self.protocol.childDataReceived(REPORT_FD, b'\n{"event":"ok"}\n')
        reports = [e[1] for e in self.listener.events if e[0] == "reported"]
        self.assertEqual(reports, [{"event": "ok"}])
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 4)
        self.assertEqual(warnings[0]["line"], b"not json")

    def test_ignoresOtherDescriptors(self) -> None:
        """
        Data on a descriptor it does not know is dropped.
        """
        self.protocol.childDataReceived(9, b"x\n")
        self.assertEqual(len(self.listener.events), 1)

    def test_commandHasNoReportChannel(self) -> None:
        """
        Without a report fd, fd 4 is not read as reports.
        """
        protocol = ChildProcessProtocol(self.listener, reportFD=None)
        protocol.childDataReceived(REPORT_FD, b'{"event":"ready"}\n')
        self.assertEqual(len(self.listener.events), 1)

    def test_exitAfterFlushing(self) -> None:
        """
        When the process ends, partial last lines are delivered first, then
        C{childExited(0, None)} for a clean exit; only once.
        """
        self.protocol.childDataReceived(1, b"last words")
        self.protocol.childDataReceived(REPORT_FD, b'{"event":"bye"}')
        self.protocol.processEnded(Failure(ProcessDone(0)))
        self.protocol.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(
            self.listener.events[1:],
            [("output", "stdout", "last words"), ("reported", {"event": "bye"}), ("exited", 0, None)],
        )

    def test_pipeClosedFlushes(self) -> None:
        """
        A pipe closing delivers its partial line at once.
        """
        self.protocol.childDataReceived(2, b"partial")
        self.protocol.childConnectionLost(2)
        self.assertEqual(self.listener.lines("stderr"), ["partial"])
        self.protocol.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(self.listener.lines("stderr"), ["partial"])

    def test_exitCodeAndSignal(self) -> None:
        """
        A non-zero exit gives its code; death by a signal its number.
        """
        self.protocol.processEnded(Failure(ProcessTerminated(exitCode=3)))
        self.assertEqual(self.listener.exited, (3, None))
        other = RecordingListener()
        protocol = ChildProcessProtocol(other)
        protocol.makeConnection(FakeProcessTransport())
        protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.assertEqual(other.exited, (None, signal.SIGKILL))

    def test_listenerErrorsAreContained(self) -> None:
        """
        An exception from the listener is logged, not raised into the
        reactor (which would close the child's pipe).
        """

        def broken(stream: str, line: str) -> None:
            raise RuntimeError("bug")

        self.listener.childOutput = broken  # type: ignore[method-assign]
        self.protocol.childDataReceived(1, b"a\nb\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


@implementer(IProcessTransport)
class SpawnedProcess(FakeProcess):
    """
    What the recording reactor returns.
    """


class RecordingProcessReactor:
    """
    Records C{spawnProcess} calls; connects the protocol to a fake process.
    """

    def __init__(self) -> None:
        self.spawned: list[dict] = []

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None,
                     uid=None, gid=None, usePTY=False, childFDs=None):
        process = SpawnedProcess(500 + len(self.spawned), None, None)  # type: ignore
        self.spawned.append(dict(protocol=protocol, executable=executable, args=args,
                                 env=env, path=path, childFDs=childFDs, process=process))
        protocol.makeConnection(process)
        return process


class SpawnLauncherUnitTests(SynchronousTestCase):
    """
    L{SpawnLauncher} against a recording reactor.
    """

    def setUp(self) -> None:
        self.reactor = RecordingProcessReactor()
        self.launcher = SpawnLauncher(self.reactor)
        self.listener = RecordingListener()

    def test_interface(self) -> None:
        """
        L{SpawnLauncher} provides L{ILauncher}.
        """
        verifyObject(ILauncher, self.launcher)

    def test_python(self) -> None:
        """
        A python child gets stdio plus the control and report pipes, the
        spec's environment (a plain dict) and cwd; its stdin is closed at
        once and the listener hears it started.
        """
        spec = pythonChildSpec("e", "m:E", "tcp:0", env={"PATH": "/bin"}, cwd="/tmp")
        process = self.launcher.launch(spec, self.listener)
        call = self.reactor.spawned[0]
        self.assertIs(call["process"], process)
        self.assertEqual(call["executable"], sys.executable)
        self.assertEqual(call["args"], [sys.executable, "-m", "dae_service.child"])
        self.assertEqual(call["childFDs"], {0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        self.assertEqual(call["env"], dict(spec.env))
        self.assertIsInstance(call["env"], dict)
        self.assertEqual(call["path"], "/tmp")
        self.assertEqual(process.closedFDs, [0])
        self.assertEqual(self.listener.events, [("started", process)])

    def test_commandThroughWrapper(self) -> None:
        """
        A foreign command runs as C{python -S -c WRAPPER <our pid>
        <executable> <argv...>} with stdio only; the executable is found on
        the spec environment's C{PATH}.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        program = os.path.join(directory, "myserver")
        with open(program, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(program, stat.S_IRWXU)
        spec = commandChildSpec("s", ["myserver", "--port", "0"], env={"PATH": directory})
        self.launcher.launch(spec, self.listener)
        call = self.reactor.spawned[0]
        self.assertEqual(call["executable"], sys.executable)
        self.assertEqual(
            call["args"],
            [sys.executable, "-S", "-c", WRAPPER, str(os.getpid()), program,
             "myserver", "--port", "0"],
        )
        self.assertEqual(call["childFDs"], {0: "w", 1: "r", 2: "r"})

    def test_missingExecutable(self) -> None:
        """
        An executable not on the child's C{PATH} raises
        L{FileNotFoundError} and spawns nothing.
        """
        spec = commandChildSpec("s", ["no-such-program-here"], env={"PATH": self.mktemp()})
        self.assertRaises(FileNotFoundError, self.launcher.launch, spec, self.listener)
        relative = commandChildSpec("s", ["./nothing"], env={}, cwd=self.mktemp())
        self.assertRaises(FileNotFoundError, self.launcher.launch, relative, self.listener)
        self.assertEqual(self.reactor.spawned, [])

    def test_signalGroup(self) -> None:
        """
        C{signal} sends the signal to the process group named by the pid.
        """
        sent = []
        self.patch(launcher.os, "killpg", lambda pid, sig: sent.append((pid, sig)))
        process = FakeProcess(321, None, None)  # type: ignore[arg-type]
        self.launcher.signal(process, "TERM")
        self.launcher.signal(process, "SIGKILL")
        self.launcher.signal(process, signal.SIGHUP)
        self.assertEqual(sent, [(321, signal.SIGTERM), (321, signal.SIGKILL), (321, signal.SIGHUP)])
        self.assertEqual(process.signals, [])

    def test_signalFallsBackToTheProcess(self) -> None:
        """
        Without a group of its own (yet), the child alone is signalled.
        """
        for error in (ProcessLookupError, PermissionError):

            def killpg(pid: int, sig: int, error=error) -> None:
                raise error()

            self.patch(launcher.os, "killpg", killpg)
            process = FakeProcess(321, None, None)  # type: ignore[arg-type]
            self.launcher.signal(process, "TERM")
            self.assertEqual(process.signals, [signal.SIGTERM])

    def test_signalAGoneChild(self) -> None:
        """
        Signalling a child that is gone (reaped, or exiting) is not an
        error.
        """

        def killpg(pid: int, sig: int) -> None:
            raise ProcessLookupError()

        self.patch(launcher.os, "killpg", killpg)
        process = FakeProcess(321, None, None)  # type: ignore[arg-type]
        process.pid = None
        self.launcher.signal(process, "TERM")

        class Gone(FakeProcess):
            def signalProcess(self, signalID: Any) -> None:
                raise ProcessExitedAlready()

        self.launcher.signal(Gone(5, None, None), "KILL")  # type: ignore[arg-type]

    def test_unknownSignal(self) -> None:
        """
        An unknown signal name is a L{ValueError}.
        """
        process = FakeProcess(321, None, None)  # type: ignore[arg-type]
        self.assertRaises(ValueError, self.launcher.signal, process, "NOPE")


class FakeLauncherTests(SynchronousTestCase):
    """
    L{FakeLauncher}, the supervisor tests' launcher.
    """

    def setUp(self) -> None:
        self.launcher = FakeLauncher()
        self.listener = RecordingListener()
        self.spec = commandChildSpec("c", ["prog"], env={})

    def test_interfaces(self) -> None:
        """
        It provides L{ILauncher}; its processes L{IProcessTransport}.
        """
        verifyObject(ILauncher, self.launcher)
        process = self.launcher.launch(self.spec, self.listener)
        verifyObject(IProcessTransport, process)

    def test_launchRecords(self) -> None:
        """
        Each launch records its spec, starts a process with the next pid,
        closes its stdin and tells the listener.
        """
        first = self.launcher.launch(self.spec, self.listener)
        second = self.launcher.launch(self.spec, self.listener)
        self.assertEqual((first.pid, second.pid), (1000, 1001))
        self.assertEqual(self.launcher.specs, [self.spec, self.spec])
        self.assertEqual(first.closedFDs, [0])
        self.assertEqual(self.listener.events, [("started", first), ("started", second)])

    def test_playTheChild(self) -> None:
        """
        The helpers deliver reports, output, notifications and the exit.
        """
        process = self.launcher.launch(self.spec, self.listener)
        self.launcher.ready(0, port=4000, created=5)
        self.launcher.report(-1, {"event": "other"})
        self.launcher.output(0, "hello")
        self.launcher.output(0, "oops", stream="stderr")
        self.launcher.notify(0, {"READY": "1"})
        self.launcher.exit(0, signal=signal.SIGTERM)
        self.assertEqual(
            self.listener.events[1:],
            [
                ("reported", {"event": "ready", "pid": 1000, "port": 4000, "created": 5}),
                ("reported", {"event": "other"}),
                ("output", "stdout", "hello"),
                ("output", "stderr", "oops"),
                ("notified", {"READY": "1"}),
                ("exited", None, signal.SIGTERM),
            ],
        )
        self.assertIsNone(process.pid)

    def test_exitArguments(self) -> None:
        """
        No code nor signal means code 0; both, or exiting twice, is a
        mistake in the test.
        """
        self.launcher.launch(self.spec, self.listener)
        self.launcher.launch(self.spec, self.listener)
        self.assertRaises(ValueError, self.launcher.exit, 0, exitCode=1, signal=9)
        self.launcher.exit(0)
        self.assertEqual(self.listener.exited, (0, None))
        self.assertRaises(ValueError, self.launcher.exit, 0)
        self.launcher.exit(1, exitCode=3)
        self.assertEqual(self.listener.exited, (3, None))

    def test_signals(self) -> None:
        """
        Signals are recorded on the process, and ignored once it exited.
        """
        process = self.launcher.launch(self.spec, self.listener)
        self.launcher.signal(process, "TERM")
        self.launcher.signal(process, "KILL")
        self.launcher.exit(0, signal=9)
        self.launcher.signal(process, "KILL")
        self.assertEqual(process.signals, ["TERM", "KILL"])

    def test_launchError(self) -> None:
        """
        C{launchError} makes launches fail with it.
        """
        self.launcher.launchError = FileNotFoundError(2, "no such executable")
        self.assertRaises(FileNotFoundError, self.launcher.launch, self.spec, self.listener)
        self.assertEqual(self.launcher.processes, [])


def _killIfAlive(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _LineClient(Protocol):
    def __init__(self) -> None:
        self.received = Deferred()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\n" in self._buffer and not self.received.called:
            self.received.callback(self._buffer)


class RealChildTests(TestCase):
    """
    L{SpawnLauncher} starting real children.
    """

    timeout = 20

    def setUp(self) -> None:
        self.launcher = SpawnLauncher(reactor)
        self.listener = RecordingListener()
        self.process: Any = None

    def tearDown(self) -> Any:
        # Never leave a child behind, even when a test fails.
        if self.process is not None and self.listener.exited is None:
            self.launcher.signal(self.process, "KILL")
            return self.listener.whenExited()
        return None

    def launchEcho(self, reference: str = "dae_service.examples.echo:Echo") -> Deferred:
        spec = pythonChildSpec(
            "echo", reference, "tcp:0:interface=127.0.0.1", env=childEnvironment()
        )
        reported = self.listener.whenReported()
        self.process = self.launcher.launch(spec, self.listener)
        return reported

    @inlineCallbacks
    def test_echoChild(self):
        """
        A python child reports C{ready} with its pid and port, answers on
        that port, runs in a process group of its own and exits 0 on
        SIGTERM to its group.
        """
        ready = yield self.launchEcho()
        self.assertEqual(ready["event"], "ready")
        self.assertEqual(ready["pid"], self.process.pid)
        self.assertIsInstance(ready["created"], int)
        self.assertEqual(os.getpgid(self.process.pid), self.process.pid)
        self.assertEqual(os.getsid(self.process.pid), self.process.pid)

        client = _LineClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ready["port"])
        yield connectProtocol(endpoint, client)
        client.transport.write(b'echo ["x"]\n')
        reply = yield client.received
        self.assertEqual(reply, b'echo ["x"]\n')
        client.transport.loseConnection()

        self.launcher.signal(self.process, "TERM")
        exited = yield self.listener.whenExited()
        self.assertEqual(exited, (0, None))
        self.assertTrue(
            any("listening on" in line for line in self.listener.lines("stderr")),
            self.listener.lines("stderr"),
        )

    @inlineCallbacks
    def test_controlEOFStopsTheChild(self):
        """
        Closing the control pipe (what the manager's death does) makes the
        child stop by itself and exit 0.
        """
        yield self.launchEcho()
        self.process.closeChildFD(CONTROL_FD)
        exited = yield self.listener.whenExited()
        self.assertEqual(exited, (0, None))

    @inlineCallbacks
    def test_badReference(self):
        """
        A reference that cannot be imported gives a one-line C{failed}
        report and exit code 78.
        """
        failed = yield self.launchEcho("no.such.module:Nothing")
        self.assertEqual(failed["event"], "failed")
        self.assertIn("no.such", failed["error"])
        self.assertNotIn("\n", failed["error"])
        exited = yield self.listener.whenExited()
        self.assertEqual(exited, (78, None))

    @inlineCallbacks
    def test_foreignCommand(self):
        """
        A foreign command runs through the wrapper in a group of its own;
        its output is captured, and the port it listens on is found from
        its own sockets.
        """
        script = (
            "import socket, sys\n"
            "s = socket.socket()\n"
            "s.bind(('127.0.0.1', 0))\n"
            "s.listen()\n"
            "print('port', s.getsockname()[1], flush=True)\n"
            "print('to stderr', file=sys.stderr, flush=True)\n"
            "sys.stdin.read()\n"  # EOF at once: our stdin is closed
            "import signal; signal.pause()\n"
        )
        spec = commandChildSpec("foreign", [sys.executable, "-c", script], env=childEnvironment())
        printed = self.listener.whenOutput(lambda stream, line: line.startswith("port "))
        self.process = self.launcher.launch(spec, self.listener)
        line = yield printed
        port = int(line.split()[1])
        self.assertEqual(listeningPorts(self.process.pid), {port})
        self.assertEqual(os.getpgid(self.process.pid), self.process.pid)
        self.launcher.signal(self.process, "TERM")
        exited = yield self.listener.whenExited()
        self.assertEqual(exited, (None, signal.SIGTERM))
        self.assertIn("to stderr", self.listener.lines("stderr"))

    @inlineCallbacks
    def test_foreignCommandExitCode(self):
        """
        A foreign command's exit code comes through the wrapper unchanged.
        """
        spec = commandChildSpec("f", [sys.executable, "-c", "raise SystemExit(7)"], env={})
        self.process = self.launcher.launch(spec, self.listener)
        exited = yield self.listener.whenExited()
        self.assertEqual(exited, (7, None))

    @inlineCallbacks
    def test_wrapperChecksItsParent(self):
        """
        The wrapper does not run the command when its parent is not the one
        it was told (the parent died before PDEATHSIG was set).
        """
        args = [sys.executable, "-S", "-c", WRAPPER, "1", sys.executable,
                "python", "-c", "print('ran')"]
        protocol = ChildProcessProtocol(self.listener, reportFD=None)
        reactor.spawnProcess(protocol, sys.executable, args, env={})
        exited = yield self.listener.whenExited()
        self.assertEqual(exited, (launcher.WRAPPER_ORPHANED, None))
        self.assertEqual(self.listener.lines("stdout"), [])

    @inlineCallbacks
    def test_orphanGetsSIGTERM(self):
        """
        A command started by the wrapper gets SIGTERM when the process that
        started it dies: here a middle process starts it and exits; the
        command's end (it shares our stdout pipe) shows it is gone.
        """
        middle = (
            "import os, subprocess, sys\n"
            "wrapper, command = sys.argv[1], sys.argv[2:]\n"
            "args = [sys.executable, '-S', '-c', wrapper, str(os.getpid()), command[0], *command]\n"
            "child = subprocess.Popen(args, stdin=subprocess.DEVNULL)\n"
            "print(child.pid, flush=True)\n"
            "sys.stdin.read()\n"
            "os._exit(0)\n"
        )
        pause = [sys.executable, "-c", "import signal; signal.pause()"]

        class Middle(ProcessProtocol):
            def __init__(self) -> None:
                self.output = b""
                self.printed = Deferred()
                self.ended = Deferred()

            def outReceived(self, data: bytes) -> None:
                self.output += data
                if b"\n" in self.output and not self.printed.called:
                    self.printed.callback(int(self.output.split()[0]))

            def processEnded(self, reason: Failure) -> None:
                self.ended.callback(None)

        protocol = Middle()
        process = reactor.spawnProcess(
            protocol, sys.executable, [sys.executable, "-c", middle, WRAPPER, *pause], env={}
        )
        grandchild = yield protocol.printed
        self.addCleanup(_killIfAlive, grandchild)
        process.closeStdin()
        # processEnded waits for every holder of the stdout pipe: the
        # grandchild too.  Without PDEATHSIG this would time out.
        yield protocol.ended
