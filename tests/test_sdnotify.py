"""
Tests for L{dae_service.sdnotify}: notifications received on real UNIX
datagram sockets made by the tests (a path in a temporary directory, and
an abstract name), timers on a fake clock; the syntax check of C{systemd:}
endpoints; and, last, a real twistd tree started as systemd starts a
C{Type=notify} service.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from typing import Any, Callable, Optional

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dae_service.notify import parseNotifyMessage
from dae_service.registry import Entry, Registry
from dae_service.sdnotify import (
    SYSTEMD_VARIABLES,
    SystemdNotifier,
    formatNotifyMessage,
    isSystemdEndpoint,
    notifyAddress,
    systemdEndpointProblem,
    validSystemdEndpoint,
)

from .twistdtree import TwistdTree, withTimeout


class FakeManager:
    def __init__(self, *entries: Entry) -> None:
        self.registry = Registry()
        for entry in entries:
            self.registry.add(entry)


class Receiver:
    """
    A UNIX datagram socket standing for systemd's notify socket.
    """

    def __init__(self, testCase: SynchronousTestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testCase.addCleanup(self.sock.close)
        if abstract:
            name = f"dae-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.value = "@" + name
        else:
            # Short: AF_UNIX paths are limited to 108 bytes.
            directory = tempfile.mkdtemp(prefix="dae-sd-")
            testCase.addCleanup(os.rmdir, directory)
            self.path = os.path.join(directory, "notify")
            self.sock.bind(self.path)
            testCase.addCleanup(os.unlink, self.path)
            self.value = self.path
        self.sock.setblocking(False)

    def messages(self) -> list[dict]:
        """
        Every notification received so far, parsed.
        """
        found = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return found
            found.append(parseNotifyMessage(data))


class NotifierMixin:
    def makeNotifier(
        self,
        environ: Optional[dict] = None,
        abstract: bool = False,
        manager: Optional[FakeManager] = None,
        start: bool = True,
    ) -> SystemdNotifier:
        self.receiver = Receiver(self, abstract)
        self.clock = Clock()
        env = {"NOTIFY_SOCKET": self.receiver.value}
        env.update(environ or {})
        self.manager = manager or FakeManager(
            Entry("alpha", state="ready", pid=10), Entry("beta", state="failed")
        )
        self.notifier = SystemdNotifier(self.manager, self.clock, env, pid=4242)
        if start:
            self.notifier.startService()
            self.addCleanup(lambda: self.notifier.running and self.notifier.stopService())
        return self.notifier


class HelperTests(SynchronousTestCase):
    """
    The pure helpers.
    """

    def test_notifyAddress(self) -> None:
        """
        A path is used as it is; C{@name} is an abstract socket; anything
        else is unusable.
        """
        self.assertEqual(notifyAddress("/run/systemd/notify"), "/run/systemd/notify")
        self.assertEqual(notifyAddress("@sd-notify"), "\0sd-notify")
        self.assertIsNone(notifyAddress("vsock:2:1234"))
        self.assertIsNone(notifyAddress(""))
        self.assertIsNone(notifyAddress(None))

    def test_format(self) -> None:
        """
        Fields become C{KEY=VALUE} lines; a bad key or a newline in a value
        is refused.
        """
        self.assertEqual(formatNotifyMessage({"READY": 1, "STATUS": "2 ready"}), b"READY=1\nSTATUS=2 ready")
        self.assertRaises(ValueError, formatNotifyMessage, {"ready": 1})
        self.assertRaises(ValueError, formatNotifyMessage, {"STATUS": "a\nREADY=1"})

    def test_systemdVariables(self) -> None:
        """
        The variables to keep from children.
        """
        self.assertEqual(
            SYSTEMD_VARIABLES,
            {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"},
        )


class NotifyTests(NotifierMixin, SynchronousTestCase):
    """
    C{READY=1}, C{STATUS}, C{STOPPING=1} on a real datagram socket.
    """

    def test_ready(self) -> None:
        """
        L{SystemdNotifier.ready} sends C{READY=1} with C{MAINPID} and a
        status line, once.
        """
        self.makeNotifier()
        self.assertEqual(self.receiver.messages(), [])
        self.notifier.ready()
        self.notifier.ready()
        self.assertEqual(
            self.receiver.messages(),
            [{"READY": "1", "MAINPID": "4242", "STATUS": "2 daemons: 1 ready, 1 failed"}],
        )

    def test_abstractSocket(self) -> None:
        """
        An abstract C{NOTIFY_SOCKET} (C{@name}) works too.
        """
        self.makeNotifier(abstract=True)
        self.assertTrue(self.notifier.notify(READY=1))
        self.assertEqual(self.receiver.messages(), [{"READY": "1"}])

    def test_statusFollowsChanges(self) -> None:
        """
        After C{READY=1}, registry changes send a new status, at most once
        a second.
        """
        self.makeNotifier()
        self.notifier.ready()
        self.receiver.messages()
        self.manager.registry.update("beta", state="starting")
        self.manager.registry.update("beta", state="ready")
        self.assertEqual(self.receiver.messages(), [])
        self.clock.advance(1)
        self.assertEqual(self.receiver.messages(), [{"STATUS": "2 daemons: 2 ready"}])

    def test_stopping(self) -> None:
        """
        L{SystemdNotifier.stopping} sends C{STOPPING=1} once; no status is
        sent after it.
        """
        self.makeNotifier()
        self.notifier.ready()
        self.receiver.messages()
        self.manager.registry.update("beta", state="starting")
        self.notifier.stopping()
        self.notifier.stopping()
        self.clock.advance(5)
        self.assertEqual(self.receiver.messages(), [{"STOPPING": "1", "STATUS": "stopping every daemon"}])

    def test_stopServiceSendsStopping(self) -> None:
        """
        Stopping the service says C{STOPPING=1} if nobody did, and leaves
        no timer behind.
        """
        self.makeNotifier({"WATCHDOG_USEC": "1000000"})
        self.notifier.ready()
        self.manager.registry.update("beta", state="starting")
        self.receiver.messages()
        self.successResultOf(self.notifier.stopService())
        self.assertEqual(self.receiver.messages(), [{"STOPPING": "1", "STATUS": "stopping every daemon"}])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.notifier.notify(READY=1))

    def test_noNotifySocket(self) -> None:
        """
        Without C{NOTIFY_SOCKET} it does nothing at all.
        """
        notifier = SystemdNotifier(FakeManager(), Clock(), {"WATCHDOG_USEC": "1000000"})
        self.assertFalse(notifier.enabled)
        self.assertIsNone(notifier.watchdogInterval)
        notifier.startService()
        notifier.ready()
        self.assertFalse(notifier.notify(READY=1))
        self.successResultOf(notifier.stopService())

    def test_socketGone(self) -> None:
        """
        A socket that refuses (here: its file is gone) is logged once, not
        at every message, and nothing raises.
        """
        self.makeNotifier({"WATCHDOG_USEC": "1000000"})
        os.unlink(self.receiver.path)
        self.addCleanup(lambda: open(self.receiver.path, "w").close())
        with capturedLogs() as events:
            self.assertFalse(self.notifier.notify(READY=1))
            self.clock.advance(0.5)
            self.clock.advance(0.5)
        warnings = [formatEvent(e) for e in events if "cannot notify systemd" in formatEvent(e)]
        self.assertEqual(len(warnings), 1)


class WatchdogTests(NotifierMixin, SynchronousTestCase):
    """
    C{WATCHDOG=1} every half C{WATCHDOG_USEC}.
    """

    def test_pings(self) -> None:
        """
        With C{WATCHDOG_USEC} it pings at once, then every half of it.
        """
        self.makeNotifier({"WATCHDOG_USEC": "3000000"})
        self.assertEqual(self.notifier.watchdogInterval, 1.5)
        self.assertEqual(self.receiver.messages(), [{"WATCHDOG": "1"}])
        self.clock.advance(1.5)
        self.clock.advance(1.5)
        self.assertEqual(self.receiver.messages(), [{"WATCHDOG": "1"}] * 2)

    def test_ourPid(self) -> None:
        """
        A C{WATCHDOG_PID} of this process is fine; another process's means
        the watchdog is not ours.
        """
        self.assertEqual(self.makeNotifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}).watchdogInterval, 1.0)
        self.assertIsNone(self.makeNotifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdogInterval)
        self.assertEqual(self.receiver.messages(), [])

    def test_invalid(self) -> None:
        """
        An unusable C{WATCHDOG_USEC} means no watchdog.
        """
        for usec in ("", "0", "-5", "soon"):
            self.assertIsNone(self.makeNotifier({"WATCHDOG_USEC": usec}, start=False).watchdogInterval, usec)


class EndpointTests(SynchronousTestCase):
    """
    L{systemdEndpointProblem}: the syntax of C{systemd:} endpoints, with
    no descriptor passed (config validation outside systemd).
    """

    def test_valid(self) -> None:
        """
        A domain with an index or a name.
        """
        for value in (
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:index=12",
            "systemd:domain=UNIX:name=dae-web.socket",
            "systemd:INET:0",
        ):
            self.assertIsNone(systemdEndpointProblem(value), value)
            self.assertTrue(validSystemdEndpoint(value))

    def test_invalid(self) -> None:
        """
        Each mistake is named.
        """
        cases = {
            "systemd:index=0": "domain must be one of",
            "systemd:domain=IPX:index=0": "domain must be one of",
            "systemd:domain=INET": "exactly one of index= or name=",
            "systemd:domain=INET:index=0:name=web": "exactly one of index= or name=",
            "systemd:domain=INET:index=-1": "non-negative integer",
            "systemd:domain=INET:index=x": "non-negative integer",
            "systemd:domain=INET:name=": "FileDescriptorName",
            "systemd:domain=INET:index=0:backlog=5": "unknown option 'backlog'",
            "systemd:INET:index=0:domain=INET": "domain given twice",
            "tcp:8080": "not a systemd: endpoint",
        }
        for value, expected in cases.items():
            problem = systemdEndpointProblem(value)
            self.assertIsNotNone(problem, value)
            self.assertIn(expected, problem)
            self.assertFalse(validSystemdEndpoint(value))

    def test_isSystemd(self) -> None:
        """
        Only C{systemd:} strings are systemd endpoints.
        """
        self.assertTrue(isSystemdEndpoint("systemd:domain=INET:index=0"))
        self.assertFalse(isSystemdEndpoint("tcp:8080"))
        self.assertFalse(isSystemdEndpoint("unix:address=/x/systemd"))

    def test_inherited(self) -> None:
        """
        At run time, with what systemd passed: the index or name must be
        there.
        """
        passed = ListenFDs([3, 4], ("dae.socket", "web"))
        self.assertIsNone(systemdEndpointProblem("systemd:domain=INET:index=1", passed))
        self.assertIsNone(systemdEndpointProblem("systemd:domain=INET:name=web", passed))
        self.assertIn("no socket with index 2", systemdEndpointProblem("systemd:domain=INET:index=2", passed))
        self.assertIn("no socket named 'api'", systemdEndpointProblem("systemd:domain=INET:name=api", passed))


class _Datagrams(DatagramProtocol):
    """
    Collects the notifications a real manager sends, parsed, and tells
    waiters.
    """

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self._waiters: list[tuple[Callable[[dict], bool], Deferred]] = []

    def datagramReceived(self, datagram: bytes, address: Any) -> None:
        message = parseNotifyMessage(datagram)
        self.messages.append(message)
        for waiter in list(self._waiters):
            if waiter[0](message):
                self._waiters.remove(waiter)
                waiter[1].callback(message)

    def waitFor(self, predicate: Callable[[dict], bool], reactor: Any, timeout: float, what: str) -> Deferred:
        for message in self.messages:
            if predicate(message):
                return succeed(message)
        d: Deferred = Deferred()
        self._waiters.append((predicate, d))
        return withTimeout(d, timeout, reactor, what)


class ManagerUnderSystemdTests(TestCase):
    """
    A real C{twistd -n dae} tree started the way systemd starts a
    C{Type=notify} service with C{WatchdogSec=}: C{READY=1} comes once its
    daemons are ready, watchdog pings go on, C{STOPPING=1} comes on
    SIGTERM, and the daemons never see C{NOTIFY_SOCKET}.
    """

    timeout = 90

    @inlineCallbacks
    def test_readyWatchdogStopping(self):
        """
        C{READY=1} (with the manager's pid) only once every daemon is
        ready; C{WATCHDOG=1} meanwhile; C{STOPPING=1} at SIGTERM.
        """
        directory = tempfile.mkdtemp(prefix="dae-sd-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        received = _Datagrams()
        port = globalReactor.listenUNIXDatagram(path, received)
        self.addCleanup(port.stopListening)
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000"))
        tree = TwistdTree(
            self,
            {
                "slow": {"daemon": "dae_service.examples.store:Store"},
                "echo": {"daemon": "dae_service.examples.echo:Echo", "requires": ["slow"]},
            },
        )
        ready = received.waitFor(lambda m: m.get("READY") == "1", globalReactor, 30, "READY=1 (does Dae start a SystemdNotifier and call its ready()?)")
        yield tree.start()
        message = yield ready
        self.assertEqual(message["MAINPID"], str(tree.pid))
        # The manager's own registry, when it said READY=1: both ready.
        self.assertEqual(message["STATUS"], "2 daemons: 2 ready")
        self.assertEqual(sum(1 for m in received.messages if m.get("READY")), 1)
        yield received.waitFor(lambda m: m.get("WATCHDOG") == "1", globalReactor, 5, "a watchdog ping")
        # No daemon got the manager's notify socket or watchdog.
        for name, entry in tree.entries.items():
            with open(f"/proc/{entry['pid']}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            self.assertFalse([v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))], name)
        stopping = received.waitFor(lambda m: m.get("STOPPING") == "1", globalReactor, 30, "STOPPING=1")
        exited = tree.whenExited()
        tree.signal("TERM")
        yield stopping
        self.assertEqual((yield exited), (0, None))
