"""
Tests for L{dae_service.childlog}: a daemon's output in a rotated file, a
bounded ring and log events.
"""

from __future__ import annotations

import os
import re
import stat

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from dae_service.childlog import RECENT_LINES, ChildLog


class ChildLogTests(SynchronousTestCase):
    """
    L{ChildLog}.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.directory, "logs", "alpha.log")

    def makeLog(self, maxBytes: int = 10_000, backups: int = 3) -> ChildLog:
        log = ChildLog("alpha", self.path, maxBytes, backups)
        log.open()
        self.addCleanup(log.close)
        return log

    def files(self) -> list[str]:
        return sorted(os.listdir(os.path.dirname(self.path)))

    def test_open(self) -> None:
        """
        C{open} creates the directory (0700) and the file (0600).
        """
        self.makeLog()
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_lines(self) -> None:
        """
        Each line goes to the file as C{TIME STREAM LINE}, in order;
        C{event} lines have the stream C{dae}.
        """
        log = self.makeLog()
        with capturedLogs():
            log.line("stdout", "hello")
            log.line("stderr", "oops: ünïcode")
            log.event("exit code 1")
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3)
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
        self.assertRegex(lines[0], f"^{stamp} stdout hello$")
        self.assertRegex(lines[1], f"^{stamp} stderr oops: ünïcode$")
        self.assertRegex(lines[2], f"^{stamp} dae exit code 1$")

    def test_rotation(self) -> None:
        """
        Past C{maxBytes} the file is rotated to C{.1}, C{.2}...; no more than
        C{backups} old files are kept, and none holds much more than
        C{maxBytes}.
        """
        log = self.makeLog(maxBytes=200, backups=2)
        with capturedLogs():
            for i in range(100):
                log.line("stdout", f"line {i:03d} " + "x" * 20)
        self.assertEqual(self.files(), ["alpha.log", "alpha.log.1", "alpha.log.2"])
        lineLength = len("2000-01-01T00:00:00 stdout line 000 " + "x" * 20 + "\n")
        for name in self.files():
            self.assertLessEqual(
                os.path.getsize(os.path.join(os.path.dirname(self.path), name)), 200 + lineLength
            )
        with open(self.path) as f:
            self.assertTrue(f.read().rstrip("\n").endswith("line 099 " + "x" * 20))
        with open(self.path + ".1") as current, open(self.path + ".2") as older:
            first = int(re.search(r"line (\d+)", current.read()).group(1))
            second = int(re.search(r"line (\d+)", older.read()).group(1))
        self.assertLess(second, first)

    def test_noBackups(self) -> None:
        """
        With C{backups=0} rotation keeps no old file at all: the log never
        grows past about C{maxBytes} on disk.
        """
        log = self.makeLog(maxBytes=100, backups=0)
        with capturedLogs():
            for i in range(50):
                log.line("stdout", f"line {i:03d} " + "y" * 20)
        self.assertEqual(self.files(), ["alpha.log"])

    def test_reopenAppends(self) -> None:
        """
        A log opened again (a restarted manager) appends to the file.
        """
        log = self.makeLog()
        with capturedLogs():
            log.line("stdout", "first")
        log.close()
        log.open()
        with capturedLogs():
            log.line("stdout", "second")
        with open(self.path) as f:
            self.assertEqual([line.split(" ", 2)[2] for line in f.read().splitlines()],
                             ["first", "second"])

    def test_recentBounded(self) -> None:
        """
        C{recent} keeps the last L{RECENT_LINES} lines as C{(time, stream,
        line)}.
        """
        log = ChildLog("alpha", None, 1000, 1)
        with capturedLogs():
            for i in range(RECENT_LINES + 50):
                log.line("stdout", str(i))
        self.assertEqual(len(log.recent), RECENT_LINES)
        self.assertEqual(log.recent[0][1:], ("stdout", "50"))
        self.assertEqual(log.recent[-1][1:], ("stdout", str(RECENT_LINES + 49)))
        self.assertIsInstance(log.recent[-1][0], float)

    def test_noFile(self) -> None:
        """
        Without a path nothing is written anywhere; C{open} and C{close} do
        nothing.
        """
        log = ChildLog("alpha", None, 1000, 1)
        log.open()
        with capturedLogs():
            log.line("stdout", "x")
        log.close()
        log.close()
        self.assertEqual(len(log.recent), 1)

    def test_logEvents(self) -> None:
        """
        Every line is an info event in the daemon's namespace, carrying the
        daemon's name, the stream and the line, and formatting as
        C{NAME: LINE}.
        """
        log = ChildLog("alpha", None, 1000, 1)
        with capturedLogs() as events:
            log.line("stderr", "Traceback {not a format}")
            log.event("ready on port 4000")
        self.assertEqual(
            [
                (e["log_namespace"], e["log_level"], e["daemon"], e["stream"], e["line"])
                for e in events
            ],
            [
                ("dae.alpha", LogLevel.info, "alpha", "stderr", "Traceback {not a format}"),
                ("dae.alpha", LogLevel.info, "alpha", "dae", "ready on port 4000"),
            ],
        )
        self.assertEqual(formatEvent(events[0]), "alpha: Traceback {not a format}")
