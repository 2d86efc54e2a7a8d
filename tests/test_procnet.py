"""
Tests for L{dae_service.procnet}: on a fake procfs tree, then on a real
child process.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import Iterable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dae_service.procnet import (
    descendants,
    listeningAddresses,
    listeningPorts,
    socketInodes,
)

LISTEN, ESTABLISHED = "0A", "01"
HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def hex4(address: str) -> str:
    """
    An IPv4 address as procfs prints it (a native-order 32-bit word).
    """
    return "%08X" % struct.unpack("=I", socket.inet_aton(address))[0]


def hex6(address: str) -> str:
    """
    An IPv6 address as procfs prints it (four native-order words).
    """
    raw = socket.inet_pton(socket.AF_INET6, address)
    return "".join("%08X" % struct.unpack("=I", raw[i : i + 4])[0] for i in range(0, 16, 4))


def row(i: int, local: str, port: int, state: str, inode: int) -> str:
    return (
        f"  {i}: {local}:{port:04X} 00000000:0000 {state} 00000000:00000000 "
        f"00:00000000 00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


class FakeProc:
    """
    A fake C{/proc} tree in a temporary directory.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        os.mkdir(root)

    def process(
        self,
        pid: int,
        fds: dict[int, str],
        children: Iterable[int] = (),
        tcp: Iterable[str] = (),
        tcp6: Iterable[str] | None = None,
        netns: str = "net:[1]",
    ) -> None:
        base = os.path.join(self.root, str(pid))
        os.makedirs(os.path.join(base, "fd"))
        os.makedirs(os.path.join(base, "task", str(pid)))
        os.makedirs(os.path.join(base, "net"))
        os.makedirs(os.path.join(base, "ns"))
        for fd, target in fds.items():
            os.symlink(target, os.path.join(base, "fd", str(fd)))
        os.symlink(netns, os.path.join(base, "ns", "net"))
        with open(os.path.join(base, "task", str(pid), "children"), "w") as f:
            f.write(" ".join(str(c) for c in children) + (" " if children else ""))
        with open(os.path.join(base, "net", "tcp"), "w") as f:
            f.write(HEADER + "".join(tcp))
        if tcp6 is not None:
            with open(os.path.join(base, "net", "tcp6"), "w") as f:
                f.write(HEADER + "".join(tcp6))


class FakeProcTests(SynchronousTestCase):
    """
    The procfs readers on a fake tree.
    """

    def setUp(self) -> None:
        self.proc = FakeProc(self.mktemp())
        self.root = self.proc.root
        # Everybody's listening sockets, as the namespace-wide table shows.
        self.table = [
            row(0, hex4("127.0.0.1"), 8000, LISTEN, 111),  # ours
            row(1, hex4("0.0.0.0"), 9000, LISTEN, 222),  # someone else's
            row(2, hex4("127.0.0.1"), 8001, ESTABLISHED, 112),  # ours, not listening
            row(3, hex4("10.1.2.3"), 8002, LISTEN, 333),  # our child's
        ]
        self.table6 = [
            row(0, hex6("::"), 8003, LISTEN, 113),  # ours
            row(1, hex6("::1"), 9001, LISTEN, 223),  # someone else's
        ]

    def test_socketInodes(self) -> None:
        """
        Only C{socket:[inode]} descriptors count.
        """
        self.proc.process(
            10, {0: "/dev/null", 1: "pipe:[5]", 3: "socket:[111]", 4: "socket:[112]",
                 5: "anon_inode:[eventpoll]"}
        )
        self.assertEqual(socketInodes(10, self.root), {111, 112})

    def test_onlyOwnListeningSockets(self) -> None:
        """
        A process's listening sockets are found in both tables; another
        process's and its own non-listening ones are not.
        """
        self.proc.process(
            10, {3: "socket:[111]", 4: "socket:[112]", 5: "socket:[113]"},
            tcp=self.table, tcp6=self.table6,
        )
        self.assertEqual(
            listeningAddresses(10, procRoot=self.root), {("127.0.0.1", 8000), ("::", 8003)}
        )
        self.assertEqual(listeningPorts(10, procRoot=self.root), {8000, 8003})

    def test_descendants(self) -> None:
        """
        A child's (and grandchild's) sockets count unless
        C{includeChildren} is false.
        """
        self.proc.process(10, {3: "socket:[111]"}, children=[11], tcp=self.table)
        self.proc.process(11, {}, children=[12], tcp=self.table)
        self.proc.process(12, {7: "socket:[333]"}, tcp=self.table)
        self.assertEqual(descendants(10, self.root), [11, 12])
        self.assertEqual(listeningPorts(10, procRoot=self.root), {8000, 8002})
        self.assertEqual(listeningPorts(10, includeChildren=False, procRoot=self.root), {8000})

    def test_childInAnotherNamespace(self) -> None:
        """
        A descendant in another network namespace is matched against its
        own namespace's table.
        """
        self.proc.process(10, {3: "socket:[111]"}, children=[11], tcp=self.table)
        self.proc.process(
            11, {3: "socket:[444]"}, tcp=[row(0, hex4("0.0.0.0"), 7777, LISTEN, 444)],
            netns="net:[2]",
        )
        self.assertEqual(listeningPorts(10, procRoot=self.root), {8000, 7777})

    def test_goneDescendantsSkipped(self) -> None:
        """
        A child listed but gone (or a loop in the listing) is skipped.
        """
        self.proc.process(10, {3: "socket:[111]"}, children=[11, 10], tcp=self.table)
        self.assertEqual(listeningPorts(10, procRoot=self.root), {8000})

    def test_noSuchProcess(self) -> None:
        """
        A pid that does not exist is a L{ProcessLookupError}.
        """
        self.assertRaises(ProcessLookupError, listeningPorts, 99, procRoot=self.root)

    def test_noSockets(self) -> None:
        """
        A process without sockets listens on nothing (and no table is read).
        """
        self.proc.process(10, {0: "/dev/null"})
        self.assertEqual(listeningPorts(10, procRoot=self.root), set())

    def test_malformedRowsSkipped(self) -> None:
        """
        Rows that do not parse are skipped.
        """
        self.proc.process(
            10, {3: "socket:[111]"},
            tcp=["garbage\n", "  9: ZZ:0050 00000000:0000 0A 0 0 0 0 0 111\n"] + self.table,
        )
        self.assertEqual(listeningPorts(10, procRoot=self.root), {8000})


class _PortPrinter(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"\n" in self.output and not self.port.called:
            self.port.callback(int(self.output.split()[0]))

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class RealProcessTests(TestCase):
    """
    L{listeningPorts} on a real child.
    """

    timeout = 20

    @inlineCallbacks
    def test_realChild(self):
        """
        The port a child listens on is found; a port this process listens on
        is not, and neither is the child's connected socket.
        """
        ours = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(ours.stopListening)
        ourPort = ours.getHost().port
        script = (
            "import socket, sys\n"
            "s = socket.socket()\n"
            "s.bind(('127.0.0.1', 0))\n"
            "s.listen()\n"
            f"c = socket.create_connection(('127.0.0.1', {ourPort}))\n"
            "print(s.getsockname()[1], flush=True)\n"
            "sys.stdin.read()\n"
        )
        protocol = _PortPrinter()
        process = reactor.spawnProcess(
            protocol, sys.executable, [sys.executable, "-c", script], env=dict(os.environ)
        )
        port = yield protocol.port
        found = listeningPorts(process.pid)
        self.assertEqual(found, {port})
        self.assertNotIn(ourPort, found)
        self.assertIn(ourPort, listeningPorts(os.getpid(), includeChildren=False))
        process.closeStdin()
        yield protocol.ended
