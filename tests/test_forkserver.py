"""
Tests for L{dae_service.forkserver}: which specs are forked and the
launcher's restart policy on fakes, then real fork servers forking real
children, then real C{twistd -n dae} trees with C{launcher = "forkserver"}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from dae_service import Daemon
from dae_service.forkserver import (
    EXIT_UNKNOWN,
    ForkedProcess,
    ForkServerLauncher,
    startupVariables,
)
from dae_service.interfaces import ILauncher
from dae_service.launcher import (
    CONTROL_FD,
    FakeLauncher,
    LaunchSpec,
    commandChildSpec,
    pythonChildSpec,
)
from dae_service.pool import bindListeningSocket
from tests.test_launcher import RecordingListener, _LineClient, childEnvironment
from tests.twistdtree import (
    TwistdTree,
    processState,
    until,
    waitForProcessesGone,
    withTimeout,
)

ECHO = "dae_service.examples.echo:Echo"
LISTEN = "tcp:0:interface=127.0.0.1"


class Printer(Daemon):
    """
    Prints two lines on stdout and one on stderr as it starts (forked
    children run it: see L{ForkServerTests.test_output}).
    """

    def startService(self) -> None:
        print("first line")
        print(f"FORK_TEST={os.environ.get('FORK_TEST')} in {os.getcwd()}")
        print("to stderr", file=sys.stderr, flush=True)
        super().startService()


def parentOf(pid: int) -> Optional[int]:
    """
    The parent pid of process C{pid}, from C{/proc}; None if it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def pythonSpec(reference: str = ECHO, **kwargs: Any) -> LaunchSpec:
    return pythonChildSpec("echo", reference, LISTEN, env=childEnvironment(), **kwargs)


def exits(listener: RecordingListener) -> list:
    return [e for e in listener.events if e[0] == "exited"]


class ForkableTests(SynchronousTestCase):
    """
    Which specs go to the fork server: python children of our python whose
    start-up variables are the fork server's.
    """

    def setUp(self) -> None:
        self.environ = {"PATH": "/bin", "LANG": "C.UTF-8", "PYTHONPATH": "/x"}
        self.launcher = ForkServerLauncher(Clock(), environ=self.environ)

    def spec(self, **env: str) -> LaunchSpec:
        return pythonChildSpec("d", ECHO, LISTEN, env=dict(self.environ, **env))

    def test_startupVariables(self) -> None:
        """
        C{PYTHON*} but C{PYTHONPATH}, C{LD_*}, C{LANG}, C{LC_ALL} and
        C{LC_CTYPE} act at start-up only.
        """
        env = {
            "PYTHONPATH": "/a", "PYTHONHASHSEED": "0", "LD_PRELOAD": "x.so", "LANG": "C",
            "LC_ALL": "C", "LC_CTYPE": "C", "LC_TIME": "C", "PATH": "/bin", "HOME": "/h",
        }
        self.assertEqual(
            startupVariables(env),
            {"PYTHONHASHSEED": "0", "LD_PRELOAD": "x.so", "LANG": "C", "LC_ALL": "C",
             "LC_CTYPE": "C"},
        )

    def test_pythonChildIsForkable(self) -> None:
        """
        A python child spec with the manager's environment is forked, also
        with another C{PYTHONPATH} or other ordinary variables.
        """
        self.assertTrue(self.launcher.forkable(self.spec()))
        self.assertTrue(self.launcher.forkable(self.spec(PYTHONPATH="/y", FOO="1")))

    def test_startupVariableDiffers(self) -> None:
        """
        A spec whose start-up variables differ from the fork server's is
        spawned: a forked child could not honour them.
        """
        self.assertFalse(self.launcher.forkable(self.spec(PYTHONWARNINGS="error")))
        self.assertFalse(self.launcher.forkable(self.spec(LANG="de_DE.UTF-8")))
        spec = self.spec()
        env = dict(spec.env)
        del env["LANG"]
        self.assertFalse(self.launcher.forkable(LaunchSpec("d", spec.argv, env, kind="python")))

    def test_otherCommandsAreSpawned(self) -> None:
        """
        Foreign commands and python specs that run something else, or
        another python, are not forked.
        """
        environ = self.environ
        self.assertFalse(self.launcher.forkable(commandChildSpec("c", ["node", "d.js"], env=environ)))
        other = LaunchSpec("d", ("/usr/bin/python3", "-m", "dae_service.child"), environ, kind="python")
        self.assertFalse(self.launcher.forkable(other))
        module = LaunchSpec("d", (sys.executable, "-m", "other.module"), environ, kind="python")
        self.assertFalse(self.launcher.forkable(module))

    def test_serverEnvironment(self) -> None:
        """
        The fork server starts from the given environment less secrets and
        systemd's variables, with our C{sys.path} (then the environment's
        C{PYTHONPATH}) and C{DAE_PID}.
        """
        launcher = ForkServerLauncher(
            Clock(), environ={"A": "1", "DAE_SECRET": "s", "NOTIFY_SOCKET": "/n", "PYTHONPATH": "/x"}
        )
        env = launcher.serverEnvironment()
        self.assertEqual(env["A"], "1")
        self.assertNotIn("DAE_SECRET", env)
        self.assertNotIn("NOTIFY_SOCKET", env)
        self.assertEqual(env["PYTHONPATH"].split(os.pathsep)[-1], "/x")
        self.assertIn(sys.path[1], env["PYTHONPATH"].split(os.pathsep))
        self.assertEqual(env["DAE_PID"], str(os.getpid()))


class FakeServer:
    """
    A L{dae_service.forkserver.ForkServer} that never runs: a test says when
    it is ready or gone.
    """

    nextPid = 5000

    def __init__(self, reactor: Any, executable: str, environ: dict, **timeouts: Any) -> None:
        self.reactor = reactor
        self.state = "new"
        self.pid: Optional[int] = None
        self.readyAt: Optional[float] = None
        self.onGone: Any = None
        self.children: dict = {}
        self.launched: list = []
        self._ready: list[Deferred] = []
        self.startError: Optional[Exception] = None
        self.refused = False

    def start(self) -> None:
        if self.startError is not None:
            raise self.startError
        self.pid = FakeServer.nextPid
        FakeServer.nextPid += 1
        self.state = "starting"

    def whenReady(self) -> Deferred:
        if self.state != "starting":
            return succeed(self.state == "ready")
        d: Deferred = Deferred()
        self._ready.append(d)
        return d

    def becomeReady(self) -> None:
        self.state = "ready"
        self.readyAt = self.reactor.seconds()
        for d in self._ready:
            d.callback(True)

    def die(self) -> None:
        self.state = "gone"
        for d in self._ready:
            d.callback(False)
        self.onGone(self)

    def retire(self) -> None:
        self.state = "retiring"

    def close(self) -> Deferred:
        self.state = "closing"
        return succeed(None)

    def launch(self, spec: LaunchSpec, listener: Any) -> Any:
        self.launched.append(spec)
        return "forked"


class LauncherPolicyTests(SynchronousTestCase):
    """
    L{ForkServerLauncher} on a fake clock with fake fork servers: what is
    forked when, restarts with backoff, give-up, refresh, stop.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.servers: list[FakeServer] = []
        self.fallback = FakeLauncher()

        def factory(*args: Any, **kwargs: Any) -> FakeServer:
            server = FakeServer(*args, **kwargs)
            self.servers.append(server)
            return server

        self.launcher = ForkServerLauncher(
            self.clock, environ={"PATH": "/bin"}, fallback=self.fallback,
            restartInitial=1.0, restartMax=5.0, giveUpAfter=3, stableAfter=30.0,
            serverFactory=factory,
        )
        self.spec = pythonChildSpec("d", ECHO, LISTEN, env=self.launcher.serverEnvironment())

    def test_interface(self) -> None:
        """
        It is an L{ILauncher}.
        """
        self.assertTrue(verifyObject(ILauncher, self.launcher))

    def test_spawnsUntilReady(self) -> None:
        """
        Starting the service starts a fork server; until it is ready,
        launches are spawned and L{whenReady} waits; then they are forked.
        """
        self.launcher.startService()
        self.assertEqual([s.state for s in self.servers], ["starting"])
        ready = self.launcher.whenReady()
        self.assertNoResult(ready)
        self.launcher.launch(self.spec, RecordingListener())
        self.assertEqual(len(self.fallback.processes), 1)
        self.servers[0].becomeReady()
        self.assertIsNone(self.successResultOf(ready))
        self.assertEqual(self.launcher.launch(self.spec, RecordingListener()), "forked")
        self.assertEqual(len(self.fallback.processes), 1)
        command = commandChildSpec("c", ["prog"], env={})
        self.launcher.launch(command, RecordingListener())
        self.assertEqual(self.fallback.specs[-1], command)

    def test_whenReadyWhenItDies(self) -> None:
        """
        L{whenReady} fires (never fails) when the fork server dies before it
        is ready: the daemons are spawned instead.
        """
        self.launcher.startService()
        ready = self.launcher.whenReady()
        self.servers[0].die()
        self.assertIsNone(self.successResultOf(ready))
        self.assertIsNone(self.launcher.server)
        self.assertIsNone(self.successResultOf(self.launcher.whenReady()))

    def test_restartBackoffAndGiveUp(self) -> None:
        """
        A fork server that dies soon after it was ready is replaced after
        C{restartInitial}, doubling for each quick failure in a row; after
        C{giveUpAfter} of them there is no fork server any more and every
        launch is spawned.
        """
        self.launcher.startService()
        delays = []
        for attempt in range(3):
            server = self.servers[-1]
            server.becomeReady()
            self.clock.advance(1)
            server.die()
            if attempt == 2:
                break
            call = self.clock.getDelayedCalls()[0]
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0])
        self.assertTrue(self.launcher.gaveUp)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.servers), 3)
        self.launcher.launch(self.spec, RecordingListener())
        self.assertEqual(len(self.fallback.processes), 1)

    def test_healthyRunResetsTheCount(self) -> None:
        """
        A fork server that served longer than C{stableAfter} is replaced
        after C{restartInitial}, its failure count reset.
        """
        self.launcher.startService()
        self.servers[0].becomeReady()
        self.clock.advance(1)
        self.servers[0].die()
        self.clock.advance(1)
        self.servers[1].becomeReady()
        self.clock.advance(60)
        self.servers[1].die()
        self.assertEqual(self.launcher.quickFailures, 0)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 1.0)

    def test_refusedGivesUpAtOnce(self) -> None:
        """
        A fork server that cannot run on this host at all (it exited
        L{EXIT_REFUSED}: no pidfd, say) is not restarted.
        """
        self.launcher.startService()
        self.servers[0].refused = True
        self.servers[0].die()
        self.assertTrue(self.launcher.gaveUp)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.servers), 1)

    def test_startErrorIsAQuickFailure(self) -> None:
        """
        A fork server that cannot even be spawned counts as a quick failure.
        """
        def factory(*args: Any, **kwargs: Any) -> FakeServer:
            server = FakeServer(*args, **kwargs)
            server.startError = OSError("no")
            self.servers.append(server)
            return server

        self.launcher._serverFactory = factory
        self.launcher.startService()
        self.assertIsNone(self.launcher.server)
        self.assertEqual(self.launcher.quickFailures, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_refresh(self) -> None:
        """
        L{refresh} retires the current fork server, starts a new one, and
        clears a give-up.
        """
        self.launcher.startService()
        self.launcher.gaveUp = True
        first = self.servers[0]
        first.becomeReady()
        ready = self.launcher.refresh()
        self.assertEqual(first.state, "retiring")
        self.assertIs(self.launcher.server, self.servers[1])
        self.assertFalse(self.launcher.gaveUp)
        self.assertNoResult(ready)
        self.servers[1].becomeReady()
        self.successResultOf(ready)
        # The retired one's death is no failure.
        first.die()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(self.launcher.server, self.servers[1])

    def test_stopService(self) -> None:
        """
        Stopping closes every fork server and cancels a pending restart; a
        death after that restarts nothing.
        """
        self.launcher.startService()
        self.servers[0].becomeReady()
        self.launcher.refresh()
        self.successResultOf(self.launcher.stopService())
        self.assertEqual([s.state for s in self.servers], ["closing", "closing"])
        self.servers[1].die()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.launcher.launch(self.spec, RecordingListener())
        self.assertEqual(len(self.fallback.processes), 1)

    def test_signalAGoneForkedChild(self) -> None:
        """
        C{signal} leaves a forked child that has ended alone (its pid may be
        reused), and passes any other process to the fallback's C{signal}.
        """
        process = ForkedProcess(self.clock, None, 4242, None, None, None)  # type: ignore[arg-type]
        self.launcher.signal(process, "KILL")
        other = self.fallback.launch(self.spec, RecordingListener())
        self.launcher.signal(other, "TERM")
        self.assertEqual(other.signals, ["TERM"])


class ForkServerTests(TestCase):
    """
    A real fork server forking real children.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.launcher = ForkServerLauncher(
            reactor, environ=childEnvironment(), restartInitial=0.05
        )
        self.launcher.startService()
        self.addCleanup(self.launcher.stopService)
        self.children: list = []
        yield self.launcher.whenReady()
        self.assertEqual(self.launcher.server.state, "ready")

    def tearDown(self) -> Any:
        # Never leave a child behind, even when a test fails.
        waits = []
        for process, listener in self.children:
            if listener.exited is None:
                pid = process.pid
                if pid is not None:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                waits.append(listener.whenExited())
        if waits:
            return withTimeout(gatherResults(waits), 10, reactor, "children to exit")
        return None

    def launch(self, spec: LaunchSpec) -> tuple:
        listener = RecordingListener()
        reported = listener.whenReported()
        process = self.launcher.launch(spec, listener)
        self.children.append((process, listener))
        return process, listener, reported

    @inlineCallbacks
    def echoes(self, port: int):
        client = _LineClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(b'echo ["x"]\n')
        reply = yield client.received
        client.transport.loseConnection()
        self.assertEqual(reply, b'echo ["x"]\n')

    @inlineCallbacks
    def test_echoChild(self):
        """
        A python child is forked by the fork server (its parent), reports
        C{ready} with its pid and port, answers on that port, leads a
        session and process group of its own, and exits 0 on SIGTERM to its
        group, reported once.
        """
        process, listener, reported = self.launch(pythonSpec())
        self.assertIsInstance(process, ForkedProcess)
        self.assertTrue(verifyObject(IProcessTransport, process))
        self.assertEqual(listener.events[0], ("started", process))
        ready = yield reported
        self.assertEqual((ready["event"], ready["pid"]), ("ready", process.pid))
        self.assertEqual(parentOf(process.pid), self.launcher.server.pid)
        self.assertEqual(os.getpgid(process.pid), process.pid)
        self.assertEqual(os.getsid(process.pid), process.pid)
        with open(f"/proc/{process.pid}/comm") as f:
            self.assertEqual(f.read().strip(), "dae:echo")
        yield self.echoes(ready["port"])
        self.launcher.signal(process, "TERM")
        exited = yield listener.whenExited()
        self.assertEqual(exited, (0, None))
        self.assertEqual(len(exits(listener)), 1)
        self.assertIsNone(process.pid)
        self.assertTrue(
            any("listening on" in line for line in listener.lines("stderr")),
            listener.lines("stderr"),
        )

    @inlineCallbacks
    def test_sigkill(self):
        """
        SIGKILL to a forked child is reported as C{(None, SIGKILL)}, once,
        and a signal after that is sent to no one.
        """
        process, listener, reported = self.launch(pythonSpec())
        yield reported
        pid = process.pid
        self.launcher.signal(process, "KILL")
        exited = yield listener.whenExited()
        self.assertEqual(exited, (None, signal.SIGKILL))
        self.assertEqual(len(exits(listener)), 1)
        self.assertIsNone(processState(pid), "not reaped by the fork server")
        self.launcher.signal(process, "KILL")
        self.assertRaises(ProcessExitedAlready, process.signalProcess, "KILL")

    @inlineCallbacks
    def test_controlEOFStopsTheChild(self):
        """
        Closing the control pipe (what the manager's death does) makes a
        forked child stop by itself and exit 0.
        """
        process, listener, reported = self.launch(pythonSpec())
        yield reported
        process.closeChildFD(CONTROL_FD)
        exited = yield listener.whenExited()
        self.assertEqual(exited, (0, None))

    @inlineCallbacks
    def test_drainCommand(self):
        """
        A control command written with C{writeToChild} (the pool's drain)
        reaches the forked child.
        """
        process, listener, reported = self.launch(pythonSpec())
        yield reported
        draining = listener.whenReported()
        line = json.dumps({"command": "drain", "deadline": time.time() + 5}) + "\n"
        process.writeToChild(CONTROL_FD, line.encode())
        self.assertEqual((yield draining), {"event": "draining"})
        self.assertEqual((yield listener.whenExited()), (0, None))

    @inlineCallbacks
    def test_output(self):
        """
        What a forked child prints on stdout and stderr arrives line by
        line, and its environment, working directory and C{sys.path} are
        the spec's.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        env = childEnvironment()
        env["FORK_TEST"] = "yes"
        spec = pythonChildSpec(
            "printer", "tests.test_forkserver:Printer", LISTEN, env=env, cwd=directory
        )
        process, listener, reported = self.launch(spec)
        yield reported
        self.assertEqual(
            listener.lines("stdout"), ["first line", f"FORK_TEST=yes in {directory}"]
        )
        self.assertIn("to stderr", listener.lines("stderr"))
        self.assertEqual(os.readlink(f"/proc/{process.pid}/cwd"), directory)
        self.launcher.signal(process, "TERM")
        self.assertEqual((yield listener.whenExited()), (0, None))

    @inlineCallbacks
    def test_poolSocket(self):
        """
        A pool worker's listening socket is passed as descriptor 5: the
        forked worker serves on it.
        """
        sock = bindListeningSocket(LISTEN)
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        process, listener, reported = self.launch(
            pythonSpec(poolSocket=sock.fileno(), worker=0)
        )
        ready = yield reported
        self.assertEqual(ready["port"], port)
        yield self.echoes(port)
        self.launcher.signal(process, "TERM")
        self.assertEqual((yield listener.whenExited()), (0, None))

    @inlineCallbacks
    def test_badReference(self):
        """
        A reference that cannot be imported gives a one-line C{failed}
        report and exit code 78.
        """
        process, listener, reported = self.launch(pythonSpec("no.such.module:Nothing"))
        self.assertIsInstance(process, ForkedProcess)
        failed = yield reported
        self.assertEqual(failed["event"], "failed")
        self.assertIn("no.such", failed["error"])
        self.assertEqual((yield listener.whenExited()), (78, None))
        self.assertEqual([e[1]["event"] for e in listener.events if e[0] == "reported"], ["failed"])

    @inlineCallbacks
    def test_badWorkingDirectory(self):
        """
        A working directory that does not exist: a C{failed} report saying
        so and exit code 1, as when a spawned child cannot start.
        """
        process, listener, reported = self.launch(pythonSpec(cwd="/no/such/directory"))
        failed = yield reported
        self.assertEqual(failed["event"], "failed")
        self.assertIn("/no/such/directory", failed["error"])
        self.assertEqual((yield listener.whenExited()), (1, None))

    @inlineCallbacks
    def test_foreignCommandIsSpawned(self):
        """
        A foreign command goes through the fallback L{SpawnLauncher}: our
        child, its exit code reported as ever.
        """
        spec = commandChildSpec(
            "f", [sys.executable, "-c", "import os; print(os.getppid()); raise SystemExit(7)"],
            env={},
        )
        listener = RecordingListener()
        process = self.launcher.launch(spec, listener)
        self.children.append((process, listener))
        self.assertNotIsInstance(process, ForkedProcess)
        self.assertEqual((yield listener.whenExited()), (7, None))

    @inlineCallbacks
    def test_startupVariableIsSpawned(self):
        """
        A python child with its own C{PYTHONWARNINGS} is spawned, and runs.
        """
        spec = pythonChildSpec(
            "echo", ECHO, LISTEN, env=dict(childEnvironment(), PYTHONWARNINGS="ignore")
        )
        process, listener, reported = self.launch(spec)
        self.assertNotIsInstance(process, ForkedProcess)
        ready = yield reported
        self.assertEqual(parentOf(ready["pid"]), os.getpid())
        self.launcher.signal(process, "TERM")
        self.assertEqual((yield listener.whenExited()), (0, None))

    @inlineCallbacks
    def test_forkServerKilled(self):
        """
        Children outlive their fork server.  Once it is gone, their end is
        still reported once: the exit code they said as they exited, or
        L{EXIT_UNKNOWN} for one killed by a signal.  A new fork server
        takes over.
        """
        a, aListener, aReported = self.launch(pythonSpec())
        b, bListener, bReported = self.launch(pythonSpec())
        aReady = yield aReported
        yield bReported
        server = self.launcher.server
        gone = server.whenGone()
        os.kill(server.pid, signal.SIGKILL)
        yield gone
        self.assertIsNot(self.launcher.server, server)
        self.assertIsNone(aListener.exited)
        yield self.echoes(aReady["port"])

        self.launcher.signal(a, "TERM")
        self.assertEqual((yield aListener.whenExited()), (0, None))
        self.launcher.signal(b, "KILL")
        self.assertEqual((yield bListener.whenExited()), (EXIT_UNKNOWN, None))
        self.assertEqual((len(exits(aListener)), len(exits(bListener))), (1, 1))

        # The restart comes after a delay, and no event says so: poll.
        yield until(
            lambda: self.launcher.server is not None and self.launcher.server.state == "ready",
            timeout=10,
        )
        c, cListener, cReported = self.launch(pythonSpec())
        self.assertIsInstance(c, ForkedProcess)
        yield cReported
        self.assertEqual(parentOf(c.pid), self.launcher.server.pid)
        self.launcher.signal(c, "TERM")
        self.assertEqual((yield cListener.whenExited()), (0, None))

    @inlineCallbacks
    def test_refresh(self):
        """
        After L{refresh}, new children come from the new fork server; the
        old one still reaps the children it forked and exits after the
        last.
        """
        a, aListener, aReported = self.launch(pythonSpec())
        yield aReported
        old = self.launcher.server
        yield self.launcher.refresh()
        new = self.launcher.server
        self.assertNotEqual(new.pid, old.pid)
        self.assertEqual(old.state, "retiring")
        b, bListener, bReported = self.launch(pythonSpec())
        yield bReported
        self.assertEqual(parentOf(b.pid), new.pid)
        self.assertEqual(parentOf(a.pid), old.pid)
        gone = old.whenGone()
        self.launcher.signal(a, "KILL")
        self.assertEqual((yield aListener.whenExited()), (None, signal.SIGKILL))
        yield gone
        self.launcher.signal(b, "TERM")
        self.assertEqual((yield bListener.whenExited()), (0, None))

    @inlineCallbacks
    def test_launchBeforeReadyIsSpawned(self):
        """
        While a fork server is starting, children are spawned; stopping the
        launcher ends the fork server (reaped).
        """
        launcher = ForkServerLauncher(reactor, environ=childEnvironment())
        launcher.startService()
        self.addCleanup(launcher.stopService)
        listener = RecordingListener()
        process = launcher.launch(pythonSpec(), listener)
        self.children.append((process, listener))
        self.assertNotIsInstance(process, ForkedProcess)
        yield launcher.whenReady()
        server = launcher.server
        self.assertEqual(server.state, "ready")
        process.closeChildFD(CONTROL_FD)
        self.assertEqual((yield listener.whenExited()), (0, None))
        yield launcher.stopService()
        self.assertEqual(server.state, "gone")
        self.assertIsNone(processState(server.pid))


STORE = {"daemon": "dae_service.examples.store:Store", "listen": LISTEN}


class ForkServerTreeTests(TestCase):
    """
    A real C{twistd -n dae} tree with C{launcher = "forkserver"}.
    """

    timeout = 30

    @inlineCallbacks
    def test_killedDaemonComesBack(self):
        """
        The daemons are forked by one fork server, a child of the manager;
        a daemon killed with SIGKILL comes back ready with a new pid, forked
        again; SIGTERM to the manager stops everything, the fork server too.
        """
        tree = TwistdTree(
            self, {"store": STORE, "echo": {"daemon": ECHO}}, dae={"launcher": "forkserver"}
        )
        entries = yield tree.start()
        old = entries["store"]
        server = parentOf(old["pid"])
        self.assertEqual(parentOf(server), tree.pid)
        self.assertEqual(parentOf(entries["echo"]["pid"]), server)
        os.kill(old["pid"], signal.SIGKILL)
        new = yield tree.waitForEntry(
            "store",
            lambda e: e["state"] == "ready" and e["pid"] != old["pid"],
            what="store back with a new pid",
        )
        self.assertEqual(new["restarts"], old["restarts"] + 1)
        self.assertEqual(parentOf(new["pid"]), server)
        self.assertIsNone(processState(old["pid"]), "the killed child was not reaped")
        guest = tree.daemonGuest("store")
        yield guest.call("set", "k", "v")
        self.assertEqual((yield guest.call("get", "k")), "v")

        exited = tree.whenExited()
        tree.signal("TERM")
        self.assertEqual((yield withTimeout(exited, 20, reactor, "twistd to exit")), (0, None))
        left = yield waitForProcessesGone(
            reactor, [server, new["pid"], entries["echo"]["pid"]], 10, zombieIsGone=True
        )
        self.assertEqual(left, {})

    @inlineCallbacks
    def test_reloadStartsANewForkServer(self):
        """
        SIGHUP starts a new fork server: a changed daemon comes back forked
        by it, an unchanged one keeps running under the old one.
        """
        daemons = {"store": STORE, "echo": {"daemon": ECHO}}
        tree = TwistdTree(self, daemons, dae={"launcher": "forkserver"})
        entries = yield tree.start()
        old = parentOf(entries["echo"]["pid"])
        tree.writeConfig({"store": STORE, "echo": {"daemon": ECHO, "settings": {"v": 2}}})
        tree.signal("HUP")
        echo = yield tree.waitForEntry(
            "echo",
            lambda e: e["state"] == "ready" and e["pid"] != entries["echo"]["pid"],
            what="echo restarted",
        )
        new = parentOf(echo["pid"])
        self.assertNotEqual(new, old)
        self.assertEqual((parentOf(new), parentOf(old)), (tree.pid, tree.pid))
        store = yield tree.call("lookup", "store")
        self.assertEqual(store["pid"], entries["store"]["pid"])
        self.assertEqual(parentOf(store["pid"]), old)

    @inlineCallbacks
    def test_managerKilled(self):
        """
        When the manager is killed with SIGKILL, its fork server and the
        children it forked all exit within a few seconds.
        """
        tree = TwistdTree(self, {"store": STORE}, dae={"launcher": "forkserver"})
        entries = yield tree.start()
        child = entries["store"]["pid"]
        server = parentOf(child)
        tree.signal("KILL")
        yield withTimeout(tree.whenExited(), 10, reactor, "the manager to die")
        left = yield waitForProcessesGone(reactor, [server, child], 10, zombieIsGone=True)
        self.assertEqual(left, {})
