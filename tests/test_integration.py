"""
Integration tests: the real thing.  Each test starts a real C{twistd -n dae}
tree (L{tests.twistdtree.TwistdTree}) whose daemons are real child
processes, and talks to them over real sockets (a UNIX socket or loopback
TCP for the manager, loopback TCP for the daemons).

Bad input (PROTOCOL.md, Part 1's crash inputs and Part 2's framing): a
daemon answers each with the exact fault or reply, keeps serving the same
client and every other one, and keeps its pid.

The manager: a killed child comes back, a crash loop gives up and an
explicit start clears it, SIGTERM stops the whole tree and exits 0, SIGKILL
of the manager takes the children down, SIGHUP restarts only what changed,
a foreign command's port is learned, dependencies order start and stop, and
a TCP manager wants its token.

Real processes started by a run: 12 trees and 13 twistd managers (one tree
is started twice), with 29 daemon children in them (counting restarts and
the crash loop's four attempts); about 10 s on an idle 2-CPU machine.  A
test waits for events (the manager's C{changed} pushes, replies, process
exits), never for time; where there is no event (processes that are not
ours exiting, a child's output reaching the manager's log) it polls with a
bound.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from dae_service import Fault
from tests.twistdtree import (
    TwistdTree,
    processState,
    waitForProcessesGone,
    withTimeout,
)

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY = os.path.join(HERE, "legacy_daemon.py")

STORE = {"daemon": "dae_service.examples.store:Store", "listen": "tcp:0:interface=127.0.0.1"}
FAULTY = {"daemon": "tests.integration_daemons:Faulty", "listen": "tcp:0:interface=127.0.0.1"}
LEGACY_COMMAND = {"command": [sys.executable, LEGACY]}

#: The daemons' packet limit (PROTOCOL.md: 1 MiB by default).
MAX_LENGTH = 1024 * 1024


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def packet(line: bytes) -> tuple:
    """
    Decode one reply line, checking that it is in the form we send:
    C{NAME SP compact-ASCII-JSON-array}.
    """
    _check(all(b < 0x80 for b in line), f"non-ASCII byte on the wire: {line[:200]!r}")
    name, space, rest = line.partition(b" ")
    _check(space, f"no space in {line[:200]!r}")
    args = json.loads(rest)
    _check(isinstance(args, list), f"arguments are not an array: {line[:200]!r}")
    compact = json.dumps(args, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    _check(rest == compact, f"not compact JSON: {rest[:200]!r}")
    return name.decode("ascii"), args


def fault(line: bytes) -> dict:
    """
    The body of a C{fault} reply line (and check that it is one).
    """
    name, args = packet(line)
    _check(name == "fault", f"expected a fault, got {line[:200]!r}")
    _check(len(args) == 1 and isinstance(args[0], dict), f"malformed fault {line[:200]!r}")
    body = args[0]
    _check(set(body) >= {"command", "code", "message"}, f"fault lacks keys: {body!r}")
    _check(isinstance(body["message"], str), f"fault message is not a string: {body!r}")
    return body


class _BadInputMixin:
    """
    The checks every bad-input test makes after each bad input.
    """

    @inlineCallbacks
    def startStoreTree(self, **extra):
        daemons = {"store": STORE}
        daemons.update(extra)
        self.tree = TwistdTree(self, daemons)
        entries = yield self.tree.start()
        self.pids = {name: entry["pid"] for name, entry in entries.items()}
        self.ports = {name: entry["port"] for name, entry in entries.items()}
        # The second, independent client: connected before any bad input.
        self.witness = self.tree.daemonGuest("store")
        yield self.witness.call("set", "witness", 1)
        return entries

    @inlineCallbacks
    def assertStillServing(self, what: str, name: str = "store"):
        """
        After C{what}: an independent client still gets answers, and the
        daemon still runs in the same process.
        """
        if name == "store":
            value = yield self.witness.call("get", "witness")
            self.assertEqual(value, 1, f"after {what}: the witness client")
        entry = yield self.tree.call("lookup", name)
        self.assertEqual(entry["state"], "ready", f"after {what}")
        self.assertEqual(entry["pid"], self.pids[name], f"after {what}: {name} was restarted")
        # A fresh connection too.
        client = yield self.tree.connectRaw(name)
        client.send(b"whois []\n")
        lines = yield client.waitForLines(1)
        reply, args = packet(lines[0])
        self.assertEqual(reply, "credential", f"after {what}")
        self.assertEqual(
            (args[0]["name"], args[0]["pid"], args[0]["port"]),
            (name, self.pids[name], self.ports[name]),
            f"after {what}",
        )
        client.transport.loseConnection()

    @inlineCallbacks
    def barrier(self):
        """
        Let the daemon read what a raw client wrote with C{sendNow}: a round
        trip on another connection to it.  Those bytes were in the daemon's
        socket before the round trip's request was sent, and the daemon's
        reactor handles every socket that is ready in an iteration before
        its reply (written on a later turn) leaves.  So the next bytes the
        raw client sends arrive in a read of their own.
        """
        yield self.witness.call("get", "witness")


class BadInputTests(_BadInputMixin, TestCase):
    """
    A real store daemon (and a daemon whose handler raises) against
    PROTOCOL.md, Part 1's crash inputs.
    """

    timeout = 60

    @inlineCallbacks
    def test_faultsKeepEveryoneServed(self):
        """
        Every bad packet gets exactly one C{fault} with the right code, on a
        connection that stays open and answers the next command; another
        client is served throughout; the daemon keeps its pid.  A handler
        that raises costs an C{internal} fault with a short message, and its
        traceback is logged by the daemon.
        """
        yield self.startStoreTree(faulty=FAULTY)
        cases = [
            ("x null", b"x null\n", "x", "bad_args"),
            ("a packet named error", b"error []\n", "error", "unknown_command"),
            ("invalid JSON", b'set ["k",}\n', "set", "bad_json"),
            ("NaN", b"get [NaN]\n", "get", "bad_json"),
            ("args not an array", b'get {"k":1}\n', "get", "bad_args"),
            ("too few arguments", b"get []\n", "get", "bad_args"),
            ("too many arguments", b'get ["a","b"]\n', "get", "bad_args"),
            ("an unknown command", b"nope []\n", "nope", "unknown_command"),
            ("unknown command with bad count", b'nope ["a"]\n', "nope", "unknown_command"),
            ("a name with a control character", b"g\x01t []\n", None, "bad_packet"),
        ]
        for what, data, command, code in cases:
            client = yield self.tree.connectRaw("store")
            client.send(data + b'get ["witness"]\n')
            lines = yield client.waitForLines(2)
            body = fault(lines[0])
            self.assertEqual((body["command"], body["code"]), (command, code), what)
            self.assertEqual(packet(lines[1]), ("get", [1]), f"{what}: the same connection")
            self.assertIsNone(client.lostReason, f"{what}: a fault closed the connection")
            client.transport.loseConnection()
            yield self.assertStillServing(what)

        # A handler that raises.
        client = yield self.tree.connectRaw("faulty")
        client.send(b"boom []\nping []\n")
        lines = yield client.waitForLines(2)
        body = fault(lines[0])
        self.assertEqual((body["command"], body["code"]), ("boom", "internal"))
        self.assertNotIn("Traceback", body["message"])
        self.assertNotIn("kaboom", body["message"], "the exception's text leaked to the wire")
        self.assertEqual(packet(lines[1]), ("ping", ["pong"]))
        yield self.assertStillServing("a handler that raised", "faulty")
        yield self.assertStillServing("a handler that raised (other daemon)", "store")
        logged = yield self.pollLogs("faulty", "kaboom on purpose")
        self.assertIn("Traceback", logged)

    @inlineCallbacks
    def pollLogs(self, name: str, needle: str, timeout: float = 10):
        """
        Ask the manager for C{name}'s recent output every 50 ms (bounded)
        until it contains C{needle}: the child's stderr reaches the manager
        through a pipe, with no event to wait for.
        """
        deadline = reactor.seconds() + timeout
        while True:
            lines = yield self.tree.call("logs", name, 200)
            text = "\n".join(line[2] for line in lines)
            if needle in text:
                return text
            if reactor.seconds() > deadline:
                self.fail(f"{needle!r} not in {name}'s log:\n{text[-3000:]}")
            yield deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def test_framing(self):
        """
        Coalesced packets, a packet split over two reads, Node-style packets
        with no delimiter, a 100 kB packet and non-ASCII text are all
        answered exactly; replies are compact ASCII JSON.
        """
        yield self.startStoreTree()

        # Several packets in one write: one reply each, in order.
        client = yield self.tree.connectRaw("store")
        client.send(b'set ["c1",1]\nset ["c2",[2,"two"]]\nget ["c1"]\nget ["c2"]\nget ["c3"]\n')
        lines = yield client.waitForLines(5)
        self.assertEqual(
            [packet(line) for line in lines],
            [
                ("set", [True]),
                ("set", [True]),
                ("get", [1]),
                ("get", [[2, "two"]]),
                ("get", [None]),
            ],
        )
        yield self.assertStillServing("coalesced packets")

        # One packet in two writes, read in two reads (see barrier).
        client.sendNow(b'set ["split",')
        yield self.barrier()
        self.assertNotIn(b"fault", client.received, "half a packet was answered")
        client.send(b'"v"]\nget ["split"]\n')
        lines = yield client.waitForLines(7)
        self.assertEqual([packet(line) for line in lines[5:]], [("set", [True]), ("get", ["v"])])
        yield self.assertStillServing("a split packet")

        # Node-style: no delimiter at all, several in one write, and one
        # split over two writes.
        node = yield self.tree.connectRaw("store")
        node.send(b'set ["n",1]get ["n"]whois []')
        lines = yield node.waitForLines(3)
        self.assertEqual([packet(line) for line in lines[:2]], [("set", [True]), ("get", [1])])
        self.assertEqual(packet(lines[2])[0], "credential")
        node.sendNow(b'set ["m",')
        yield self.barrier()
        node.send(b"2]")
        yield node.waitForLines(4)
        node.send(b'get ["m"]')
        lines = yield node.waitForLines(5)
        self.assertEqual([packet(line) for line in lines[3:]], [("set", [True]), ("get", [2])])
        yield self.assertStillServing("Node-style packets")

        # A 100 kB packet, and its 100 kB reply.
        big = "x" * 100_000
        client = yield self.tree.connectRaw("store")
        client.send(b'set ["big","' + big.encode() + b'"]\nget ["big"]\n')
        lines = yield client.waitForLines(2)
        self.assertEqual(packet(lines[0]), ("set", [True]))
        self.assertEqual(lines[1], b'get ["' + big.encode() + b'"]')
        yield self.assertStillServing("a 100 kB packet")

        # Non-ASCII text in, \\u escapes out.
        text = "h\u00e9llo \u2603 \U0001f389"
        client = yield self.tree.connectRaw("store")
        client.send('set ["k","{}"]\nget ["k"]\n'.format(text).encode("utf-8"))
        lines = yield client.waitForLines(2)
        self.assertEqual(packet(lines[0]), ("set", [True]))
        self.assertEqual(lines[1], b'get ["h\\u00e9llo \\u2603 \\ud83c\\udf89"]')
        self.assertEqual(packet(lines[1]), ("get", [text]))
        value = yield self.witness.call("get", "k")
        self.assertEqual(value, text)
        yield self.assertStillServing("non-ASCII text")

    @inlineCallbacks
    def test_connectionEnds(self):
        """
        A reset in the middle of a packet, an over-long packet (C{too_long},
        then the daemon closes), C{dae} (a credential, then the daemon
        closes, answering nothing after it) and a client's half-close (the
        replies still come) leave the daemon serving everyone else.
        """
        yield self.startStoreTree()
        pid, port = self.pids["store"], self.ports["store"]

        # A TCP reset in the middle of a packet.
        client = yield self.tree.connectRaw("store")
        client.sendNow(b'set ["reset",')
        yield self.barrier()
        client.reset()
        yield client.whenLost()
        yield self.assertStillServing("a reset mid-packet")
        value = yield self.witness.call("get", "reset")
        self.assertIsNone(value, "half a packet was run")

        # A packet longer than the limit: one too_long fault, then close.
        # Send just past the limit and nothing more: the client is done
        # writing (and reading) when the daemon closes, so even a reset for
        # the few bytes the daemon may leave unread comes after the fault.
        client = yield self.tree.connectRaw("store")
        client.send(b'set ["k","' + b"x" * MAX_LENGTH + b"xxxx")
        yield client.whenLost()
        lines = client.received.split(b"\n")
        self.assertEqual(lines[-1], b"", f"no complete reply: {client.received[:300]!r}")
        self.assertEqual(len(lines), 2, f"expected one reply: {client.received[:300]!r}")
        body = fault(lines[0])
        self.assertEqual((body["command"], body["code"]), (None, "too_long"))
        yield self.assertStillServing("an over-long packet")

        # dae: the credential (no secret), then the daemon closes; a command
        # after it on the same connection gets nothing.
        client = yield self.tree.connectRaw("store")
        client.send(b'dae []\nset ["after-dae",1]\n')
        yield client.whenLost()
        self.assertEqual(client.received, b'credential ["store",%d,%d,null]\n' % (pid, port))
        yield self.barrier()
        value = yield self.witness.call("get", "after-dae")
        self.assertIsNone(value, "a command after dae was run")
        yield self.assertStillServing("dae")

        # Half-close right after dae: the reply still comes.
        client = yield self.tree.connectRaw("store")
        client.send(b"dae []\n")
        client.halfClose()
        yield client.whenLost()
        self.assertEqual(client.received, b'credential ["store",%d,%d,null]\n' % (pid, port))

        # Half-close after commands, the last one unterminated: end of input
        # ends it, and every reply comes before the daemon closes.
        client = yield self.tree.connectRaw("store")
        client.send(b'set ["h",1]\nget ["h"]')
        client.halfClose()
        yield client.whenLost()
        self.assertEqual(client.received, b"set [true]\nget [1]\n")

        # A bare name on a line is a packet with no arguments.
        client = yield self.tree.connectRaw("store")
        client.send(b"dae\r\n")
        yield client.whenLost()
        self.assertEqual(client.received, b'credential ["store",%d,%d,null]\n' % (pid, port))
        yield self.assertStillServing("half-closes")


def _pids(entries: dict) -> dict:
    return {name: entry["pid"] for name, entry in entries.items()}


@inlineCallbacks
def _running(tree: TwistdTree, *names: str):
    """
    Wait until each python daemon in C{names} has answered a command: its
    reactor then runs, with its signal handlers installed.  A child
    reports "ready" before that (see test_stopRightAfterReadyIsGraceful),
    so a test that wants a graceful stop must wait for this first.
    """
    for name in names:
        credential = yield tree.daemonGuest(name).call("whois")
        _check(credential["name"] == name, f"{name} answered as {credential!r}")


class ManagerTests(TestCase):
    """
    The manager (C{twistd -n dae}) supervising real children.
    """

    timeout = 60

    @inlineCallbacks
    def test_killedChildComesBack(self):
        """
        A child killed with SIGKILL is restarted: the registry shows it
        ready again with a new pid and port, C{restarts} one higher, and
        the old process is gone (reaped).
        """
        tree = TwistdTree(
            self,
            {
                "store": STORE,
                "echo": {"daemon": "dae_service.examples.echo:Echo"},
                "legacy": LEGACY_COMMAND,
            },
        )
        entries = yield tree.start()
        old = entries["store"]
        seen = len(tree.events)
        os.kill(old["pid"], signal.SIGKILL)
        new = yield tree.waitForEntry(
            "store",
            lambda e: e["state"] == "ready" and e["pid"] != old["pid"],
            what="store back with a new pid",
        )
        self.assertEqual(new["restarts"], old["restarts"] + 1)
        self.assertIsInstance(new["port"], int)
        self.assertGreaterEqual(new["started"], old["started"])
        backoff = [
            e for e in tree.events[seen:] if e["name"] == "store" and e["state"] == "backoff"
        ]
        self.assertTrue(backoff, f"no backoff event: {tree.events[seen:]}")
        self.assertIn("SIGKILL", backoff[0]["reason"])
        looked = yield tree.call("lookup", "store")
        self.assertEqual((looked["pid"], looked["port"]), (new["pid"], new["port"]))
        self.assertIsNone(processState(old["pid"]), "the killed child was not reaped")
        guest = tree.daemonGuest("store")
        yield guest.call("set", "k", "v")
        value = yield guest.call("get", "k")
        self.assertEqual(value, "v")
        # The other daemons were left alone.
        echo = yield tree.call("lookup", "echo")
        self.assertEqual((echo["pid"], echo["restarts"]), (entries["echo"]["pid"], 0))

        # A foreign command too: its new port is learned again.
        old = entries["legacy"]
        os.kill(old["pid"], signal.SIGKILL)
        new = yield tree.waitForEntry(
            "legacy",
            lambda e: e["state"] == "ready" and e["pid"] != old["pid"],
            what="legacy back with a new pid",
        )
        self.assertEqual(new["restarts"], old["restarts"] + 1)
        client = yield tree.connectRaw("legacy")
        client.send(b"dae []")
        yield client.whenLost()
        self.assertEqual(
            client.received, b'credential ["legacy",%d,%d,null]' % (new["pid"], new["port"])
        )

    @inlineCallbacks
    def test_crashLoopGivesUp(self):
        """
        A daemon that cannot start is retried with backoff, then given up:
        C{failed}, with a reason, in C{list}, and so is what requires it
        (never spawned).  An explicit C{start} (no auth on the UNIX socket)
        clears that: it is spawned again, fails again, and the C{start} call
        fails with C{start_failed}.
        """
        tree = TwistdTree(
            self,
            {
                "crasher": {
                    "daemon": "tests.integration_daemons:Crasher",
                    "backoff_initial": 0.05,
                    "backoff_max": 0.2,
                    "jitter": 0,
                    "give_up_after": 2,
                },
                "dependent": {"daemon": "tests.integration_daemons:Probe", "requires": ["crasher"]},
            },
        )

        def bothFailed(entries: dict) -> bool:
            return all(entries[name]["state"] == "failed" for name in ("crasher", "dependent"))

        yield tree.start(until=bothFailed)
        listed = yield tree.call("list")
        self.assertEqual([e["name"] for e in listed], ["crasher", "dependent"])
        entry, dependent = listed
        # What requires it is never spawned, and says why.
        self.assertEqual((dependent["pid"], dependent["started"]), (None, None))
        self.assertIn("crasher", dependent["reason"])
        self.assertNotIn("dependent: spawned", tree.log())
        self.assertEqual(
            (entry["name"], entry["state"], entry["pid"], entry["port"]),
            ("crasher", "failed", None, None),
        )
        self.assertIn("2 quick failures", entry["reason"])
        self.assertIn("crash on purpose", entry["reason"])
        self.assertEqual(entry["restarts"], 1)
        status = yield tree.call("status", "crasher")
        self.assertEqual(status["quick_failures"], 2)

        seen = len(tree.events)
        d = tree.call("start", "crasher", timeout=30)
        error = yield self.assertFailure(d, Fault)
        self.assertEqual((error.code, error.command), ("start_failed", "start"))
        states = [e["state"] for e in tree.events[seen:] if e["name"] == "crasher"]
        # One state per change of state (a pid arriving is a change too).
        states = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
        self.assertEqual(
            states,
            ["starting", "backoff", "starting", "failed"],
            "start did not clear the failure and run the crash loop again",
        )
        entry = yield tree.call("lookup", "crasher")
        self.assertEqual(entry["state"], "failed")
        self.assertEqual(entry["restarts"], 2)

    @inlineCallbacks
    def test_sigtermStopsEverything(self):
        """
        SIGTERM to the manager stops every child (python daemons and a
        foreign command), reaps them all, and exits with status 0.
        """
        tree = TwistdTree(
            self,
            {
                "store": STORE,
                "probe": {"daemon": "tests.integration_daemons:Probe", "requires": ["store"]},
                "legacy": LEGACY_COMMAND,
            },
        )
        entries = yield tree.start()
        yield _running(tree, "store", "probe")
        pids = _pids(entries)
        self.assertEqual(len(set(pids.values())), 3, pids)
        for name, pid in pids.items():
            self.assertIsNotNone(processState(pid), f"{name} is not running")
        tree.signal("TERM")
        ended = yield withTimeout(tree.whenExited(), 30, reactor, "the manager to exit")
        self.assertEqual(ended, (0, None), tree.describe())
        # The manager exits only once its children are reaped: nothing left,
        # not even a zombie, without waiting.
        left = {name: processState(pid) for name, pid in pids.items() if processState(pid)}
        self.assertEqual(left, {}, "children outlived the manager (state letters)")
        # Python daemons stopped gracefully; the foreign one by the signal.
        log = tree.log()
        self.assertIn("store: exit code 0", log)
        self.assertIn("probe: exit code 0", log)
        self.assertIn("legacy: killed by SIGTERM", log)
        with open(os.path.join(tree.stateDir, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        self.assertEqual(
            {e["name"]: (e["state"], e["pid"]) for e in state["daemons"]},
            {name: ("stopped", None) for name in pids},
        )

    @inlineCallbacks
    def test_stopRightAfterReadyIsGraceful(self):
        """
        A daemon stopped as soon as the manager says it is ready stops
        gracefully (exit code 0), like one stopped later.
        """
        probe = {"daemon": "tests.integration_daemons:Probe"}
        tree = TwistdTree(self, {"p1": probe, "p2": probe, "p3": probe})
        yield tree.start()
        tree.signal("TERM")
        ended = yield withTimeout(tree.whenExited(), 30, reactor, "the manager to exit")
        self.assertEqual(ended, (0, None))
        log = tree.log()
        for name in ("p1", "p2", "p3"):
            self.assertIn(f"{name}: exit code 0", log)

    @inlineCallbacks
    def test_sigkillOfManagerTakesChildrenDown(self):
        """
        When the manager is killed with SIGKILL (no chance to stop anyone),
        its children notice and exit within a few seconds; then the same
        config starts again.
        """
        tree = TwistdTree(self, {"store": STORE, "legacy": LEGACY_COMMAND})
        entries = yield tree.start()
        pids = _pids(entries)
        tree.signal("KILL")
        ended = yield withTimeout(tree.whenExited(), 10, reactor, "the manager to die")
        self.assertEqual(ended, (None, signal.SIGKILL))
        # Not our children: nothing tells us when they go; poll /proc, 10 s
        # at most.  Their new parent may not have reaped them yet: a zombie
        # has exited.
        left = yield waitForProcessesGone(reactor, pids.values(), 10, zombieIsGone=True)
        self.assertEqual(left, {}, f"still running after 10 s: {left} of {pids}")

        # The same config starts again, though the killed manager left its
        # socket file behind.
        self.assertTrue(os.path.exists(tree.managerEndpoint.partition("=")[2]))
        again = yield tree.start(timeout=20)
        self.assertEqual(sorted(again), ["legacy", "store"])
        for name, entry in again.items():
            self.assertNotEqual(entry["pid"], pids[name])

    @inlineCallbacks
    def test_sighupRestartsOnlyChanged(self):
        """
        SIGHUP after the config changed one daemon's settings restarts that
        daemon only (with the new settings); the others keep their pids.  A
        broken file is refused (by C{reload} and by SIGHUP) and changes
        nothing.
        """
        probe = "tests.integration_daemons:Probe"
        daemons = {
            "alpha": {"daemon": probe, "settings": {"colour": "red"}},
            "beta": {"daemon": probe, "settings": {"colour": "red"}},
            "store": STORE,
        }
        tree = TwistdTree(self, daemons)
        before = yield tree.start()
        daemons["beta"] = {"daemon": probe, "settings": {"colour": "blue", "n": 2}}
        tree.writeConfig(daemons)
        seen = len(tree.events)
        tree.signal("HUP")
        beta = yield tree.waitForEntry(
            "beta",
            lambda e: e["state"] == "ready" and e["pid"] != before["beta"]["pid"],
            what="beta restarted",
        )
        self.assertNotEqual(beta["port"], None)
        settings = yield tree.daemonGuest("beta").call("settings")
        self.assertEqual(settings, {"colour": "blue", "n": 2})
        after = yield tree.call("list")
        after = {e["name"]: e for e in after}
        for name in ("alpha", "store"):
            self.assertEqual(
                (after[name]["pid"], after[name]["started"], after[name]["state"]),
                (before[name]["pid"], before[name]["started"], "ready"),
                f"{name} was restarted",
            )
        others = [e for e in tree.events[seen:] if e["name"] != "beta"]
        self.assertEqual(others, [], "the reload touched other daemons")
        settings = yield tree.daemonGuest("alpha").call("settings")
        self.assertEqual(settings, {"colour": "red"})

        # The same through the reload command: nothing changed now; and a
        # broken file is refused, keeping everything as it runs.
        summary = yield tree.call("reload")
        self.assertEqual(summary, {"added": [], "removed": [], "changed": []})
        with open(tree.configPath, "a", encoding="utf-8") as f:
            f.write("\n[daemons.broken]\nlisten = 3\n")
        error = yield self.assertFailure(tree.call("reload"), Fault)
        self.assertEqual((error.code, error.command), ("bad_config", "reload"))
        listed = yield tree.call("list")
        self.assertEqual(
            {e["name"]: (e["pid"], e["state"]) for e in listed},
            {name: (after[name]["pid"], "ready") for name in after},
        )

        # And through SIGHUP: refused and logged, nothing left unhandled.
        tree.signal("HUP")
        yield tree.waitForLog("rejected; keeping the running config")
        listed = yield tree.call("list")
        self.assertEqual(
            {e["name"]: e["pid"] for e in listed}, {name: after[name]["pid"] for name in after}
        )
        self.assertFalse("Unhandled error in Deferred" in tree.log(), f"see {tree.logPath}")

    @inlineCallbacks
    def test_cannotListenExits(self):
        """
        A manager that cannot listen on its endpoint (the port is taken)
        starts no daemon and exits with a non-zero status.
        """
        blocker = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        tree = TwistdTree(self, {"store": STORE}, managerPort=blocker.getHost().port)
        tree.expectedCritical.append("cannot listen")
        tree.spawn()
        ended = yield withTimeout(tree.whenExited(), 15, reactor, "twistd to give up")
        self.assertNotEqual(ended, (0, None))
        log = tree.log()
        self.assertIn("cannot listen", log)
        self.assertNotIn("store: spawned", log)

    @inlineCallbacks
    def test_foreignCommandPortLearned(self):
        """
        A foreign program (no dae_service in it) run as a C{command}: the
        manager finds the port it listens on, by asking it C{dae}, and
        C{lookup} serves it.  The state directory's path is long (90 bytes:
        C{<state_dir>/notify/legacy.sock} would pass the AF_UNIX limit), and
        the command still gets its C{NOTIFY_SOCKET}.
        """
        base = tempfile.mkdtemp(prefix="dae-it-")
        self.addCleanup(shutil.rmtree, base, True)
        stateDir = os.path.join(base, "state")
        stateDir = os.path.join(base, "d" * (90 - len(stateDir) - 1), "state")
        self.assertEqual(len(stateDir), 90)
        tree = TwistdTree(self, {"legacy": LEGACY_COMMAND}, stateDir=stateDir)
        entries = yield tree.start()
        self.assertNotIn("cannot open its notify socket", tree.log())
        entry = yield tree.call("lookup", "legacy")
        self.assertEqual(entry, entries["legacy"])
        self.assertEqual((entry["kind"], entry["state"]), ("command", "ready"))
        self.assertIsInstance(entry["port"], int)
        client = yield tree.connectRaw("legacy")
        client.send(b"dae []")
        yield client.whenLost()
        # Node style: no delimiter after the packet.
        self.assertEqual(
            client.received, b'credential ["legacy",%d,%d,null]' % (entry["pid"], entry["port"])
        )

    @inlineCallbacks
    def test_dependencyOrder(self):
        """
        C{beta} requires C{alpha}: beta is spawned only after alpha is ready
        (listening), and on SIGTERM alpha is stopped only after beta has
        exited, even though beta is listed first and is slow to stop.
        """
        probe = "tests.integration_daemons:Probe"
        tree = TwistdTree(
            self,
            {
                "beta": {"daemon": probe, "requires": ["alpha"], "settings": {"stop_delay": 0.5}},
                "alpha": {"daemon": probe},
            },
        )
        entries = yield tree.start()
        yield _running(tree, "alpha", "beta")
        alphaReadyAt = yield tree.daemonGuest("alpha").call("ready_at")
        self.assertIsInstance(alphaReadyAt, int)
        self.assertLess(entries["alpha"]["started"], entries["beta"]["started"])
        self.assertGreaterEqual(entries["beta"]["started"], alphaReadyAt, entries)
        self.assertEqual(entries["beta"]["requires"], ["alpha"])

        tree.signal("TERM")
        ended = yield withTimeout(tree.whenExited(), 30, reactor, "the manager to exit")
        self.assertEqual(ended, (0, None))
        log = tree.log()
        betaExit = log.find("beta: exit code")
        alphaStop = log.find("alpha: stopping")
        alphaExit = log.find("alpha: exit code")
        self.assertNotEqual(betaExit, -1, log[-3000:])
        self.assertNotEqual(alphaExit, -1, log[-3000:])
        self.assertLess(betaExit, alphaExit, "alpha exited before beta")
        self.assertLess(betaExit, alphaStop, "alpha was stopped before beta had exited")

    @inlineCallbacks
    def test_tcpManagerWantsItsToken(self):
        """
        A manager on TCP answers C{list} and C{lookup} to anyone, but
        C{start}, C{stop}, C{restart} and C{reload} only on a connection
        that sent C{auth} with the token from C{<state_dir>/token}; the
        token is never logged.
        """
        tree = TwistdTree(self, {"store": STORE}, managerTCP=True)
        entries = yield tree.start()
        token = tree.token()
        self.assertGreaterEqual(len(token), 32)
        mode = os.stat(os.path.join(tree.stateDir, "token")).st_mode & 0o777
        self.assertEqual(mode, 0o600)

        guest = tree.managerGuest()
        listed = yield guest.call("list")
        self.assertEqual([e["name"] for e in listed], ["store"])
        for command, args in [
            ("start", ["store"]),
            ("stop", ["store"]),
            ("restart", ["store"]),
            ("reload", []),
        ]:
            error = yield self.assertFailure(guest.call(command, *args), Fault)
            self.assertEqual((error.code, error.command), ("unauthorized", command))
        error = yield self.assertFailure(guest.call("auth", "not-the-token"), Fault)
        self.assertEqual(error.code, "unauthorized")
        error = yield self.assertFailure(guest.call("stop", "store"), Fault)
        self.assertEqual(error.code, "unauthorized")
        self.assertEqual(tree.entries["store"]["pid"], entries["store"]["pid"])

        ok = yield guest.call("auth", token)
        self.assertIs(ok, True)
        stopped = yield guest.call("stop", "store")
        self.assertEqual(
            (stopped["state"], stopped["pid"], stopped["port"]), ("stopped", None, None)
        )
        self.assertIsNone(processState(entries["store"]["pid"]), "stop did not reap the child")
        # Authentication belongs to the connection, not to the client's host.
        error = yield self.assertFailure(tree.call("start", "store"), Fault)
        self.assertEqual(error.code, "unauthorized")
        started = yield guest.call("start", "store")
        self.assertEqual(started["state"], "ready")
        self.assertNotEqual(started["pid"], entries["store"]["pid"])
        store = tree.daemonGuest("store")
        yield store.call("set", "k", 1)

        # On the wire: list is one packet (no Node-style extra credential
        # packets after it), and the manager answers dae like any daemon.
        raw = yield tree.connectRaw(port=tree.managerPort)
        raw.send(b'list []\nlookup ["store"]\ndae []\n')
        yield raw.whenLost()
        lines = raw.received.split(b"\n")
        self.assertEqual(len(lines), 4, raw.received)
        self.assertEqual(packet(lines[0]), ("daemons", [[started]]))
        self.assertEqual(packet(lines[1]), ("lookup", [started]))
        self.assertEqual(
            packet(lines[2]), ("credential", ["dae", tree.pid, tree.managerPort, None])
        )

        # The token appears nowhere but in its file.
        self.assertNotIn(token, tree.log())
        for directory, _, files in os.walk(tree.stateDir):
            for name in files:
                path = os.path.join(directory, name)
                if path == os.path.join(tree.stateDir, "token") or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    self.assertNotIn(token.encode(), f.read(), path)
