"""
Tests for L{dae_service.notify}: the message parser, then a real datagram
socket in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dae_service.notify import MAX_DATAGRAM, NotifySocket, parseNotifyMessage


class ParseTests(SynchronousTestCase):
    """
    L{parseNotifyMessage}.
    """

    def test_keyValueLines(self) -> None:
        """
        Each C{KEY=VALUE} line is an entry; the value may hold C{=}.
        """
        self.assertEqual(
            parseNotifyMessage(b"READY=1\nSTATUS=a=b c\nMAINPID=42\n"),
            {"READY": "1", "STATUS": "a=b c", "MAINPID": "42"},
        )

    def test_junkSkipped(self) -> None:
        """
        Empty lines, lines without C{=} and empty keys are skipped; bad
        UTF-8 is replaced.
        """
        self.assertEqual(
            parseNotifyMessage(b"\nnoequals\n=x\nSTATUS=\xff\n"), {"STATUS": "\ufffd"}
        )
        self.assertEqual(parseNotifyMessage(b""), {})


class NotifySocketTests(TestCase):
    """
    L{NotifySocket} with a real socket.
    """

    timeout = 10

    def setUp(self) -> None:
        # Short, private, and not under _trial_temp: a UNIX socket path
        # must fit in 108 bytes.
        self.directory = tempfile.mkdtemp(prefix="dae-notify-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "notify")
        self.messages: list[dict] = []
        self.waiters: list[Deferred] = []
        self.notify = NotifySocket(reactor, self.path, self._message)
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender.setblocking(False)
        self.addCleanup(self.sender.close)

    def _message(self, state: dict) -> None:
        self.messages.append(state)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(state)

    def nextMessage(self) -> Deferred:
        d: Deferred = Deferred()
        self.waiters.append(d)
        return d

    def start(self) -> None:
        self.notify.start()
        self.addCleanup(self.notify.stop)

    @inlineCallbacks
    def test_receives(self):
        """
        A datagram becomes a dict for C{onMessage}; the socket is private
        (0600).
        """
        self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        received = self.nextMessage()
        self.sender.sendto(b"READY=1\nSTATUS=listening", self.path)
        state = yield received
        self.assertEqual(state, {"READY": "1", "STATUS": "listening"})

    @inlineCallbacks
    def test_oversizedAndEmptyIgnored(self):
        """
        A datagram over the limit and one with no entries are dropped; the
        next good one gets through.  A datagram of exactly the limit is
        accepted.
        """
        self.start()
        received = self.nextMessage()
        self.sender.sendto(b"STATUS=" + b"x" * MAX_DATAGRAM, self.path)
        self.sender.sendto(b"\n\n", self.path)
        self.sender.sendto(b"READY=1", self.path)
        self.assertEqual((yield received), {"READY": "1"})
        received = self.nextMessage()
        exact = b"STATUS=" + b"y" * (MAX_DATAGRAM - 7)
        self.sender.sendto(exact, self.path)
        self.assertEqual((yield received), {"STATUS": "y" * (MAX_DATAGRAM - 7)})
        self.assertEqual(len(self.messages), 2)

    @inlineCallbacks
    def test_handlerErrorContained(self):
        """
        An exception from C{onMessage} is logged; the socket keeps working.
        """
        calls = []

        def broken(state: dict) -> None:
            calls.append(state)
            if len(calls) == 1:
                raise RuntimeError("bug")
            self._message(state)

        self.notify = NotifySocket(reactor, self.path, broken)
        self.start()
        received = self.nextMessage()
        self.sender.sendto(b"A=1", self.path)
        self.sender.sendto(b"B=2", self.path)
        self.assertEqual((yield received), {"B": "2"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_staleSocketReplacedAndRemovedOnStop(self):
        """
        A socket file left by an earlier run is replaced; C{stop} removes
        the file, and stopping twice is harmless.
        """
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stale.bind(self.path)
        stale.close()
        self.notify.start()
        received = self.nextMessage()
        self.sender.sendto(b"READY=1", self.path)
        yield received
        yield self.notify.stop()
        self.assertFalse(os.path.exists(self.path))
        yield self.notify.stop()

    def test_refusesToReplaceAFile(self):
        """
        Something other than a socket at the path is left alone.
        """
        with open(self.path, "w") as f:
            f.write("precious")
        self.assertRaises(FileExistsError, self.notify.start)
        with open(self.path) as f:
            self.assertEqual(f.read(), "precious")
