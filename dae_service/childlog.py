"""
A child's output: each line into C{twisted.logger} under the daemon's name,
into a per-daemon log file with size-based rotation, and into a bounded
ring of recent lines for operators.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable, Optional

from twisted.logger import Logger
from twisted.python.logfile import LogFile

__all__ = ["ChildLog"]

#: Recent lines kept in memory per daemon.
RECENT_LINES = 200


class _LogFile(LogFile):
    """
    A L{LogFile} where C{maxRotatedFiles=0} keeps no old file (Twisted's
    keeps one), so that C{backups = 0} bounds the log to C{maxBytes}.
    """

    def rotate(self) -> None:
        super().rotate()
        if self.maxRotatedFiles == 0:
            try:
                os.remove(f"{self.path}.1")
            except OSError:
                pass


class ChildLog:
    """
    Where one daemon's output goes.

    @ivar recent: the last L{RECENT_LINES} lines, as C{(time, stream, line)}.
    """

    def __init__(
        self,
        name: str,
        path: Optional[str],
        maxBytes: int,
        backups: int,
        onLine: Optional[Callable[[str, float, str, str], None]] = None,
    ) -> None:
        """
        @param onLine: called as C{onLine(name, time, stream, line)} for
            every line (the manager's fan-out to C{follow}ers).
        """
        self.name = name
        self.onLine = onLine
        self.path = path
        self.maxBytes = maxBytes
        self.backups = backups
        self.recent: deque = deque(maxlen=RECENT_LINES)
        self._log = Logger(namespace=f"dae.{name}")
        self._file: Optional[LogFile] = None

    def open(self) -> None:
        """
        Open the log file (creating its directory).
        """
        if self.path is None or self._file is not None:
            return
        directory, base = os.path.split(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._file = _LogFile(
            base,
            directory,
            rotateLength=self.maxBytes,
            defaultMode=0o600,
            # Not "or None": None would keep every rotated file forever.
            maxRotatedFiles=self.backups,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def line(self, stream: str, line: str) -> None:
        """
        Record one line the child wrote on C{stream}.
        """
        now = time.time()
        self.recent.append((now, stream, line))
        if self.onLine is not None:
            self.onLine(self.name, now, stream, line)
        self._log.info("{daemon}: {line}", daemon=self.name, line=line, stream=stream)
        if self._file is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
            self._file.write(f"{stamp} {stream} {line}\n")

    def event(self, message: str) -> None:
        """
        Record something the manager says about this daemon (started,
        exited...), in the same places.
        """
        self.line("dae", message)
