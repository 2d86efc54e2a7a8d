"""
Tests for L{dae_service.registry}: entries, observers, the state file and
atomic writes.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from dae_service import registry as registryModule
from dae_service.registry import STATES, Entry, Registry, StateFile, writeAtomically


def openDescriptors() -> int:
    """
    How many file descriptors this process has open.
    """
    return len(os.listdir("/proc/self/fd"))


class EntryTests(SynchronousTestCase):
    """
    L{Entry} and its wire form.
    """

    def test_defaults(self) -> None:
        """
        A new entry is a C{stopped} daemon with nothing known about a run.
        """
        self.assertEqual(
            Entry("a").toDict(),
            {
                "name": "a",
                "kind": "daemon",
                "state": "stopped",
                "pid": None,
                "port": None,
                "restarts": 0,
                "started": None,
                "reason": None,
                "requires": [],
            },
        )

    def test_portOnlyWhenReady(self) -> None:
        """
        C{toDict} shows the port only in state C{ready}.
        """
        for state in STATES:
            d = Entry("a", state=state, pid=7, port=4000).toDict()
            self.assertEqual(d["port"], 4000 if state == "ready" else None, state)
            self.assertEqual(d["pid"], 7)

    def test_requiresIsAList(self) -> None:
        """
        C{requires} goes on the wire as a JSON array.
        """
        d = Entry("b", requires=("a", "c")).toDict()
        self.assertEqual(d["requires"], ["a", "c"])
        json.dumps(d)

    def test_statesDescribed(self) -> None:
        """
        Every state has a description.
        """
        self.assertEqual(
            set(STATES),
            {"stopped", "waiting", "starting", "ready", "backoff", "stopping", "exited", "failed"},
        )
        self.assertTrue(all(isinstance(v, str) and v for v in STATES.values()))


class RegistryTests(SynchronousTestCase):
    """
    L{Registry}: entries and observers.
    """

    def setUp(self) -> None:
        self.registry = Registry()
        self.heard: list[Entry] = []
        self.unsubscribe = self.registry.subscribe(self.heard.append)

    def test_add(self) -> None:
        """
        C{add} stores an entry, observers hear of it, and iteration keeps the
        order of adding.
        """
        self.registry.add(Entry("b"))
        self.registry.add(Entry("a"))
        self.assertEqual([e.name for e in self.registry], ["b", "a"])
        self.assertEqual([e.name for e in self.heard], ["b", "a"])
        self.assertIn("a", self.registry)
        self.assertNotIn("c", self.registry)
        self.assertIsNone(self.registry.get("c"))
        self.assertEqual([d["name"] for d in self.registry.toList()], ["b", "a"])

    def test_updateNotifiesChange(self) -> None:
        """
        C{update} replaces fields, returns the new entry and tells observers.
        """
        self.registry.add(Entry("a"))
        new = self.registry.update("a", state="starting", pid=5)
        self.assertEqual((new.state, new.pid), ("starting", 5))
        self.assertEqual(self.registry.get("a"), new)
        self.assertEqual(self.heard[-1], new)

    def test_updateWithoutChangeIsSilent(self) -> None:
        """
        An C{update} that changes nothing is not announced.
        """
        self.registry.add(Entry("a", state="ready", port=1))
        del self.heard[:]
        self.registry.update("a", state="ready", port=1)
        self.registry.update("a")
        self.assertEqual(self.heard, [])

    def test_updateUnknown(self) -> None:
        """
        C{update} of an unknown name raises L{KeyError}.
        """
        self.assertRaises(KeyError, self.registry.update, "nope", state="ready")

    def test_remove(self) -> None:
        """
        C{remove} drops the entry and announces it as C{removed}, with no pid
        or port; removing an unknown name is silent.
        """
        self.registry.add(Entry("a", state="ready", pid=3, port=4))
        self.registry.remove("a")
        self.assertNotIn("a", self.registry)
        last = self.heard[-1]
        self.assertEqual((last.name, last.state, last.pid, last.port), ("a", "removed", None, None))
        count = len(self.heard)
        self.registry.remove("a")
        self.assertEqual(len(self.heard), count)

    def test_unsubscribe(self) -> None:
        """
        After unsubscribing an observer hears nothing; unsubscribing twice is
        harmless.
        """
        self.unsubscribe()
        self.unsubscribe()
        self.registry.add(Entry("a"))
        self.assertEqual(self.heard, [])

    def test_failingObserver(self) -> None:
        """
        An observer that raises is logged; the others still hear of the
        change, and the change is made.
        """
        def broken(entry: Entry) -> None:
            raise RuntimeError("boom")

        self.registry.subscribe(broken)
        after: list[Entry] = []
        self.registry.subscribe(after.append)
        with capturedLogs() as events:
            self.registry.add(Entry("a"))
        self.assertEqual([e.name for e in after], ["a"])
        self.assertIn("a", self.registry)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any(e.get("observer") is broken for e in events))

    def test_iterationSnapshot(self) -> None:
        """
        Iterating is safe while the registry changes.
        """
        for name in "abc":
            self.registry.add(Entry(name))
        for e in self.registry:
            self.registry.remove(e.name)
        self.assertEqual(list(self.registry), [])


class WriteAtomicallyTests(SynchronousTestCase):
    """
    L{writeAtomically}.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "state.json")

    def test_write(self) -> None:
        """
        The file holds exactly the data, with mode 0600 by default, and no
        temporary file is left.
        """
        writeAtomically(self.path, b"one")
        writeAtomically(self.path, b"two")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"two")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.directory), ["state.json"])

    def test_mode(self) -> None:
        """
        C{mode} sets the file's mode.
        """
        writeAtomically(self.path, b"x", 0o640)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)

    def test_failedReplaceKeepsOld(self) -> None:
        """
        When the final rename fails, the old content stays, the error
        propagates and no temporary file is left.
        """
        writeAtomically(self.path, b"old")

        def failingReplace(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(registryModule.os, "replace", failingReplace)
        before = openDescriptors()
        self.assertRaises(OSError, writeAtomically, self.path, b"new")
        self.assertEqual(openDescriptors(), before)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(self.directory), ["state.json"])

    def test_failedChmodLeavesNothing(self) -> None:
        """
        When setting the mode fails, no temporary file and no descriptor are
        left behind.
        """
        def failingChmod(fd: int, mode: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        self.patch(registryModule.os, "fchmod", failingChmod)
        before = openDescriptors()
        self.assertRaises(PermissionError, writeAtomically, self.path, b"new")
        self.assertEqual(openDescriptors(), before)
        self.assertEqual(os.listdir(self.directory), [])

    def test_targetIsDirectory(self) -> None:
        """
        Writing over a directory fails and leaves no temporary file.
        """
        os.mkdir(self.path)
        self.assertRaises(OSError, writeAtomically, self.path, b"x")
        self.assertEqual(os.listdir(self.directory), ["state.json"])


class StateFileTests(SynchronousTestCase):
    """
    L{StateFile}: the registry persisted as JSON.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry()
        self.registry.add(Entry("a"))
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "state.json")
        self.writes: list[tuple[str, bytes]] = []

    def recordWrites(self) -> None:
        real = writeAtomically

        def recording(path: str, data: bytes, mode: int = 0o600) -> None:
            self.writes.append((path, data))
            real(path, data, mode)

        self.patch(registryModule, "writeAtomically", recording)

    def read(self) -> Any:
        with open(self.path) as f:
            return json.load(f)

    def test_startWrites(self) -> None:
        """
        C{start} writes the current state at once: valid JSON with the extra
        fields and every entry, mode 0600.
        """
        state = StateFile(
            self.clock, self.path, self.registry, extra=lambda: {"manager": {"pid": 1}}
        )
        state.start()
        self.assertEqual(self.read(), {"manager": {"pid": 1}, "daemons": [Entry("a").toDict()]})
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_coalesces(self) -> None:
        """
        A burst of changes is written once, C{delay} after the first change,
        with the latest state.
        """
        self.recordWrites()
        state = StateFile(self.clock, self.path, self.registry, delay=0.05)
        state.start()
        self.assertEqual(len(self.writes), 1)
        self.registry.update("a", state="starting", pid=5)
        self.registry.update("a", state="ready", port=4000)
        self.registry.add(Entry("b"))
        self.assertEqual(len(self.writes), 1)
        self.clock.advance(0.049)
        self.assertEqual(len(self.writes), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.writes), 2)
        daemons = self.read()["daemons"]
        self.assertEqual([(d["name"], d["state"], d["port"]) for d in daemons],
                         [("a", "ready", 4000), ("b", "stopped", None)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.registry.update("a", state="stopping")
        self.clock.advance(0.05)
        self.assertEqual(len(self.writes), 3)
        self.assertEqual(self.read()["daemons"][0]["state"], "stopping")

    def test_stop(self) -> None:
        """
        C{stop} cancels a pending write, writes the final state at once and
        stops listening to the registry.
        """
        self.recordWrites()
        state = StateFile(self.clock, self.path, self.registry)
        state.start()
        self.registry.update("a", state="starting")
        state.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.writes), 2)
        self.assertEqual(self.read()["daemons"][0]["state"], "starting")
        self.registry.update("a", state="ready")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(len(self.writes), 2)

    def test_writeFailureLogged(self) -> None:
        """
        A state file that cannot be written is logged, not raised.
        """
        missing = os.path.join(self.path, "missing", "state.json")
        state = StateFile(self.clock, missing, self.registry)
        with capturedLogs():
            state.start()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class StateFileWriterTests(SynchronousTestCase):
    """
    L{StateFile} with an asynchronous writer (the manager's threaded one).
    """

    def test_oneWriteInFlight(self) -> None:
        """
        The first write is synchronous; later ones go through the writer.
        While a write is in flight, changes wait for it and are written once
        after it; C{stop} waits for the write in flight, then writes the
        final state last.
        """
        from twisted.internet.defer import Deferred

        clock = Clock()
        registry = Registry()
        registry.add(Entry("a"))
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "state.json")
        started: list = []

        def writer(p: str, data: bytes) -> Deferred:
            d: Deferred = Deferred()
            started.append((data, d))
            return d

        state = StateFile(clock, path, registry, delay=0.05, writer=writer)
        state.start()
        # The first write, before the reactor runs, is synchronous.
        self.assertEqual(started, [])
        with open(path) as f:
            self.assertEqual(json.load(f)["daemons"][0]["state"], "stopped")
        registry.update("a", state="ready", port=4000)
        clock.advance(0.05)
        self.assertEqual(len(started), 1)
        registry.update("a", state="stopping")
        clock.advance(0.05)
        self.assertEqual(len(started), 1)
        started[0][1].callback(None)
        self.assertEqual(len(started), 2)
        self.assertIn(b'"stopping"', started[1][0])
        registry.update("a", state="stopped")
        stopped = state.stop()
        self.assertNoResult(stopped)
        started[1][1].callback(None)
        self.successResultOf(stopped)
        with open(path) as f:
            self.assertEqual(json.load(f)["daemons"][0]["state"], "stopped")
