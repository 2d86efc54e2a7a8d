"""
The authoritative registry: daemon name -> where it runs and in what state.

Supervisors update it at the moment of each change; observers (the state
file, subscribed clients, guests connected by name) are told at once.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

__all__ = ["Entry", "Registry", "StateFile", "writeAtomically", "STATES"]

#: Every state a daemon can be in, and what it means.
STATES = {
    "stopped": "not running, and not meant to be",
    "waiting": "waiting for the daemons it requires to be ready",
    "starting": "spawned, not ready yet",
    "ready": "running and ready; port is where it listens",
    "backoff": "exited; will be restarted after a delay",
    "stopping": "asked to stop; waiting for it to exit",
    "exited": "exited and its restart policy says not to restart it",
    "failed": "gave up after repeated quick failures; an explicit start clears it",
}


@dataclass(frozen=True)
class Entry:
    """
    What the registry knows of one daemon.  Never holds a secret.

    @ivar port: where it listens; L{None} unless the state is C{ready}.
    @ivar started: ms since the epoch when the current run was spawned.
    @ivar reason: why it is in its state (e.g. C{"exit code 1"}).
    @ivar workers: for a pool, one dict per worker process (C{index},
        C{pid}, C{state}, C{connections}, C{restarts}, C{started}); else
        L{None}, and C{toDict} has no C{workers} key.
    """

    name: str
    kind: str = "daemon"
    state: str = "stopped"
    pid: Optional[int] = None
    port: Optional[int] = None
    restarts: int = 0
    started: Optional[int] = None
    reason: Optional[str] = None
    requires: tuple = field(default=())
    workers: Optional[tuple] = None

    def toDict(self) -> dict:
        """
        The entry as sent on the wire (C{list}, C{lookup}) and stored.
        """
        d = {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "pid": self.pid,
            "port": self.port if self.state == "ready" else None,
            "restarts": self.restarts,
            "started": self.started,
            "reason": self.reason,
            "requires": list(self.requires),
        }
        if self.workers is not None:
            d["workers"] = [dict(w) for w in self.workers]
        return d


Observer = Callable[[Entry], Any]


class Registry:
    """
    Entries in configuration order, with observers told of every change.
    """

    log = Logger()

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._observers: list[Observer] = []

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Optional[Entry]:
        return self._entries.get(name)

    def add(self, entry: Entry) -> None:
        self._entries[entry.name] = entry
        self._notify(entry)

    def remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._notify(replace(entry, state="removed", pid=None, port=None))

    def update(self, name: str, **changes: Any) -> Entry:
        """
        Change some fields of C{name}'s entry; observers hear of it only if
        something really changed.
        """
        old = self._entries[name]
        new = replace(old, **changes)
        if new != old:
            self._entries[name] = new
            self._notify(new)
        return new

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """
        Call C{observer(entry)} after every change.

        @return: a callable that unsubscribes.
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def toList(self) -> list[dict]:
        return [e.toDict() for e in self._entries.values()]

    def _notify(self, entry: Entry) -> None:
        for observer in list(self._observers):
            try:
                observer(entry)
            except Exception:
                self.log.failure("registry observer {observer!r} failed", observer=observer)


def writeAtomically(path: str, data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data} so that a reader, or a crash at any moment,
    sees either the old content or the new one, never a mix.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        # The file object owns the descriptor from here on: closed on error.
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class StateFile:
    """
    Persists the registry to a JSON file, atomically, coalescing the changes
    of one burst into one write, with at most one write in flight.

    @param writer: C{writer(path, data)} writes the file atomically and may
        return a Deferred; the manager passes one that runs
        L{writeAtomically} in a thread, so its C{fsync} never blocks the
        reactor.  The default writes synchronously.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        path: str,
        registry: Registry,
        extra: Callable[[], dict] = dict,
        delay: float = 0.05,
        writer: Optional[Callable[[str, bytes], Any]] = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._registry = registry
        self._extra = extra
        self._delay = delay
        self._writer = writer
        self._pending = None
        self._inFlight: Optional[Deferred] = None
        self._dirty = False
        self._unsubscribe: Optional[Callable[[], None]] = None

    def start(self) -> None:
        self._unsubscribe = self._registry.subscribe(self._changed)
        # The first write happens before the reactor runs: synchronously.
        self._writeNow(synchronous=True)

    def stop(self) -> Deferred:
        """
        Stop following the registry and write the final state.

        @return: a Deferred that fires once it is written.
        """
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        waiting = self._inFlight if self._inFlight is not None else succeed(None)
        final: Deferred = Deferred()
        # The last write must land after any write still in flight.
        waiting.addBoth(lambda _: self._writeNow(synchronous=True)).addBoth(final.callback)
        return final

    def _changed(self, entry: Entry) -> None:
        if self._pending is None or not self._pending.active():
            self._pending = self._clock.callLater(self._delay, self.write)

    def write(self) -> None:
        """
        Write the current state now, or right after the write in flight.
        """
        self._pending = None
        if self._inFlight is not None:
            self._dirty = True
            return
        self._writeNow()

    def _snapshot(self) -> bytes:
        state = dict(self._extra())
        state["daemons"] = self._registry.toList()
        return json.dumps(state, indent=1).encode("utf-8") + b"\n"

    def _writeNow(self, synchronous: bool = False) -> None:
        data = self._snapshot()
        try:
            if synchronous:
                writeAtomically(self.path, data)
                return
            writer = writeAtomically if self._writer is None else self._writer
            result = writer(self.path, data)
        except OSError:
            self.log.failure("cannot write the state file {path}", path=self.path)
            return
        if isinstance(result, Deferred):
            self._inFlight = result
            result.addErrback(
                lambda f: self.log.failure("cannot write the state file {path}", f, path=self.path)
            )
            result.addBoth(self._written)

    def _written(self, _: Any) -> None:
        self._inFlight = None
        if self._dirty:
            self._dirty = False
            self._writeNow()
