"""
Tests for L{dae_service.protocol}: one reply per command in command order,
faults, half-close, backpressure and events (PROTOCOL.md, Part 2), and every
input that crashed the original Node implementation (Part 1).
"""

from __future__ import annotations

import os
from typing import Any

from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransport,
)
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dae_service import Daemon, Fault, command
from dae_service.interfaces import IConnection
from dae_service.protocol import DEFAULT_MAX_PENDING, CommonTCPServerProtocol
from dae_service.wire import Packet, PacketParser, encode


class Store(Daemon):
    """
    A daemon whose handlers the tests control: C{wait} and C{later} answer
    when the test fires C{waiting[key]}.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(reactor=MemoryReactorClock(), environ={}, **kwargs)
        self.waiting: dict[str, Deferred] = {}
        self.cancelled: list[str] = []
        self.subscribers: list = []

    @command
    def echo(self, value):
        return value

    @command
    def wait(self, key):
        d = Deferred(lambda _: self.cancelled.append(key))
        self.waiting[key] = d
        return d

    @command
    async def later(self, key):
        value = await self.wait(key)
        return f"later {value}"

    @command
    async def now(self, value):
        return value

    @command
    def boom(self):
        raise ZeroDivisionError("the secret detail")

    @command
    def deny(self, who):
        raise Fault("unauthorized", f"{who} may not", None)

    @command
    def elsewhere(self):
        raise Fault("not_found", "gone", "other")

    @command
    def opaque(self):
        return object()

    @command
    def nan(self):
        return float("nan")

    @command(connection=True)
    def subscribe(self, connection):
        self.subscribers.append(connection)
        return True

    @command(reply="renamed")
    def aliased(self):
        return 1


def replies(transport: StringTransport) -> list:
    """
    Decode and clear what was written: each packet as C{(name, args)}, a
    fault as C{("fault", code, command)}.  Everything written must be whole
    lines.
    """
    data = transport.value()
    transport.clear()
    if data:
        assert data.endswith(b"\n"), data
    out = []
    for packet in PacketParser().feed(data):
        assert isinstance(packet, Packet), packet
        if packet.name == "fault":
            (body,) = packet.args
            assert list(body) == ["command", "code", "message"], body
            out.append(("fault", body["code"], body["command"]))
        else:
            out.append((packet.name, packet.args))
    return out


def faultMessage(transport: StringTransport) -> str:
    """
    The message of the single fault written (and clear it).
    """
    (packet,) = PacketParser().feed(transport.value())
    transport.clear()
    return packet.args[0]["message"]


class ProtocolTestCase(SynchronousTestCase):
    """
    A started L{Store} on a fake reactor, and helpers to connect to it.
    """

    def daemon(self, **kwargs: Any) -> Store:
        """
        A started L{Store} with the given options.
        """
        store = Store(**kwargs)
        store.startService()
        return store

    def connect(self, store: Store) -> tuple[CommonTCPServerProtocol, StringTransport]:
        """
        A new connection to C{store}, built by its listening factory.
        """
        factory = store.reactor.tcpServers[-1][1]
        transport = StringTransport()
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        return protocol, transport

    def setUp(self) -> None:
        self.store = self.daemon()
        self.protocol, self.transport = self.connect(self.store)

    def send(self, data: bytes) -> None:
        """
        Deliver C{data} to the test's connection.
        """
        self.protocol.dataReceived(data)

    def assertOpen(self) -> None:
        """
        The test's connection has not been closed.
        """
        self.assertFalse(self.transport.disconnecting)


class InterfaceTests(ProtocolTestCase):
    """
    The protocol's interfaces.
    """

    def test_interfaces(self) -> None:
        """
        A connection provides L{IConnection} and L{IHalfCloseableProtocol},
        and knows its peer.
        """
        verifyObject(IConnection, self.protocol)
        verifyObject(IHalfCloseableProtocol, self.protocol)
        self.assertEqual(self.protocol.peer, self.transport.getPeer())
        self.assertFalse(self.protocol.closed)

    def test_maxPending(self) -> None:
        """
        The daemon's C{maxPending} reaches its connections; the default is
        1000.
        """
        self.assertEqual(DEFAULT_MAX_PENDING, 1000)
        self.assertEqual(self.protocol.maxPending, DEFAULT_MAX_PENDING)
        protocol, _ = self.connect(self.daemon(maxPending=3))
        self.assertEqual(protocol.maxPending, 3)


class OrderTests(ProtocolTestCase):
    """
    Exactly one reply per command, in the order the commands arrived.
    """

    def test_syncReply(self) -> None:
        """
        A synchronous handler's reply is written at once, under the
        command's name.
        """
        self.send(b'echo ["k"]\n')
        self.assertEqual(replies(self.transport), [("echo", ["k"])])

    def test_exactBytes(self) -> None:
        """
        A reply is C{NAME SP JSON-array LF}, compact and ASCII.
        """
        self.send('echo [{"a": [1, 2.5], "b": "\u00e9"}]\n'.encode())
        self.assertEqual(
            self.transport.value(), b'echo [{"a":[1,2.5],"b":"\\u00e9"}]\n'
        )

    def test_outOfOrderCompletion(self) -> None:
        """
        Handlers that finish in reverse order still get their replies in
        command order, each written once the ones before it are.
        """
        self.send(b'wait ["a"]\nwait ["b"]\nwait ["c"]\n')
        self.store.waiting["c"].callback("C")
        self.store.waiting["b"].callback("B")
        self.assertEqual(replies(self.transport), [])
        self.store.waiting["a"].callback("A")
        self.assertEqual(
            replies(self.transport), [("wait", ["A"]), ("wait", ["B"]), ("wait", ["C"])]
        )

    def test_partialFlush(self) -> None:
        """
        When the first pending reply is ready, it and every ready reply after
        it are written; the rest wait.
        """
        self.send(b'wait ["a"]\necho [1]\nwait ["b"]\necho [2]\n')
        self.store.waiting["a"].callback("A")
        self.assertEqual(replies(self.transport), [("wait", ["A"]), ("echo", [1])])
        self.store.waiting["b"].callback("B")
        self.assertEqual(replies(self.transport), [("wait", ["B"]), ("echo", [2])])

    def test_syncQueuesBehindPending(self) -> None:
        """
        Synchronous replies and faults after a pending one wait behind it,
        across reads.
        """
        self.send(b'wait ["a"]\necho [1]\n')
        self.send(b"nope []\necho [2]\n")
        self.assertEqual(replies(self.transport), [])
        self.store.waiting["a"].callback("A")
        self.assertEqual(
            replies(self.transport),
            [("wait", ["A"]), ("echo", [1]), ("fault", "unknown_command", "nope"), ("echo", [2])],
        )

    def test_coroutineHandler(self) -> None:
        """
        A coroutine handler's result is its reply, in order with the others.
        """
        self.send(b'later ["a"]\nnow [1]\n')
        self.assertEqual(replies(self.transport), [])
        self.store.waiting["a"].callback("A")
        self.assertEqual(replies(self.transport), [("later", ["later A"]), ("now", [1])])

    def test_coroutineFinishedAtOnce(self) -> None:
        """
        A coroutine that never waits is answered at once.
        """
        self.send(b'now [{"x":1}]\n')
        self.assertEqual(replies(self.transport), [("now", [{"x": 1}])])

    def test_customReplyName(self) -> None:
        """
        A command declared with C{reply=} answers under that name.
        """
        self.send(b"aliased []\n")
        self.assertEqual(replies(self.transport), [("renamed", [1])])

    def test_pipelinedMany(self) -> None:
        """
        Many commands in one read each get their reply, in order.
        """
        self.send(b"".join(encode("echo", [i]) for i in range(500)))
        self.assertEqual(replies(self.transport), [("echo", [i]) for i in range(500)])


class FaultTests(ProtocolTestCase):
    """
    Failures are one C{fault} packet each, and keep the connection open.
    """

    def test_handlerRaises(self) -> None:
        """
        A handler that raises is answered with an C{internal} fault with a
        short message (not the exception's text), logged in full, and the
        connection serves the next command.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.send(b"boom []\n")
        self.assertEqual(faultMessage(self.transport), "boom failed: ZeroDivisionError")
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0]["log_failure"].check(ZeroDivisionError))
        self.assertEqual(failures[0]["command"], "boom")
        self.assertEqual(failures[0]["peer"], self.transport.getPeer())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.send(b"boom []\necho [1]\n")
        self.assertEqual(
            replies(self.transport), [("fault", "internal", "boom"), ("echo", [1])]
        )
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertOpen()

    def test_faultRaised(self) -> None:
        """
        A handler raising L{Fault} is answered with that fault's code and
        message, under the command's name.
        """
        self.send(b'deny ["bob"]\n')
        self.assertEqual(
            self.transport.value(),
            b'fault [{"command":"deny","code":"unauthorized","message":"bob may not"}]\n',
        )
        self.assertOpen()

    def test_faultNamesOtherCommand(self) -> None:
        """
        A L{Fault} that names its command keeps that name.
        """
        self.send(b"elsewhere []\n")
        self.assertEqual(replies(self.transport), [("fault", "not_found", "other")])

    def test_deferredFailsWithFault(self) -> None:
        """
        A Deferred failing with L{Fault} is answered with that fault, in
        order, and nothing is logged.
        """
        self.send(b'wait ["a"]\necho [1]\n')
        self.store.waiting["a"].errback(Fault("not_found", "no such key"))
        self.assertEqual(
            replies(self.transport), [("fault", "not_found", "wait"), ("echo", [1])]
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_deferredFailsWithException(self) -> None:
        """
        A Deferred failing with any other exception is an C{internal} fault,
        logged.
        """
        self.send(b'wait ["a"]\n')
        self.store.waiting["a"].errback(KeyError("secret"))
        self.assertEqual(faultMessage(self.transport), "wait failed: KeyError")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertOpen()

    def test_unencodableReturn(self) -> None:
        """
        A return value JSON cannot represent (an object, NaN) is an
        C{internal} fault, logged; the connection stays open.
        """
        self.send(b"opaque []\nnan []\necho [1]\n")
        self.assertEqual(
            replies(self.transport),
            [("fault", "internal", "opaque"), ("fault", "internal", "nan"), ("echo", [1])],
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError, ValueError)), 2)
        self.assertOpen()

    def test_unencodableDeferredResult(self) -> None:
        """
        A Deferred firing with a value JSON cannot represent is an
        C{internal} fault, logged.
        """
        self.send(b'wait ["a"]\n')
        self.store.waiting["a"].callback({1j})
        self.assertEqual(replies(self.transport), [("fault", "internal", "wait")])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_checkOrder(self) -> None:
        """
        JSON syntax is checked first, then the shape, then the name, then the
        count.
        """
        self.send(b"nope [1,\nnope null\nnope []\necho [1,2]\necho []\n")
        self.assertEqual(
            replies(self.transport),
            [
                ("fault", "bad_json", "nope"),
                ("fault", "bad_args", "nope"),
                ("fault", "unknown_command", "nope"),
                ("fault", "bad_args", "echo"),
                ("fault", "bad_args", "echo"),
            ],
        )
        self.assertOpen()

    def test_countMessage(self) -> None:
        """
        A wrong argument count says what was expected.
        """
        self.send(b"echo []\n")
        self.assertEqual(faultMessage(self.transport), "echo takes 1 argument (0 given)")

    def test_badPacketHasNoCommand(self) -> None:
        """
        An invalid name is a C{bad_packet} fault with C{"command":null}.
        """
        self.send(b"\xff []\n" + b"n" * 129 + b"\n")
        self.assertEqual(
            replies(self.transport),
            [("fault", "bad_packet", None), ("fault", "bad_packet", None)],
        )
        self.assertOpen()


class DaeTests(ProtocolTestCase):
    """
    C{dae} is the last command answered on its connection.
    """

    def test_closesAfterCredential(self) -> None:
        """
        C{dae []} is answered with C{credential}, then the connection closes;
        the daemon stops reading and unregisters its producer so the
        transport really closes.
        """
        self.send(b"dae []\n")
        self.assertEqual(
            replies(self.transport), [("credential", ["Store", os.getpid(), 0, None])]
        )
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.transport.producerState, "paused")

    def test_waitsForEarlierReplies(self) -> None:
        """
        The connection closes only after the replies to the commands before
        C{dae} are written; commands after it get no reply.
        """
        self.send(b'wait ["a"]\ndae []\necho [1]\n')
        self.send(b"echo [2]\n")
        self.assertEqual(replies(self.transport), [])
        self.assertOpen()
        self.store.waiting["a"].callback("A")
        self.assertEqual(
            replies(self.transport),
            [("wait", ["A"]), ("credential", ["Store", os.getpid(), 0, None])],
        )
        self.assertTrue(self.transport.disconnecting)

    def test_daeFaultKeepsConnection(self) -> None:
        """
        C{dae} with arguments is a C{bad_args} fault, and like every fault
        but C{too_long} it leaves the connection open.
        """
        self.send(b"dae [1]\necho [1]\n")
        self.assertEqual(
            replies(self.transport), [("fault", "bad_args", "dae"), ("echo", [1])]
        )
        self.assertOpen()


class HalfCloseTests(ProtocolTestCase):
    """
    A client that half-closes still gets every reply.
    """

    def test_idle(self) -> None:
        """
        With nothing pending, a half-close closes the connection.
        """
        self.protocol.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)

    def test_pending(self) -> None:
        """
        After a half-close the pending replies are still written, then the
        connection closes.
        """
        self.send(b'wait ["a"]\necho [1]\n')
        self.protocol.readConnectionLost()
        self.assertOpen()
        self.store.waiting["a"].callback("A")
        self.assertEqual(replies(self.transport), [("wait", ["A"]), ("echo", [1])])
        self.assertTrue(self.transport.disconnecting)

    def test_afterDae(self) -> None:
        """
        C{dae []} then FIN (what the Node manager does) gets the credential
        after the earlier replies, then the close.
        """
        self.send(b'wait ["a"]\ndae []')
        self.protocol.readConnectionLost()
        self.assertOpen()
        self.store.waiting["a"].callback("A")
        self.assertEqual(
            [r[0] for r in replies(self.transport)], ["wait", "credential"]
        )
        self.assertTrue(self.transport.disconnecting)

    def test_daeIdle(self) -> None:
        """
        C{dae []} then FIN with nothing pending: the credential, then close.
        """
        self.send(b"dae []")
        self.protocol.readConnectionLost()
        self.assertEqual([r[0] for r in replies(self.transport)], ["credential"])
        self.assertTrue(self.transport.disconnecting)

    def test_trailingPacket(self) -> None:
        """
        A trailing packet with no delimiter is answered at the half-close.
        """
        self.send(b"echo [1]\nwhois")
        self.assertEqual(replies(self.transport), [("echo", [1])])
        self.protocol.readConnectionLost()
        self.assertEqual([r[0] for r in replies(self.transport)], ["credential"])
        self.assertTrue(self.transport.disconnecting)

    def test_trailingBadPacket(self) -> None:
        """
        A trailing incomplete packet is answered with its fault at the
        half-close.
        """
        self.send(b'echo ["x",')
        self.protocol.readConnectionLost()
        self.assertEqual(replies(self.transport), [("fault", "bad_json", "echo")])
        self.assertTrue(self.transport.disconnecting)

    def test_repeated(self) -> None:
        """
        A second end-of-input notice (a real transport resumed after the
        half-close reports it again) changes nothing.
        """
        self.send(b'wait ["a"]\nwhois')
        self.protocol.readConnectionLost()
        self.protocol.readConnectionLost()
        self.assertEqual(replies(self.transport), [])
        self.assertOpen()
        self.store.waiting["a"].callback("A")
        self.assertEqual([r[0] for r in replies(self.transport)], ["wait", "credential"])
        self.protocol.readConnectionLost()
        self.assertEqual(replies(self.transport), [])
        self.assertTrue(self.transport.disconnecting)

    def test_writeConnectionLost(self) -> None:
        """
        When the client stops reading, the connection is closed.
        """
        self.protocol.writeConnectionLost()
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)


class TooLongTests(ProtocolTestCase):
    """
    An over-long packet is a C{too_long} fault, then the connection closes.
    """

    def setUp(self) -> None:
        self.store = self.daemon(maxLength=64)
        self.protocol, self.transport = self.connect(self.store)

    def test_tooLong(self) -> None:
        """
        The replies before it, then C{too_long} (no command), then the close;
        later input is ignored.
        """
        self.send(b'echo [1]\necho ["' + b"x" * 100)
        self.assertEqual(
            replies(self.transport), [("echo", [1]), ("fault", "too_long", None)]
        )
        self.assertTrue(self.transport.disconnecting)
        self.send(b'"]\necho [2]\n')
        self.protocol.readConnectionLost()
        self.assertEqual(replies(self.transport), [])

    def test_tooLongBehindPending(self) -> None:
        """
        The fault waits behind pending replies, and so does the close.
        """
        self.send(b'wait ["a"]\n' + b"z" * 100 + b"\n")
        self.assertEqual(replies(self.transport), [])
        self.assertOpen()
        self.store.waiting["a"].callback("A")
        self.assertEqual(
            replies(self.transport), [("wait", ["A"]), ("fault", "too_long", None)]
        )
        self.assertTrue(self.transport.disconnecting)

    def test_message(self) -> None:
        """
        The fault says what the limit is.
        """
        self.send(b"z" * 65)
        self.assertIn("64", faultMessage(self.transport))


class BackpressureTests(ProtocolTestCase):
    """
    Bounded pending replies, and no reading from a client that does not read.
    """

    def setUp(self) -> None:
        self.store = self.daemon(maxPending=4)
        self.protocol, self.transport = self.connect(self.store)

    def test_belowLimit(self) -> None:
        """
        Fewer pending commands than the limit: still reading.
        """
        self.send(b'wait ["a"]\nwait ["b"]\nwait ["c"]\n')
        self.assertEqual(self.transport.producerState, "producing")

    def test_pauseAndResume(self) -> None:
        """
        With C{maxPending} commands pending the daemon stops reading, and
        resumes once half of them are answered.
        """
        self.send(b'wait ["a"]\nwait ["b"]\nwait ["c"]\nwait ["d"]\n')
        self.assertEqual(self.transport.producerState, "paused")
        self.store.waiting["a"].callback(1)
        self.assertEqual(self.transport.producerState, "paused")
        self.store.waiting["b"].callback(2)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(replies(self.transport), [("wait", [1]), ("wait", [2])])

    def test_laterRepliesDoNotCount(self) -> None:
        """
        Replies still queued behind an unanswered command count as pending:
        answering the later commands frees nothing until they are written.
        """
        self.send(b'wait ["a"]\nwait ["b"]\nwait ["c"]\nwait ["d"]\n')
        self.store.waiting["d"].callback(4)
        self.store.waiting["c"].callback(3)
        self.store.waiting["a"].callback(1)
        self.assertEqual(self.transport.producerState, "paused")
        self.store.waiting["b"].callback(2)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual([r[1] for r in replies(self.transport)], [[1], [2], [3], [4]])

    def test_writeProducerRegistered(self) -> None:
        """
        The protocol registers a streaming producer with its transport.
        """
        self.assertTrue(self.transport.streaming)
        verifyObject(IPushProducer, self.transport.producer)

    def test_writeBackpressure(self) -> None:
        """
        When the transport pauses the protocol's producer (its write buffer
        is full), the daemon stops reading, and resumes with it.
        """
        self.transport.producer.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.transport.producer.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_bothReasons(self) -> None:
        """
        Reading resumes only when neither the write buffer nor the pending
        commands hold it back.
        """
        self.send(b'wait ["a"]\nwait ["b"]\nwait ["c"]\nwait ["d"]\n')
        self.transport.producer.pauseProducing()
        self.store.waiting["a"].callback(1)
        self.store.waiting["b"].callback(2)
        self.assertEqual(self.transport.producerState, "paused")
        self.transport.producer.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")


class ConnectionLostTests(ProtocolTestCase):
    """
    A lost connection cancels its pending work.
    """

    def test_cancelsPending(self) -> None:
        """
        Pending handlers' Deferreds (a coroutine's too) are cancelled, and
        nothing is written afterwards.
        """
        self.send(b'wait ["a"]\nlater ["b"]\necho [1]\n')
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(sorted(self.store.cancelled), ["a", "b"])
        self.assertTrue(self.protocol.closed)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_reset(self) -> None:
        """
        A TCP reset with work pending is not an error.
        """
        self.send(b'wait ["a"]\n')
        self.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.store.cancelled, ["a"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_whenClosed(self) -> None:
        """
        L{CommonTCPServerProtocol.whenClosed} fires when the connection is
        lost, each caller with its own Deferred, and at once afterwards.
        """
        first, second = self.protocol.whenClosed(), self.protocol.whenClosed()
        self.assertIsNot(first, second)
        self.assertNoResult(first)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertIsNone(self.successResultOf(self.protocol.whenClosed()))

    def test_drainIdle(self) -> None:
        """
        L{CommonTCPServerProtocol.drain} closes an idle connection at once.
        """
        self.protocol.drain()
        self.assertTrue(self.transport.disconnecting)

    def test_drainPending(self) -> None:
        """
        L{CommonTCPServerProtocol.drain} stops reading, answers what was
        received, then closes.
        """
        self.send(b'wait ["a"]\n')
        self.protocol.drain()
        self.assertEqual(self.transport.producerState, "paused")
        self.send(b"echo [1]\n")
        self.assertOpen()
        self.store.waiting["a"].callback("A")
        self.assertEqual(replies(self.transport), [("wait", ["A"])])
        self.assertTrue(self.transport.disconnecting)


class EventTests(ProtocolTestCase):
    """
    Unsolicited packets.
    """

    def test_sendEvent(self) -> None:
        """
        A handler given the connection can push events to it later.
        """
        self.send(b"subscribe []\n")
        self.assertEqual(replies(self.transport), [("subscribe", [True])])
        (connection,) = self.store.subscribers
        self.assertIs(connection, self.protocol)
        connection.sendEvent("tick", [1, {"a": "\u00e9"}])
        self.assertEqual(self.transport.value(), b'tick [1,{"a":"\\u00e9"}]\n')

    def test_replyNamesRefused(self) -> None:
        """
        An event may not use a reply name: a command's, a custom one, or a
        built-in's.
        """
        for name in ("echo", "wait", "renamed", "fault", "credential", "commands"):
            self.assertRaises(ValueError, self.protocol.sendEvent, name, [])
        self.assertEqual(self.transport.value(), b"")

    def test_afterClose(self) -> None:
        """
        An event sent to a lost connection is dropped.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.protocol.sendEvent("tick", [])
        self.assertEqual(self.transport.value(), b"")


class NodeCrashTests(ProtocolTestCase):
    """
    Every input that crashed the Node original gets its precise answer, and
    a valid command after it on the same connection is still answered.
    """

    def assertAnswers(self, reads: list, expected: list) -> None:
        """
        Deliver C{reads} then a valid command: the replies are C{expected}
        then the valid command's, and the connection is still open.
        """
        for data in reads:
            self.send(data)
        self.send(b'echo ["ok"]\n')
        self.assertEqual(replies(self.transport), expected + [("echo", ["ok"])])
        self.assertOpen()

    def test_null(self) -> None:
        """
        C{x null} is C{bad_args}.
        """
        self.assertAnswers([b"x null\n"], [("fault", "bad_args", "x")])

    def test_error(self) -> None:
        """
        A packet named C{error} is an unknown command, answered with a
        C{fault} (never an C{error} packet).
        """
        self.assertAnswers([b"error []\n"], [("fault", "unknown_command", "error")])
        self.assertAnswers([b'error ["x"]'], [("fault", "unknown_command", "error")])

    def test_coalesced(self) -> None:
        """
        Node-style packets arriving together are each answered.
        """
        self.assertAnswers([b'echo [1]echo ["two"]'], [("echo", [1]), ("echo", ["two"])])

    def test_split(self) -> None:
        """
        A packet split over reads is answered once.
        """
        self.assertAnswers([b'echo [{"k":', b"[1,", b"2]}]"], [("echo", [{"k": [1, 2]}])])

    def test_splitEveryByte(self) -> None:
        """
        A packet fed one byte at a time is answered once.
        """
        data = b'echo ["a]\\"["]'
        self.assertAnswers([data[i : i + 1] for i in range(len(data))], [("echo", ['a]"['])])

    def test_hundredKilobytes(self) -> None:
        """
        A 100 kB packet, Node-style, in 4 kB reads, is answered whole.
        """
        value = "v" * 100_000
        data = encode("echo", [value])[:-1]
        self.assertAnswers(
            [data[i : i + 4096] for i in range(0, len(data), 4096)], [("echo", [value])]
        )

    def test_nonAscii(self) -> None:
        """
        Non-ASCII text comes back intact, escaped to ASCII.
        """
        text = "h\u00e9llo \u2603 \U0001f600"
        self.send(encode("echo", [text]).replace(b"\\u00e9", "\u00e9".encode()))
        data = self.transport.value()
        data.decode("ascii")
        self.assertIn(b"\\ud83d\\ude00", data)
        self.assertAnswers([], [("echo", [text])])

    def test_invalidJson(self) -> None:
        """
        Invalid JSON is C{bad_json}; the handler does not run.
        """
        self.assertAnswers([b'deny ["x",]\n'], [("fault", "bad_json", "deny")])

    def test_wrongCount(self) -> None:
        """
        A wrong argument count is C{bad_args}.
        """
        self.assertAnswers([b"echo [1,2]\n"], [("fault", "bad_args", "echo")])

    def test_unknown(self) -> None:
        """
        An unknown command is answered with C{unknown_command} (Node sent
        nothing).
        """
        self.assertAnswers([b"nope []\n"], [("fault", "unknown_command", "nope")])

    def test_raisingHandler(self) -> None:
        """
        A raising handler is C{internal}.
        """
        self.assertAnswers([b"boom []\n"], [("fault", "internal", "boom")])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_badName(self) -> None:
        """
        An invalid name is C{bad_packet}.
        """
        self.assertAnswers([b"\x00\xff [1]\n"], [("fault", "bad_packet", None)])

    def test_overLong(self) -> None:
        """
        An over-long packet is C{too_long} and, alone of all faults, closes
        the connection: the next command is not answered.
        """
        protocol, transport = self.connect(self.daemon(maxLength=1000))
        protocol.dataReceived(b"x [" + b"1," * 1000)
        protocol.dataReceived(b'1]\necho ["ok"]\n')
        self.assertEqual(replies(transport), [("fault", "too_long", None)])
        self.assertTrue(transport.disconnecting)


class EventBacklogTests(SynchronousTestCase):
    """
    Events to a client that does not read them are bounded.
    """

    def test_slowEventReaderDisconnected(self):
        """
        While the client's send buffer is full, events still go out until
        C{MAX_EVENT_BACKLOG} bytes are queued; then the connection is
        aborted rather than buffered without bound.  A client that reads
        again starts from a clean slate.
        """
        from twisted.internet.testing import StringTransport

        from dae_service.examples.echo import Echo
        from dae_service.protocol import MAX_EVENT_BACKLOG, CommonTCPServerProtocol

        class Transport(StringTransport):
            aborted = False

            def abortConnection(self):
                self.aborted = True

        daemon = Echo()
        daemon._bound = {s.name: getattr(daemon, s.attribute) for s in daemon.commands.values()}
        protocol = CommonTCPServerProtocol(daemon)
        transport = Transport()
        protocol.makeConnection(transport)
        payload = ["x" * 1000]
        protocol._pauseReading("writes")
        for _ in range(MAX_EVENT_BACKLOG // 2000):
            protocol.sendEvent("tick", payload)
        protocol._resumeReading("writes")
        protocol._pauseReading("writes")
        for _ in range(MAX_EVENT_BACKLOG // 1010):
            protocol.sendEvent("tick", payload)
        self.assertFalse(transport.aborted)
        for _ in range(20):
            protocol.sendEvent("tick", payload)
        self.assertTrue(transport.aborted)
