"""
Tests for L{dae_service.supervisor}: one daemon's lifecycle on a
L{FakeLauncher} and a L{MemoryReactorClock}, with no real process or time.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dae_service.childlog import ChildLog
from dae_service.interfaces import IChildListener, ILauncher
from dae_service.launcher import FakeLauncher, LaunchSpec
from dae_service.readiness import CommandProbe
from dae_service.registry import STATES, Entry, Registry
from dae_service.supervisor import EX_CONFIG, RestartPolicy, StartFailed, Supervisor

#: The wall clock the supervisors under test read, in seconds.
WALL = 1_700_000_000.0


def noJitter() -> float:
    """
    A C{rand} that makes the jitter factor exactly 1.
    """
    return 0.5


class RecordingLauncher(FakeLauncher):
    """
    A L{FakeLauncher} that also records each L{ILauncher.signal} call as
    C{(pid, signal name)}: signals must go through the launcher (which
    signals the child's whole process group), not the process transport.
    """

    def __init__(self) -> None:
        super().__init__()
        self.signalled: list[tuple[int, str]] = []

    def signal(self, process: Any, signalName: Any) -> None:
        self.signalled.append((process.pid, signalName))
        super().signal(process, signalName)


class Harness:
    """
    A supervisor of a daemon called C{alpha}, with its fakes.

    @ivar states: the C{state} of every entry the registry announced, with
        consecutive repeats (e.g. a pid change while C{starting}) collapsed.
    @ivar entries: every entry the registry announced.
    """

    def __init__(
        self,
        policy: RestartPolicy = RestartPolicy(),
        *,
        rand: Callable[[], float] = noJitter,
        probeFactory: Optional[Callable[..., Any]] = None,
        childLog: Any = None,
        kind: str = "daemon",
    ) -> None:
        self.clock = MemoryReactorClock()
        self.launcher = RecordingLauncher()
        self.registry = Registry()
        self.registry.add(Entry("alpha", kind=kind))
        self.entries: list[Entry] = []
        self.registry.subscribe(self.entries.append)
        self.spec = LaunchSpec(name="alpha", argv=("alpha-program", "--flag"), env={"A": "1"})
        self.specCalls = 0
        self.supervisor = Supervisor(
            "alpha",
            self.launcher,
            self.clock,
            self.registry,
            self._specFactory,
            policy,
            probeFactory=probeFactory,
            childLog=childLog,
            rand=rand,
            wallClock=lambda: WALL,
        )

    def _specFactory(self) -> LaunchSpec:
        self.specCalls += 1
        return self.spec

    @property
    def entry(self) -> Entry:
        return self.registry.get("alpha")

    @property
    def states(self) -> list[str]:
        collapsed: list[str] = []
        for e in self.entries:
            if not collapsed or collapsed[-1] != e.state:
                collapsed.append(e.state)
        return collapsed

    @property
    def launches(self) -> int:
        return len(self.launcher.processes)

    def start(self) -> Deferred:
        """
        Start it, for a test that does not look at the result: a later
        L{StartFailed} is consumed.
        """
        return self.supervisor.start().addErrback(lambda f: f.trap(StartFailed))

    def startReady(self, port: int = 4000) -> Entry:
        """
        Start it and have the child report ready on C{port}.
        """
        d = self.start()
        self.launcher.ready(-1, port)
        return d

    def crash(self, after: float = 0.0, exitCode: int = 1, ready: bool = False) -> None:
        """
        The latest child runs C{after} seconds more (having reported ready
        first if C{ready}), then exits.
        """
        if ready:
            self.launcher.ready(-1, 4000 + len(self.launcher.processes))
        if after:
            self.clock.advance(after)
        self.launcher.exit(-1, exitCode=exitCode)


class RestartPolicyTests(SynchronousTestCase):
    """
    L{RestartPolicy}: delays and restart decisions.
    """

    def test_defaults(self) -> None:
        """
        A run of 2 s is stable, 5 quick failures give up, TERM then KILL
        after 10 s, start timeout 30 s, restart always.
        """
        p = RestartPolicy()
        self.assertEqual(
            (p.mode, p.stableAfter, p.giveUpAfter, p.stopSignal, p.stopTimeout, p.startTimeout),
            ("always", 2.0, 5, "TERM", 10.0, 30.0),
        )

    def test_noDelayAfterHealthyRun(self) -> None:
        """
        With no quick failure the delay is 0 whatever the jitter.
        """
        p = RestartPolicy(jitter=0.5)
        self.assertEqual(p.delay(0, lambda: 1.0), 0.0)
        self.assertEqual(p.delay(0, lambda: 0.0), 0.0)

    def test_exponential(self) -> None:
        """
        The delay starts at C{backoffInitial} and grows by C{backoffFactor}
        per quick failure.
        """
        p = RestartPolicy(backoffInitial=0.5, backoffFactor=3.0, backoffMax=100.0)
        self.assertEqual([p.delay(n, noJitter) for n in (1, 2, 3, 4)], [0.5, 1.5, 4.5, 13.5])

    def test_capped(self) -> None:
        """
        The delay never grows past C{backoffMax} (before jitter), even after
        very many failures.
        """
        p = RestartPolicy(backoffInitial=1.0, backoffMax=8.0, jitter=0.0)
        self.assertEqual(p.delay(4, noJitter), 8.0)
        self.assertEqual(p.delay(100, noJitter), 8.0)

    def test_jitter(self) -> None:
        """
        C{rand()} in [0, 1) moves the delay within +/- C{jitter} of it.
        """
        p = RestartPolicy(backoffInitial=2.0, jitter=0.25)
        self.assertEqual(p.delay(1, lambda: 0.0), 1.5)
        self.assertEqual(p.delay(1, lambda: 1.0), 2.5)
        self.assertEqual(p.delay(1, lambda: 0.5), 2.0)

    def test_modes(self) -> None:
        """
        C{always} restarts after any exit, C{on-failure} not after exit code
        0 (but after a signal), C{never} never.
        """
        cases = [(0, None), (1, None), (None, signal.SIGKILL)]
        self.assertEqual(
            [RestartPolicy(mode="always").restarts(code) for code, _ in cases], [True, True, True]
        )
        self.assertEqual(
            [RestartPolicy(mode="on-failure").restarts(code) for code, _ in cases],
            [False, True, True],
        )
        self.assertEqual(
            [RestartPolicy(mode="never").restarts(code) for code, _ in cases], [False, False, False]
        )

    def test_fromConfig(self) -> None:
        """
        L{RestartPolicy.fromConfig} copies every field of a daemon's config.
        """
        from dae_service.config import parseConfig

        config = parseConfig(
            """
            [daemons.a]
            command = ["x"]
            restart = "on-failure"
            backoff_initial = 0.5
            backoff_max = 9
            backoff_factor = 3
            jitter = 0.2
            stable_after = 4
            give_up_after = 7
            start_timeout = 11
            stop_signal = "INT"
            stop_timeout = 3
            """,
            "/tmp/x.toml",
            {"HOME": "/tmp"},
        )
        self.assertEqual(
            RestartPolicy.fromConfig(config.daemon("a")),
            RestartPolicy("on-failure", 0.5, 9.0, 3.0, 0.2, 4.0, 7, 11.0, "INT", 3.0),
        )


class StartTests(SynchronousTestCase):
    """
    L{Supervisor.start} and readiness.
    """

    def test_interface(self) -> None:
        """
        A L{Supervisor} is an L{IChildListener}.
        """
        self.assertTrue(verifyObject(IChildListener, Harness().supervisor))
        self.assertTrue(verifyObject(ILauncher, RecordingLauncher()))

    def test_spawn(self) -> None:
        """
        C{start} launches the spec at once: C{starting} with the child's pid
        and the spawn time, no port; its Deferred waits for readiness.
        """
        h = Harness()
        d = h.supervisor.start()
        self.assertNoResult(d)
        self.assertEqual(h.launcher.specs, [h.spec])
        self.assertEqual(h.entry.state, "starting")
        self.assertEqual(h.entry.pid, 1000)
        self.assertIsNone(h.entry.port)
        self.assertEqual(h.entry.started, int(WALL * 1000))

    def test_ready(self) -> None:
        """
        The child's C{ready} report makes it C{ready} with its port, and the
        start Deferred fires with the entry.
        """
        h = Harness()
        d = h.supervisor.start()
        h.launcher.ready(0, 4567)
        entry = self.successResultOf(d)
        self.assertEqual((entry.state, entry.pid, entry.port), ("ready", 1000, 4567))
        self.assertEqual(h.entry, entry)
        self.assertEqual(entry.toDict()["port"], 4567)

    def test_readyWithoutIntegerPort(self) -> None:
        """
        A ready report whose port is not an integer is ready with no port.
        """
        h = Harness()
        d = h.supervisor.start()
        h.launcher.report(0, {"event": "ready", "port": "4567"})
        self.assertIsNone(self.successResultOf(d).port)

    def test_readyCancelsStartTimeout(self) -> None:
        """
        Once ready no timer is left: nothing is polled while the child runs.
        """
        h = Harness()
        h.startReady()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_startWhenReady(self) -> None:
        """
        C{start} of a ready daemon fires at once and launches nothing.
        """
        h = Harness()
        h.startReady()
        entry = self.successResultOf(h.supervisor.start())
        self.assertEqual(entry.state, "ready")
        self.assertEqual(h.launches, 1)

    def test_startWhileStarting(self) -> None:
        """
        A second C{start} while starting launches nothing more; both
        Deferreds fire when it is ready.
        """
        h = Harness()
        d1 = h.supervisor.start()
        d2 = h.supervisor.start()
        self.assertEqual(h.launches, 1)
        h.launcher.ready(0, 1)
        self.assertEqual(self.successResultOf(d1), self.successResultOf(d2))

    def test_lateReadyIgnored(self) -> None:
        """
        A second ready report (another port) changes nothing.
        """
        h = Harness()
        h.startReady(4000)
        h.launcher.ready(0, 5000)
        self.assertEqual(h.entry.port, 4000)

    def test_wait(self) -> None:
        """
        C{wait} fires when the daemon is next ready, at once if it is now,
        and does not start it.
        """
        h = Harness()
        w = h.supervisor.wait()
        self.assertEqual(h.launches, 0)
        h.start()
        self.assertNoResult(w)
        h.launcher.ready(0, 4000)
        self.assertEqual(self.successResultOf(w).port, 4000)
        self.assertEqual(self.successResultOf(h.supervisor.wait()).port, 4000)

    def test_cancelWait(self) -> None:
        """
        Cancelling a C{wait} fails only that Deferred; later readiness still
        reaches every other waiter, and no error is left behind.
        """
        h = Harness()
        d = h.supervisor.start()
        w1 = h.supervisor.wait()
        w2 = h.supervisor.wait()
        w1.cancel()
        self.failureResultOf(w1, CancelledError)
        h.launcher.ready(0, 4000)
        self.assertEqual(self.successResultOf(w2).port, 4000)
        self.assertEqual(self.successResultOf(d).port, 4000)
        self.assertEqual(self.successResultOf(h.supervisor.wait()).state, "ready")

    def test_cancelStart(self) -> None:
        """
        Cancelling a start Deferred does not stop the daemon, nor break a
        later give-up (the cancelled Deferred is not errbacked twice).
        """
        h = Harness(RestartPolicy(giveUpAfter=1))
        d = h.supervisor.start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(h.entry.state, "starting")
        h.crash()
        self.assertEqual(h.entry.state, "failed")

    def test_spawnError(self) -> None:
        """
        A launch that raises gives up at once: C{failed} with the reason,
        the start Deferred fails with L{StartFailed}, and the error is
        logged.
        """
        h = Harness()
        h.launcher.launchError = FileNotFoundError(2, "no such executable")
        with capturedLogs() as events:
            d = h.supervisor.start()
        f = self.failureResultOf(d, StartFailed)
        self.assertIn("cannot spawn", str(f.value))
        self.assertEqual(h.entry.state, "failed")
        self.assertIn("no such executable", h.entry.reason)
        self.assertIsNone(h.entry.pid)
        self.assertTrue(any(e.get("log_failure") is not None for e in events))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)

    def test_specFactoryErrorGivesUp(self) -> None:
        """
        A spec that cannot be built (e.g. unencodable settings) gives up
        like a launch error.
        """
        h = Harness()

        def broken() -> LaunchSpec:
            raise TypeError("settings are not JSON")

        h.supervisor.specFactory = broken
        with capturedLogs():
            self.failureResultOf(h.supervisor.start(), StartFailed)
        self.assertEqual(h.entry.state, "failed")
        self.assertEqual(h.launches, 0)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)


class RestartTests(SynchronousTestCase):
    """
    Restarting after an exit: backoff, jitter, stable runs, give-up.
    """

    def test_restartAtOnceAfterStableRun(self) -> None:
        """
        A crash after a stable run restarts at once, with no timer involved;
        C{restarts} counts it and the reason says how it exited.
        """
        h = Harness()
        h.startReady()
        with capturedLogs():
            h.crash(after=5, exitCode=3)
        self.assertEqual(h.launches, 2)
        self.assertEqual(h.entry.state, "starting")
        self.assertEqual(h.entry.restarts, 1)
        self.assertEqual(h.entry.pid, 1001)
        self.assertEqual(h.supervisor.quickFailures, 0)
        self.assertEqual(
            [(e.state, e.reason) for e in h.entries if e.state == "backoff"],
            [("backoff", "exit code 3")],
        )

    def test_registrySequence(self) -> None:
        """
        The registry hears of each change as it happens: starting, ready,
        backoff, starting, ready...; C{restarts} grows by one per restart and
        the port is cleared while not ready.
        """
        h = Harness()
        h.startReady(4000)
        with capturedLogs():
            h.crash(after=3)
        h.launcher.ready(-1, 4001)
        with capturedLogs():
            h.crash(after=0.5)
        h.clock.advance(0.1)
        h.launcher.ready(-1, 4002)
        self.assertEqual(
            h.states,
            ["starting", "ready", "backoff", "starting", "ready", "backoff", "starting", "ready"],
        )
        self.assertEqual([e.restarts for e in h.entries if e.state == "backoff"], [1, 2])
        self.assertEqual(
            [e.port for e in h.entries if e.state == "ready"], [4000, 4001, 4002]
        )
        self.assertTrue(all(e.port is None for e in h.entries if e.state != "ready"))
        self.assertEqual(h.entry.restarts, 2)

    def test_exponentialBackoff(self) -> None:
        """
        Quick failures in a row wait C{backoffInitial}, then twice as long,
        and so on; nothing is launched before the delay is over.
        """
        h = Harness(RestartPolicy(backoffInitial=1.0, backoffFactor=2.0, giveUpAfter=10))
        h.start()
        with capturedLogs():
            for n, delay in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
                h.crash()
                self.assertEqual(h.entry.state, "backoff")
                self.assertEqual(h.supervisor.quickFailures, n)
                h.clock.advance(delay - 0.001)
                self.assertEqual(h.launches, n)
                h.clock.advance(0.001)
                self.assertEqual(h.launches, n + 1)
                self.assertEqual(h.entry.state, "starting")

    def test_jitterFromRand(self) -> None:
        """
        The injected C{rand} sets the jitter of the delay.
        """
        h = Harness(RestartPolicy(backoffInitial=1.0, jitter=0.5), rand=lambda: 0.0)
        h.start()
        with capturedLogs():
            h.crash()
        (call,) = h.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - h.clock.seconds(), 0.5)

    def test_resetAfterStableRun(self) -> None:
        """
        After a stable run the quick-failure count starts over: the next
        crash restarts at once and the one after waits C{backoffInitial}
        again.
        """
        h = Harness(RestartPolicy(backoffInitial=1.0))
        h.start()
        with capturedLogs():
            h.crash()
            h.clock.advance(1)
            h.crash()
            h.clock.advance(2)
            self.assertEqual(h.supervisor.quickFailures, 2)
            h.crash(after=2.0, ready=True)
            self.assertEqual(h.supervisor.quickFailures, 0)
            self.assertEqual(h.launches, 4)
            h.crash(after=1.999)
        self.assertEqual(h.supervisor.quickFailures, 1)
        self.assertEqual(h.entry.state, "backoff")
        h.clock.advance(1.0)
        self.assertEqual(h.launches, 5)

    def test_giveUp(self) -> None:
        """
        C{giveUpAfter} quick failures in a row give up: C{failed} with a
        reason, no timer, no further launch, the start Deferred fails with
        L{StartFailed}, and an error is logged.
        """
        h = Harness(RestartPolicy(backoffInitial=1.0, giveUpAfter=3))
        d = h.supervisor.start()
        with capturedLogs() as events:
            h.crash(exitCode=2)
            h.clock.advance(1)
            h.crash(exitCode=2)
            h.clock.advance(2)
            h.crash(exitCode=2)
        self.assertEqual(h.entry.state, "failed")
        self.assertEqual(h.entry.reason, "3 quick failures in a row, last: exit code 2")
        self.assertIsNone(h.entry.pid)
        self.assertEqual(h.entry.restarts, 2)
        f = self.failureResultOf(d, StartFailed)
        self.assertIn("alpha", str(f.value))
        self.assertIn("3 quick failures", str(f.value))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.clock.advance(1000)
        self.assertEqual(h.launches, 3)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual([(e["name"], e["reason"]) for e in errors], [("alpha", h.entry.reason)])

    def test_startClearsFailed(self) -> None:
        """
        An explicit C{start} clears a give-up: it launches again with the
        quick-failure count and the reason cleared.
        """
        h = Harness(RestartPolicy(giveUpAfter=1))
        h.start()
        with capturedLogs():
            h.crash()
        self.assertEqual(h.entry.state, "failed")
        d = h.supervisor.start()
        self.assertEqual(h.launches, 2)
        self.assertEqual(h.entry.state, "starting")
        self.assertIsNone(h.entry.reason)
        self.assertEqual(h.supervisor.quickFailures, 0)
        h.launcher.ready(-1, 1)
        self.assertEqual(self.successResultOf(d).state, "ready")

    def test_exitConfigGivesUpAtOnce(self) -> None:
        """
        Exit code 78 (EX_CONFIG: the daemon cannot run at all) gives up at
        once, with the child's own reported error in the reason.
        """
        h = Harness()
        d = h.supervisor.start()
        h.launcher.report(0, {"event": "failed", "error": "ImportError: no module x"})
        with capturedLogs():
            h.crash(exitCode=EX_CONFIG)
        self.assertEqual(h.entry.state, "failed")
        self.assertEqual(h.entry.reason, "exit code 78: ImportError: no module x")
        self.failureResultOf(d, StartFailed)
        self.assertEqual(h.launches, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_exitConfigAfterStableRun(self) -> None:
        """
        Exit code 78 gives up even after a long healthy run.
        """
        h = Harness()
        h.startReady()
        with capturedLogs():
            h.crash(after=100, exitCode=EX_CONFIG)
        self.assertEqual(h.entry.state, "failed")
        self.assertEqual(h.launches, 1)

    def test_startDuringBackoff(self) -> None:
        """
        An explicit C{start} during a backoff launches at once and cancels
        the backoff timer.
        """
        h = Harness(RestartPolicy(backoffInitial=5.0))
        h.start()
        with capturedLogs():
            h.crash()
        d = h.supervisor.start()
        self.assertEqual(h.launches, 2)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # the start timeout only
        h.clock.advance(5)
        self.assertEqual(h.launches, 2)
        h.launcher.ready(-1, 1)
        self.successResultOf(d)

    def test_reasons(self) -> None:
        """
        The reason names an exit code, a signal by name, or an unknown signal
        by number.
        """
        h = Harness(RestartPolicy(giveUpAfter=100))
        h.start()
        reasons = []
        with capturedLogs():
            for how in [{"exitCode": 3}, {"signal": signal.SIGKILL}, {"signal": 200}]:
                h.launcher.exit(-1, **how)
                reasons.append(h.entry.reason)
                h.clock.advance(60)
        self.assertEqual(reasons, ["exit code 3", "killed by SIGKILL", "killed by signal 200"])

    def test_restartLogged(self) -> None:
        """
        A restart is logged as a warning with the daemon, the reason and the
        delay.
        """
        h = Harness(RestartPolicy(backoffInitial=1.0))
        h.start()
        with capturedLogs() as events:
            h.crash(exitCode=4)
        (event,) = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(
            (event["name"], event["how"], event["delay"]), ("alpha", "exit code 4", 1.0)
        )


class PolicyModeTests(SynchronousTestCase):
    """
    The restart C{mode}s.
    """

    def test_alwaysAfterCleanExit(self) -> None:
        """
        C{always} restarts even after exit code 0.
        """
        h = Harness(RestartPolicy(mode="always"))
        h.startReady()
        with capturedLogs():
            h.crash(after=5, exitCode=0)
        self.assertEqual(h.launches, 2)

    def test_onFailureCleanExit(self) -> None:
        """
        C{on-failure}: exit code 0 leaves it C{exited}, with the reason, and
        no timer.
        """
        h = Harness(RestartPolicy(mode="on-failure"))
        h.startReady()
        h.crash(after=5, exitCode=0)
        self.assertEqual((h.entry.state, h.entry.reason), ("exited", "exit code 0"))
        self.assertEqual(h.launches, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_onFailureRestartsFailures(self) -> None:
        """
        C{on-failure} restarts after a non-zero exit code and after a signal.
        """
        h = Harness(RestartPolicy(mode="on-failure"))
        h.startReady()
        with capturedLogs():
            h.crash(after=5, exitCode=1)
            h.launcher.ready(-1, 4001)
            h.clock.advance(5)
            h.launcher.exit(-1, signal=signal.SIGSEGV)
        self.assertEqual(h.launches, 3)

    def test_never(self) -> None:
        """
        C{never}: any exit leaves it C{exited}; a pending start fails with
        L{StartFailed}; an explicit start runs it again.
        """
        h = Harness(RestartPolicy(mode="never"))
        d = h.supervisor.start()
        h.crash(exitCode=1)
        self.assertEqual((h.entry.state, h.entry.reason), ("exited", "exit code 1"))
        self.failureResultOf(d, StartFailed)
        self.assertEqual(h.launches, 1)
        h.start()
        self.assertEqual(h.launches, 2)


class StopTests(SynchronousTestCase):
    """
    L{Supervisor.stop}, L{Supervisor.restart} and the start timeout.
    """

    def test_gracefulStop(self) -> None:
        """
        C{stop} sends the stop signal through the launcher and waits:
        C{stopping} until the child exits, then C{stopped}; no restart.
        """
        h = Harness()
        h.startReady()
        d = h.supervisor.stop()
        self.assertEqual(h.launcher.signalled, [(1000, "TERM")])
        self.assertEqual(h.entry.state, "stopping")
        self.assertNoResult(d)
        h.launcher.exit(0, signal=signal.SIGTERM)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(h.entry.state, "stopped")
        self.assertIsNone(h.entry.pid)
        self.assertEqual(h.entry.restarts, 0)
        self.assertEqual(h.launches, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_escalation(self) -> None:
        """
        A child still running C{stopTimeout} after the stop signal gets
        SIGKILL; C{stop} fires only once it has exited.
        """
        h = Harness(RestartPolicy(stopTimeout=3.0))
        h.startReady()
        d = h.supervisor.stop()
        h.clock.advance(2.999)
        self.assertEqual(h.launcher.processes[0].signals, ["TERM"])
        h.clock.advance(0.001)
        self.assertEqual(h.launcher.signalled, [(1000, "TERM"), (1000, "KILL")])
        self.assertNoResult(d)
        h.launcher.exit(0, signal=signal.SIGKILL)
        self.successResultOf(d)
        self.assertEqual(h.entry.state, "stopped")

    def test_stopSignal(self) -> None:
        """
        The policy's C{stopSignal} is what is sent first.
        """
        h = Harness(RestartPolicy(stopSignal="INT"))
        h.startReady()
        h.supervisor.stop()
        self.assertEqual(h.launcher.processes[0].signals, ["INT"])

    def test_stopTwice(self) -> None:
        """
        A second C{stop} while stopping sends nothing more, keeps the
        SIGKILL escalation, and both Deferreds fire at the exit.
        """
        h = Harness(RestartPolicy(stopTimeout=3.0))
        h.startReady()
        d1 = h.supervisor.stop()
        h.clock.advance(1)
        d2 = h.supervisor.stop()
        self.assertEqual(h.launcher.processes[0].signals, ["TERM"])
        h.clock.advance(2)
        self.assertEqual(h.launcher.processes[0].signals, ["TERM", "KILL"])
        h.launcher.exit(0, signal=signal.SIGKILL)
        self.successResultOf(d1)
        self.successResultOf(d2)

    def test_stopWhileStarting(self) -> None:
        """
        C{stop} before the child is ready fails the start Deferred with
        L{StartFailed}, and cancels the start timeout.
        """
        h = Harness(RestartPolicy(startTimeout=5.0, stopTimeout=100.0))
        d = h.supervisor.start()
        stopped = h.supervisor.stop()
        f = self.failureResultOf(d, StartFailed)
        self.assertIn("stopped before it was ready", str(f.value))
        h.clock.advance(50)
        self.assertEqual(h.launcher.processes[0].signals, ["TERM"])
        h.launcher.exit(0, exitCode=0)
        self.successResultOf(stopped)
        self.assertEqual(h.entry.state, "stopped")

    def test_stopDuringBackoff(self) -> None:
        """
        C{stop} during a backoff cancels the restart: C{stopped} at once.
        """
        h = Harness(RestartPolicy(backoffInitial=1.0))
        h.start()
        with capturedLogs():
            h.crash()
        self.successResultOf(h.supervisor.stop())
        self.assertEqual((h.entry.state, h.entry.reason), ("stopped", None))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.clock.advance(10)
        self.assertEqual(h.launches, 1)

    def test_stopWhenStopped(self) -> None:
        """
        C{stop} of a daemon that never ran fires at once.
        """
        h = Harness()
        self.successResultOf(h.supervisor.stop())
        self.assertEqual(h.entry.state, "stopped")
        self.assertEqual(h.entries, [])

    def test_stopKeepsFailed(self) -> None:
        """
        C{stop} of a daemon that gave up keeps C{failed} and its reason
        visible.
        """
        h = Harness(RestartPolicy(giveUpAfter=1))
        h.start()
        with capturedLogs():
            h.crash()
        reason = h.entry.reason
        self.successResultOf(h.supervisor.stop())
        self.assertEqual((h.entry.state, h.entry.reason), ("failed", reason))

    def test_startWhileStopping(self) -> None:
        """
        C{start} while stopping starts it again once it has exited: the stop
        Deferred fires, then a new child is launched, and the start Deferred
        fires when that one is ready.
        """
        h = Harness()
        h.startReady()
        stopped = h.supervisor.stop()
        started = h.supervisor.start()
        self.assertEqual(h.launches, 1)
        h.launcher.exit(0, signal=signal.SIGTERM)
        self.successResultOf(stopped)
        self.assertEqual(h.launches, 2)
        self.assertEqual(h.entry.state, "starting")
        self.assertNoResult(started)
        h.launcher.ready(1, 4001)
        self.assertEqual(self.successResultOf(started).port, 4001)
        self.assertEqual(h.entry.restarts, 0)

    def test_restart(self) -> None:
        """
        C{restart} stops the child, waits for its exit, starts a new one and
        fires when that is ready.
        """
        h = Harness()
        h.startReady(4000)
        d = h.supervisor.restart()
        self.assertEqual(h.launcher.processes[0].signals, ["TERM"])
        self.assertEqual(h.launches, 1)
        h.launcher.exit(0, signal=signal.SIGTERM)
        self.assertEqual(h.launches, 2)
        self.assertNoResult(d)
        h.launcher.ready(1, 4001)
        self.assertEqual(self.successResultOf(d).port, 4001)
        self.assertEqual(
            h.states, ["starting", "ready", "stopping", "stopped", "starting", "ready"]
        )

    def test_restartFailed(self) -> None:
        """
        C{restart} of a daemon that gave up starts it again.
        """
        h = Harness(RestartPolicy(giveUpAfter=1))
        h.start()
        with capturedLogs():
            h.crash()
        d = h.supervisor.restart()
        self.assertEqual(h.launches, 2)
        h.launcher.ready(1, 1)
        self.successResultOf(d)

    def test_startTimeout(self) -> None:
        """
        A child not ready after C{startTimeout} is stopped (TERM, then KILL),
        and once it exits the daemon is C{failed} with the timeout in the
        reason; the start Deferred fails; an explicit start clears it.
        """
        h = Harness(RestartPolicy(startTimeout=5.0, stopTimeout=2.0, backoffInitial=1.0))
        d = h.supervisor.start()
        h.clock.advance(4.999)
        self.assertEqual(h.launcher.processes[0].signals, [])
        h.clock.advance(0.001)
        self.assertEqual(h.launcher.processes[0].signals, ["TERM"])
        h.clock.advance(2)
        self.assertEqual(h.launcher.processes[0].signals, ["TERM", "KILL"])
        with capturedLogs():
            h.launcher.exit(0, signal=signal.SIGKILL)
        self.assertEqual(h.entry.state, "failed")
        self.assertEqual(h.entry.reason, "killed by SIGKILL: not ready after 5 s")
        self.failureResultOf(d, StartFailed)
        h.clock.advance(60)
        self.assertEqual(h.launches, 1)
        h.start()
        self.assertEqual(h.launches, 2)
        self.assertEqual(h.entry.state, "starting")
        self.assertIsNone(h.entry.reason)

    def test_readyAfterStartTimeout(self) -> None:
        """
        A ready report arriving after the start timeout fired is too late:
        the child is still killed (the SIGKILL escalation is kept) and the
        daemon is C{failed}; a new start then works normally.
        """
        h = Harness(RestartPolicy(startTimeout=5.0, stopTimeout=2.0))
        d = h.supervisor.start()
        h.clock.advance(5)
        h.launcher.ready(0, 4000)
        self.assertEqual(h.entry.state, "starting")
        self.assertNoResult(d)
        h.clock.advance(2)
        self.assertEqual(h.launcher.processes[0].signals, ["TERM", "KILL"])
        with capturedLogs():
            h.launcher.exit(0, signal=signal.SIGKILL)
        self.assertEqual(h.entry.state, "failed")
        self.failureResultOf(d, StartFailed)
        d = h.supervisor.start()
        h.launcher.ready(1, 4001)
        self.assertEqual(self.successResultOf(d).port, 4001)

    def test_startTimeoutGivesUp(self) -> None:
        """
        A start timeout gives up at once, even with give-up allowances left;
        the start Deferred then fails.
        """
        h = Harness(RestartPolicy(startTimeout=5.0, backoffInitial=1.0, giveUpAfter=5))
        d = h.supervisor.start()
        with capturedLogs():
            h.clock.advance(5)
            h.launcher.exit(-1, signal=signal.SIGTERM)
            h.clock.advance(60)
        self.assertEqual(h.launches, 1)
        self.assertEqual(h.entry.state, "failed")
        self.assertIn("not ready after 5 s", h.entry.reason)
        self.failureResultOf(d, StartFailed)


class ChildLogTests(SynchronousTestCase):
    """
    What the supervisor tells the daemon's L{ChildLog}.
    """

    def test_outputAndEvents(self) -> None:
        """
        The child's lines and the supervisor's own events about it (spawned,
        ready, exit, stopping, SIGKILL) go to the child log.
        """
        log = ChildLog("alpha", None, 1000, 1)
        h = Harness(RestartPolicy(stopTimeout=1.0), childLog=log)
        with capturedLogs():
            h.startReady(4000)
            h.launcher.output(0, "hello", "stderr")
            h.supervisor.stop()
            h.clock.advance(1)
            h.launcher.exit(0, signal=signal.SIGKILL)
        self.assertEqual(
            [(stream, line) for _, stream, line in log.recent],
            [
                ("dae", "spawned, pid 1000"),
                ("dae", "ready on port 4000"),
                ("stderr", "hello"),
                ("dae", "stopping (SIGTERM)"),
                ("dae", "still running 1 s after SIGTERM: SIGKILL"),
                ("dae", "killed by SIGKILL"),
            ],
        )


class FakeProbe:
    """
    Stands in for a probe function: records each call and hands back a
    Deferred the test fires.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.answers: dict[int, Deferred] = {}

    def __call__(self, reactor: Any, host: str, port: int) -> Deferred:
        self.calls.append((host, port))
        d = self.answers[port] = Deferred()
        return d


class CommandReadinessTests(SynchronousTestCase):
    """
    Readiness of a foreign command through a L{CommandProbe}.
    """

    def setUp(self) -> None:
        self.ports: set[int] = set()
        self.probe = FakeProbe()
        self.probed: list[int] = []

        def factory(supervisor: Supervisor, process: Any) -> CommandProbe:
            self.probed.append(process.pid)
            return CommandProbe(
                self.h.clock, supervisor, process.pid, self.listeningPorts, probe=self.probe
            )

        self.h = Harness(RestartPolicy(startTimeout=5.0), probeFactory=factory, kind="command")

    def listeningPorts(self, pid: int) -> set[int]:
        return set(self.ports)

    def test_readyWhenPortAnswersDae(self) -> None:
        """
        A listening port of the child that answers C{dae} makes it ready on
        that port, and polling stops.
        """
        d = self.h.supervisor.start()
        self.assertEqual(self.probed, [1000])
        self.h.clock.advance(0)
        self.assertEqual(self.probe.calls, [])
        self.ports.add(8080)
        self.h.clock.advance(0.04)
        self.assertEqual(self.probe.calls, [("127.0.0.1", 8080)])
        self.assertEqual(self.h.entry.state, "starting")
        self.probe.answers[8080].callback(True)
        self.assertEqual(self.successResultOf(d).port, 8080)
        self.assertEqual(self.h.entry.state, "ready")
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_portThatDoesNotAnswer(self) -> None:
        """
        A port that does not answer C{dae} is not retried; another port that
        does makes it ready.
        """
        d = self.h.supervisor.start()
        self.ports.add(9000)
        self.h.clock.advance(0)
        self.probe.answers[9000].callback(False)
        self.h.clock.advance(1)
        self.assertEqual(self.probe.calls, [("127.0.0.1", 9000)])
        self.assertNoResult(d)
        self.ports.add(9001)
        self.h.clock.advance(1)
        self.probe.answers[9001].callback(True)
        self.assertEqual(self.successResultOf(d).port, 9001)

    def test_notifyReady(self) -> None:
        """
        C{READY=1} on the notify socket makes it ready on its lowest
        listening port, without waiting for a probe.
        """
        d = self.h.supervisor.start()
        self.ports.update({9002, 9001})
        self.h.launcher.notify(0, {"STATUS": "loading"})
        self.assertNoResult(d)
        self.h.launcher.notify(0, {"READY": "1"})
        self.assertEqual(self.successResultOf(d).port, 9001)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_notifyReadyWithoutPort(self) -> None:
        """
        C{READY=1} from a child with no listening socket is ready with no
        port.
        """
        d = self.h.supervisor.start()
        self.h.launcher.notify(0, {"READY": "1"})
        entry = self.successResultOf(d)
        self.assertEqual((entry.state, entry.port), ("ready", None))

    def test_lateAnswerAfterExit(self) -> None:
        """
        A probe answering after the child exited changes nothing; polling
        stopped with the exit.
        """
        self.h.start()
        self.ports.add(8080)
        self.h.clock.advance(0)
        with capturedLogs():
            self.h.crash(exitCode=1)
        self.probe.answers[8080].callback(True)
        self.assertEqual(self.h.entry.state, "backoff")

    def test_probeStoppedByStartTimeout(self) -> None:
        """
        The start timeout stops the probe; a late answer does not make the
        child being killed ready.
        """
        d = self.h.supervisor.start()
        self.ports.add(8080)
        self.h.clock.advance(0)
        self.h.clock.advance(5)
        self.assertEqual(self.h.launcher.processes[0].signals, ["TERM"])
        self.probe.answers[8080].callback(True)
        self.assertEqual(self.h.entry.state, "starting")
        self.assertNoResult(d)

    def test_notifyFromPythonDaemonIgnored(self) -> None:
        """
        Without a probe (a python daemon), C{READY=1} means nothing: its own
        report decides.
        """
        h = Harness()
        d = h.supervisor.start()
        h.launcher.notify(0, {"READY": "1"})
        self.assertNoResult(d)


class StatesTests(SynchronousTestCase):
    """
    Every state the supervisor sets is documented in L{STATES}.
    """

    def test_statesDocumented(self) -> None:
        """
        A run through start, ready, crash, backoff, give-up, stop and exit
        uses only documented states.
        """
        seen = set()
        for policy in [RestartPolicy(giveUpAfter=1), RestartPolicy(mode="never")]:
            h = Harness(policy)
            h.startReady()
            h.supervisor.stop()
            h.launcher.exit(-1)
            h.start()
            with capturedLogs():
                h.crash()
                h.start()
                h.crash(after=3)
            seen.update(h.states)
        self.assertLessEqual(seen, set(STATES))
        self.assertIn("failed", seen)
        self.assertIn("exited", seen)


class StableRunNeedsReadinessTests(SynchronousTestCase):
    """
    A run is healthy only if it became ready and lasted C{stableAfter}.
    """

    def test_longRunWithoutReadyIsQuickFailure(self) -> None:
        """
        A child that crashes after a long time without ever becoming ready
        counts as a quick failure, so a daemon that never comes up
        eventually gives up instead of restarting at once forever.
        """
        h = Harness(RestartPolicy(backoffInitial=1.0, giveUpAfter=2, startTimeout=60.0))
        h.start()
        with capturedLogs():
            h.crash(after=3)
            self.assertEqual(h.supervisor.quickFailures, 1)
            h.clock.advance(1)
            h.crash(after=3)
        self.assertEqual(h.entry.state, "failed")
