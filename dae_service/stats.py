"""
Counting the Common TCP commands and faults one process answers, with
bounded label sets (names come from clients), and the C{stats} report event
a child sends the manager.  Light on purpose: every daemon process imports
it, so it imports nothing heavy (the Prometheus side is L{metrics}).
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = [
    "CommandStats",
    "MAX_COMMAND_NAMES",
    "MAX_FAULT_CODES",
    "MAX_LABEL_LENGTH",
    "MAX_STATS_EVENT_BYTES",
    "OTHER",
]

#: Distinct command names, and fault codes, counted per process (and per
#: daemon in the manager); the rest are counted under L{OTHER}.  Label
#: values come from clients (any command name a client sends), so they must
#: be bounded or one client could blow up every scrape.
MAX_COMMAND_NAMES = 100
MAX_FAULT_CODES = 30

#: The label value that counts the names beyond the bound.
OTHER = "_other"

#: The longest command name or fault code kept as it is (longer ones are
#: counted under L{OTHER}).
MAX_LABEL_LENGTH = 64

#: A child's report line must stay under PIPE_BUF (4096 bytes) to be
#: written atomically; a C{stats} event is cut to fit this budget.
MAX_STATS_EVENT_BYTES = 3500

def _validLabel(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_LABEL_LENGTH and value.isprintable()


def _validCount(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _BoundedCounts:
    """
    Counts by label value, at most C{limit} distinct values; the rest (and
    invalid ones) count under L{OTHER}.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def add(self, label: Any, count: int = 1) -> None:
        if not _validLabel(label) or (label not in self.counts and len(self.counts) >= self.limit):
            label = OTHER
        self.counts[label] = self.counts.get(label, 0) + count

    def copy(self) -> dict[str, int]:
        return dict(self.counts)


class CommandStats:
    """
    The Common TCP commands one process answered, by command name, and the
    faults it answered with, by code.  Cumulative since the process started.

    A child reports them to the manager as one report-pipe line (see
    L{reportEvent}); the manager's control daemon fills one of its own
    (L{DaeMetrics.controlStats}).
    """

    __slots__ = ("_commands", "_faults", "generation")

    def __init__(self) -> None:
        self._commands = _BoundedCounts(MAX_COMMAND_NAMES)
        self._faults = _BoundedCounts(MAX_FAULT_CODES)
        #: Bumped at every change: a reporter sends only when it moved.
        self.generation = 0

    def command(self, name: str) -> None:
        """
        Count one command named C{name}.  On the path of every packet: a
        name already counted costs one dict update.
        """
        counts = self._commands.counts
        if name in counts:
            counts[name] += 1
        else:
            self._commands.add(name)
        self.generation += 1

    def fault(self, code: str) -> None:
        """
        Count one fault reply with C{code}.
        """
        self._faults.add(code)
        self.generation += 1

    @property
    def commands(self) -> dict[str, int]:
        return self._commands.copy()

    @property
    def faults(self) -> dict[str, int]:
        return self._faults.copy()

    def reportEvent(self, maxBytes: int = MAX_STATS_EVENT_BYTES) -> dict:
        """
        The C{stats} report event a child writes to its report pipe::

            {"event": "stats", "pid": 1234,
             "commands": {"get": 12, "set": 3}, "faults": {"bad_args": 1}}

        Counts are cumulative since the child started.  The line is kept
        under C{maxBytes} (a report line must stay below PIPE_BUF): if it
        would not fit, the least used names are folded into L{OTHER}.
        """
        commands, faults = self.commands, self.faults
        while True:
            event = {"event": "stats", "pid": os.getpid(), "commands": commands, "faults": faults}
            if len(json.dumps(event, separators=(",", ":"))) <= maxBytes:
                return event
            biggest = commands if len(commands) >= len(faults) else faults
            if len(biggest) <= 1:
                return {"event": "stats", "pid": os.getpid(), "commands": {}, "faults": {}}
            least = min((k for k in biggest if k != OTHER), key=lambda k: biggest[k])
            biggest[OTHER] = biggest.get(OTHER, 0) + biggest.pop(least)
