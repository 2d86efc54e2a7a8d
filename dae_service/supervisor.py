"""
One daemon's lifecycle: spawn, readiness, restart with backoff, give-up, and
graceful stop with escalation.  Process creation goes through an
L{ILauncher}; readiness of foreign programs through a probe; every change is
written to the L{Registry} at once.
"""

from __future__ import annotations

import random
import signal as signalModule
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .errors import DaeError
from .interfaces import IChildListener, ILauncher
from .registry import Registry

__all__ = ["RestartPolicy", "Supervisor", "StartFailed", "EX_CONFIG"]

#: Exit code of a child that cannot run at all (its daemon class does not
#: import): restarting it cannot help, so the supervisor gives up at once.
EX_CONFIG = 78


class StartFailed(DaeError):
    """
    A daemon did not become ready: it gave up, or was stopped first.
    """


@dataclass(frozen=True)
class RestartPolicy:
    """
    When and how fast a daemon is restarted.

    @ivar mode: C{"always"}, C{"on-failure"} (not after exit code 0) or
        C{"never"}.
    @ivar stableAfter: a run at least this long (s) is healthy: the failure
        count resets and the next crash restarts at once.
    @ivar giveUpAfter: quick failures in a row before giving up.
    """

    mode: str = "always"
    backoffInitial: float = 0.1
    backoffMax: float = 30.0
    backoffFactor: float = 2.0
    jitter: float = 0.1
    stableAfter: float = 2.0
    giveUpAfter: int = 5
    startTimeout: float = 30.0
    stopSignal: str = "TERM"
    stopTimeout: float = 10.0

    @classmethod
    def fromConfig(cls, config: Any) -> "RestartPolicy":
        return cls(
            mode=config.restart,
            backoffInitial=config.backoffInitial,
            backoffMax=config.backoffMax,
            backoffFactor=config.backoffFactor,
            jitter=config.jitter,
            stableAfter=config.stableAfter,
            giveUpAfter=config.giveUpAfter,
            startTimeout=config.startTimeout,
            stopSignal=config.stopSignal,
            stopTimeout=config.stopTimeout,
        )

    def delay(self, quickFailures: int, rand: Callable[[], float]) -> float:
        """
        Seconds to wait before the next start after C{quickFailures} quick
        failures in a row (0 after a healthy run).
        """
        if quickFailures <= 0:
            return 0.0
        base = min(self.backoffMax, self.backoffInitial * self.backoffFactor ** (quickFailures - 1))
        return base * (1 + self.jitter * (2 * rand() - 1))

    def restarts(self, exitCode: Optional[int]) -> bool:
        if self.mode == "never":
            return False
        if self.mode == "on-failure":
            return exitCode != 0
        return True


def _describeExit(exitCode: Optional[int], signal: Optional[int]) -> str:
    if signal is not None:
        try:
            return f"killed by {signalModule.Signals(signal).name}"
        except ValueError:
            return f"killed by signal {signal}"
    return f"exit code {exitCode}"


@implementer(IChildListener)
class Supervisor:
    """
    Keeps one daemon running according to its L{RestartPolicy}.

    @ivar name: the daemon's name.
    @ivar state: its registry state.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        launcher: ILauncher,
        clock: Any,
        registry: Registry,
        specFactory: Callable[[], Any],
        policy: RestartPolicy,
        *,
        probeFactory: Optional[Callable[["Supervisor", Any], Any]] = None,
        childLog: Any = None,
        rand: Callable[[], float] = random.random,
        wallClock: Callable[[], float] = time.time,
        onReport: Optional[Callable[[dict], Any]] = None,
    ) -> None:
        """
        @param onReport: given every report event the supervisor does not
            handle itself (a C{stats} event, say).
        """
        self.name = name
        self.launcher = launcher
        self.clock = clock
        self.registry = registry
        self.specFactory = specFactory
        self.policy = policy
        self.probeFactory = probeFactory
        self.childLog = childLog
        self.onReport = onReport
        self._rand = rand
        self._wallClock = wallClock
        self.process: Any = None
        self.quickFailures = 0
        self._startedAt: Optional[float] = None
        self._timer: Any = None
        self._probe: Any = None
        self._readyWaiters: list[Deferred] = []
        self._exitWaiters: list[Deferred] = []
        self._wanted = False
        self._failReason: Optional[str] = None
        self._timedOut = False
        self._wasReady = False

    @property
    def state(self) -> str:
        return self.registry.get(self.name).state

    def _set(self, **changes: Any) -> None:
        self.registry.update(self.name, **changes)

    def _say(self, message: str) -> None:
        if self.childLog is not None:
            self.childLog.event(message)

    # Commands

    def start(self) -> Deferred:
        """
        Start the daemon (clearing a give-up).

        @return: a Deferred that fires when it is ready, or fails with
            L{StartFailed} if it gives up or is stopped first.
        """
        self._wanted = True
        d = self._waiter()
        state = self.state
        if state == "ready":
            d.callback(self.registry.get(self.name))
            return d
        self._readyWaiters.append(d)
        if state in ("stopped", "failed", "exited", "waiting"):
            self.quickFailures = 0
            self._spawn()
        elif state == "backoff":
            # An explicit start does not wait out the backoff.
            self._cancelTimer()
            self._spawn()
        return d

    def stop(self) -> Deferred:
        """
        Stop the daemon: its stop signal to its process group, then SIGKILL
        after the stop timeout.

        @return: a Deferred that fires once the process has exited.
        """
        self._wanted = False
        self._failWaiters("stopped before it was ready")
        state = self.state
        if state != "stopping":
            # While stopping, the timer is the SIGKILL escalation: keep it.
            self._cancelTimer()
        self._stopProbe()
        if self.process is None:
            if state not in ("failed", "exited"):
                self._set(state="stopped", pid=None, port=None, reason=None)
            return succeed(None)
        d = Deferred()
        self._exitWaiters.append(d)
        if state != "stopping":
            self._set(state="stopping", reason=None)
            self._say(f"stopping (SIG{self.policy.stopSignal})")
            self.launcher.signal(self.process, self.policy.stopSignal)
            self._timer = self.clock.callLater(self.policy.stopTimeout, self._escalate)
        return d

    def restart(self) -> Deferred:
        """
        Stop, then start.  @return: a Deferred that fires when ready again.
        """
        return self.stop().addCallback(lambda _: self.start())

    def wait(self) -> Deferred:
        """
        @return: a Deferred that fires when the daemon is next ready (at once
            if it is ready now).
        """
        d = self._waiter()
        if self.state == "ready":
            d.callback(self.registry.get(self.name))
        else:
            self._readyWaiters.append(d)
        return d

    def _waiter(self) -> Deferred:
        """
        A Deferred for a caller waiting on readiness; cancelling it only
        stops that caller waiting.
        """

        def cancel(d: Deferred) -> None:
            if d in self._readyWaiters:
                self._readyWaiters.remove(d)

        return Deferred(canceller=cancel)

    # Internals

    def _spawn(self) -> None:
        self._timer = None
        try:
            spec = self.specFactory()
            self._failReason = None
            self._timedOut = False
            self._wasReady = False
            self._startedAt = self.clock.seconds()
            self._set(state="starting", port=None, started=int(self._wallClock() * 1000), reason=None)
            self.process = self.launcher.launch(spec, self)
        except Exception as e:
            self.log.failure("{name}: cannot spawn", name=self.name)
            self.process = None
            self._failed(f"cannot spawn: {e}")
            return
        self._timer = self.clock.callLater(self.policy.startTimeout, self._startTimedOut)

    def _startTimedOut(self) -> None:
        self._timer = None
        reason = f"not ready after {self.policy.startTimeout:g} s"
        self._say(reason)
        self._failReason = reason
        self._timedOut = True
        self._stopProbe()
        if self.process is not None:
            self.launcher.signal(self.process, self.policy.stopSignal)
            self._timer = self.clock.callLater(self.policy.stopTimeout, self._escalate)

    def _escalate(self) -> None:
        self._timer = None
        if self.process is not None:
            self._say(f"still running {self.policy.stopTimeout:g} s after SIG{self.policy.stopSignal}: SIGKILL")
            self.launcher.signal(self.process, "KILL")

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stopProbe(self) -> None:
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.stop()

    def _ready(self, port: Optional[int], pid: Optional[int] = None) -> None:
        if self.state != "starting" or self._timedOut:
            # Too late: a child that timed out is being killed.
            return
        self._cancelTimer()
        self._stopProbe()
        self._wasReady = True
        changes = {"state": "ready", "port": port, "reason": None}
        if pid is not None:
            changes["pid"] = pid
        self._set(**changes)
        self._say(f"ready on port {port}")
        entry = self.registry.get(self.name)
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(entry)

    def _failWaiters(self, why: str) -> None:
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.errback(StartFailed(f"{self.name}: {why}"))

    def _failed(self, reason: str) -> None:
        self._wanted = False
        self._set(state="failed", pid=None, port=None, reason=reason)
        self._say(f"gave up: {reason}")
        self.log.error("{name} gave up: {reason}", name=self.name, reason=reason)
        self._failWaiters(reason)

    # IChildListener

    def childStarted(self, process: Any) -> None:
        self.process = process
        self._set(pid=process.pid)
        self._say(f"spawned, pid {process.pid}")
        if self.probeFactory is not None:
            self._probe = self.probeFactory(self, process)

    def childReported(self, message: dict) -> None:
        event = message.get("event")
        if event == "ready":
            port = message.get("port")
            self._ready(port if isinstance(port, int) else None)
        elif event == "failed":
            self._failReason = str(message.get("error", "failed"))[:500]
        elif self.onReport is not None:
            self.onReport(message)

    def childOutput(self, stream: str, line: str) -> None:
        if self.childLog is not None:
            self.childLog.line(stream, line)

    def childNotified(self, state: dict) -> None:
        if state.get("READY") == "1" and self._probe is not None:
            self._probe.notifiedReady()

    def childProbed(self, port: Optional[int]) -> None:
        """
        The readiness probe of a foreign program found it ready.
        """
        self._ready(port)

    def childExited(self, exitCode: Optional[int], signal: Optional[int]) -> None:
        self.process = None
        self._cancelTimer()
        self._stopProbe()
        how = _describeExit(exitCode, signal)
        self._say(how)
        if self._exitWaiters:
            self._set(state="stopped", pid=None, port=None, reason=None)
            waiters, self._exitWaiters = self._exitWaiters, []
            for d in waiters:
                d.callback(None)
            if self._wanted and self.process is None and self.state == "stopped":
                # start() was called while it was stopping.
                self.quickFailures = 0
                self._spawn()
            return
        reason = how if self._failReason is None else f"{how}: {self._failReason}"
        if exitCode == EX_CONFIG or self._timedOut:
            # Cannot import its class, or never became ready: restarting
            # will not help.  An explicit start clears it.
            self._failed(reason)
            return
        if not self._wanted or not self.policy.restarts(exitCode):
            self._wanted = False
            self._set(state="exited", pid=None, port=None, reason=reason)
            self._failWaiters(reason)
            return
        ran = self.clock.seconds() - (self._startedAt or 0)
        if ran >= self.policy.stableAfter and self._wasReady and self._failReason is None:
            self.quickFailures = 0
        else:
            self.quickFailures += 1
        if self.quickFailures >= self.policy.giveUpAfter:
            self._failed(f"{self.quickFailures} quick failures in a row, last: {reason}")
            return
        delay = self.policy.delay(self.quickFailures, self._rand)
        entry = self.registry.get(self.name)
        self._set(state="backoff", pid=None, port=None, reason=reason, restarts=entry.restarts + 1)
        self.log.warn(
            "{name} {how}; restarting in {delay:.3f} s", name=self.name, how=reason, delay=delay
        )
        if delay <= 0:
            self._spawn()
        else:
            self._timer = self.clock.callLater(delay, self._spawn)
