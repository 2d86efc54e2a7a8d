"""
Tests for L{dae_service.guest}: L{GuestProtocol} on a L{StringTransport} and
over iosim against a real daemon protocol, L{Guest} with a fake endpoint and
a clock, and a few integration tests over real loopback sockets.
"""

from __future__ import annotations

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from dae_service import Daemon, command
from dae_service.errors import CallTimeout, Fault, GuestConnectionLost, TooManyPending
from dae_service.examples.echo import Echo
from dae_service.guest import Guest, GuestFactory, GuestProtocol, replyName
from dae_service.interfaces import IGuest
from dae_service.testing import connectDaemon


def connectedProtocol(**kwargs):
    """
    A L{GuestProtocol} on a L{StringTransport}, with its clock.
    """
    clock = Clock()
    protocol = GuestProtocol(clock, **kwargs)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


class ReplyNameTests(SynchronousTestCase):
    """
    L{replyName} knows the built-ins' reply names.
    """

    def test_replyNames(self):
        """
        C{dae} and C{whois} are answered by C{credential}, C{options} by
        C{commands}, C{list} by C{daemons}, anything else by its own name.
        """
        self.assertEqual(
            [replyName(n) for n in ("dae", "whois", "options", "list", "get")],
            ["credential", "credential", "commands", "daemons", "get"],
        )


class GuestProtocolTests(SynchronousTestCase):
    """
    L{GuestProtocol} on a L{StringTransport}.
    """

    def test_callSendsPacket(self):
        """
        A call writes C{NAME SP JSON LF} and waits.
        """
        protocol, transport, _ = connectedProtocol()
        d = protocol.call("get", "k", 1)
        self.assertEqual(transport.value(), b'get ["k",1]\n')
        self.assertNoResult(d)

    def test_pipelinedRepliesMatchedByOrder(self):
        """
        Several calls sent before any reply get their replies in order, even
        when the replies arrive in one read.
        """
        protocol, transport, _ = connectedProtocol()
        ds = [protocol.call("get", k) for k in "abc"]
        self.assertEqual(transport.value(), b'get ["a"]\nget ["b"]\nget ["c"]\n')
        protocol.dataReceived(b"get [1]\nget [2]\nget [3]\n")
        self.assertEqual([self.successResultOf(d) for d in ds], [1, 2, 3])
        self.assertEqual(protocol.pendingCount, 0)

    def test_emptyReplyIsNone(self):
        """
        A user command's reply with no arguments gives L{None}.
        """
        protocol, _, _ = connectedProtocol()
        d = protocol.call("ping")
        protocol.dataReceived(b"ping []\n")
        self.assertIsNone(self.successResultOf(d))

    def test_builtinReplies(self):
        """
        C{whois}, C{options} and C{list} give the first element of their
        differently named replies; C{dae} gives the whole argument list.
        """
        protocol, _, _ = connectedProtocol()
        whois = protocol.call("whois")
        options = protocol.call("options")
        listing = protocol.call("list")
        dae = protocol.call("dae")
        protocol.dataReceived(
            b'credential [{"name":"N","pid":1,"port":2,"created":3}]\n'
            b'commands [{"whois":0,"options":0,"dae":0,"get":1}]\n'
            b"daemons [[]]\n"
            b'credential ["N",1,2,null]\n'
        )
        self.assertEqual(
            self.successResultOf(whois), {"name": "N", "pid": 1, "port": 2, "created": 3}
        )
        self.assertEqual(
            self.successResultOf(options), {"whois": 0, "options": 0, "dae": 0, "get": 1}
        )
        self.assertEqual(self.successResultOf(listing), [])
        self.assertEqual(self.successResultOf(dae), ["N", 1, 2, None])

    def test_replyOverride(self):
        """
        C{reply=} names the packet that answers the call (Node daemons answer
        under any name).
        """
        protocol, _, _ = connectedProtocol()
        d = protocol.call("ping", reply="pong")
        protocol.dataReceived(b'pong ["hi"]')
        self.assertEqual(self.successResultOf(d), "hi")

    def test_fault(self):
        """
        A C{fault} reply fails the call with a L{Fault} carrying the fault's
        code, message and command; the next call is unaffected.
        """
        protocol, _, _ = connectedProtocol()
        d1 = protocol.call("get", "k")
        d2 = protocol.call("get", "j")
        protocol.dataReceived(
            b'fault [{"command":"get","code":"not_found","message":"no k"}]\nget [5]\n'
        )
        f = self.failureResultOf(d1, Fault)
        self.assertEqual(
            (f.value.code, f.value.message, f.value.command), ("not_found", "no k", "get")
        )
        self.assertEqual(self.successResultOf(d2), 5)

    def test_malformedFault(self):
        """
        A fault without the expected object still fails the head call with a
        L{Fault} (code C{bad_packet}), and matching goes on.
        """
        protocol, _, _ = connectedProtocol()
        ds = [protocol.call("get", k) for k in "abcd"]
        protocol.dataReceived(
            b'fault []\nfault ["oops"]\nfault [{"code":7,"message":null}]\nget [4]\n'
        )
        codes = [self.failureResultOf(d, Fault).value for d in ds[:3]]
        self.assertEqual([c.code for c in codes], ["bad_packet"] * 3)
        self.assertEqual([c.command for c in codes], ["get"] * 3)
        self.assertEqual(self.successResultOf(ds[3]), 4)

    def test_timeout(self):
        """
        A call with no reply within its timeout fails with L{CallTimeout}; its
        late reply is discarded rather than taken for the next call's.
        """
        protocol, _, clock = connectedProtocol(timeout=5)
        first = protocol.call("get", "a")
        clock.advance(3)
        second = protocol.call("get", "b", timeout=10)
        clock.advance(2)
        self.failureResultOf(first, CallTimeout)
        self.assertNoResult(second)
        protocol.dataReceived(b'get ["late a"]\n')
        self.assertNoResult(second)
        protocol.dataReceived(b'get ["b"]\n')
        self.assertEqual(self.successResultOf(second), "b")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_noTimeout(self):
        """
        With C{timeout=None} on the protocol, calls wait forever and no timer
        is set.
        """
        protocol, _, clock = connectedProtocol(timeout=None)
        d = protocol.call("get", "a")
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10**6)
        self.assertNoResult(d)

    def test_unansweredAbandonedCallDropped(self):
        """
        A Node daemon never answers an unknown command: once that call timed
        out, a reply matching the next live call answers it, and the
        abandoned slot is dropped.
        """
        protocol, _, clock = connectedProtocol(timeout=1)
        unknown = protocol.call("nope")
        clock.advance(1)
        self.failureResultOf(unknown, CallTimeout)
        d = protocol.call("get", "a")
        protocol.dataReceived(b"get [1]\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(protocol.pendingCount, 0)

    def test_eventKeepsAbandonedSlot(self):
        """
        An event arriving while an abandoned call is at the head does not
        drop it: its late reply is still consumed.
        """
        protocol, _, clock = connectedProtocol(timeout=1)
        events = []
        protocol.addEventListener("tick", events.append)
        first = protocol.call("get", "a")
        clock.advance(1)
        second = protocol.call("get", "b")
        protocol.dataReceived(b'tick [1]\nget ["late a"]\nget ["b"]\n')
        self.failureResultOf(first, CallTimeout)
        self.assertEqual(events, [[1]])
        self.assertEqual(self.successResultOf(second), "b")

    def test_cancelAbandons(self):
        """
        Cancelling a call's Deferred fails it with L{CancelledError}, stops its
        timer, and its late reply is discarded.
        """
        protocol, _, clock = connectedProtocol()
        first = protocol.call("get", "a")
        second = protocol.call("get", "b")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        protocol.dataReceived(b'get ["a"]\nget ["b"]\n')
        self.assertEqual(self.successResultOf(second), "b")

    def test_nodeRepliesWithoutNewline(self):
        """
        Node-style replies with no delimiter, coalesced into one read or split
        over several, are decoded.
        """
        protocol, _, _ = connectedProtocol()
        ds = [protocol.call("get", k) for k in "abcd"]
        protocol.dataReceived(b'get [1]get ["x]"]')
        protocol.dataReceived(b'get [[3')
        protocol.dataReceived(b"]] get [4]")
        self.assertEqual([self.successResultOf(d) for d in ds], [1, "x]", [3], 4])

    def test_daeReplyThenClose(self):
        """
        A Node daemon answers C{dae} and closes: the credential is delivered,
        then every later pending call fails with L{GuestConnectionLost}.
        """
        protocol, _, _ = connectedProtocol()
        dae = protocol.call("dae")
        after = protocol.call("get", "a")
        protocol.dataReceived(b'credential ["N",12,')
        protocol.dataReceived(b"4567,null]")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(dae), ["N", 12, 4567, None])
        self.failureResultOf(after, GuestConnectionLost)

    def test_lastPacketEndedByClose(self):
        """
        A final packet that only the close delimits (a bare name) answers its
        call before the pending calls fail.
        """
        protocol, _, _ = connectedProtocol()
        d = protocol.call("ping")
        protocol.dataReceived(b"ping")
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))

    def test_connectionLostFailsEveryCall(self):
        """
        When the connection is lost every pending call fails with its own
        L{GuestConnectionLost}, and every timer is cancelled.
        """
        protocol, _, clock = connectedProtocol()
        ds = [protocol.call("get", k) for k in "abc"]
        protocol.connectionLost(Failure(ConnectionLost("reset")))
        failures = [self.failureResultOf(d, GuestConnectionLost) for d in ds]
        self.assertEqual(len({id(f.value) for f in failures}), 3)
        self.assertIn("reset", str(failures[0].value))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(protocol.pendingCount, 0)

    def test_callAfterConnectionLost(self):
        """
        A call on a lost connection fails at once with L{GuestConnectionLost}
        and sends nothing.
        """
        protocol, transport, _ = connectedProtocol()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(protocol.call("get", "a"), GuestConnectionLost)
        self.assertEqual(transport.value(), b"")

    def test_whenDisconnected(self):
        """
        L{GuestProtocol.whenDisconnected} fires once the connection is lost,
        and at once afterwards.
        """
        protocol, _, _ = connectedProtocol()
        d = protocol.whenDisconnected()
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.successResultOf(protocol.whenDisconnected())

    def test_events(self):
        """
        A packet that answers no call goes to the listeners for its name, as
        C{listener(args)}, and to the C{"*"} listeners, as
        C{listener(name, args)}; a pending call is not disturbed.
        """
        protocol, _, _ = connectedProtocol()
        ticks, everything = [], []
        protocol.addEventListener("tick", ticks.append)
        protocol.addEventListener("*", lambda name, args: everything.append((name, args)))
        d = protocol.call("get", "a")
        protocol.dataReceived(b"tick [1]\nother []\nget [2]\n")
        self.assertEqual(ticks, [[1]])
        self.assertEqual(everything, [("tick", [1]), ("other", [])])
        self.assertEqual(self.successResultOf(d), 2)

    def test_removeEventListener(self):
        """
        A removed listener is no longer called; removing one that was never
        added does nothing.
        """
        protocol, _, _ = connectedProtocol()
        ticks = []
        protocol.addEventListener("tick", ticks.append)
        protocol.removeEventListener("tick", ticks.append)
        protocol.removeEventListener("tock", ticks.append)
        protocol.dataReceived(b"tick [1]\n")
        self.assertEqual(ticks, [])

    def test_raisingListener(self):
        """
        A listener that raises is logged; the other listeners still run and
        the connection keeps working.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol, transport, _ = connectedProtocol()
        ticks = []
        protocol.addEventListener("tick", lambda args: 1 / 0)
        protocol.addEventListener("tick", ticks.append)
        d = protocol.call("get", "a")
        protocol.dataReceived(b"tick [1]\nget [2]\n")
        self.assertEqual(ticks, [[1]])
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        failures = [e for e in logged if "log_failure" in e]
        self.assertEqual(failures[0]["event"], "tick")
        self.assertFalse(transport.disconnecting)

    def test_maxPending(self):
        """
        Beyond C{maxPending} unanswered calls, a call fails at once with
        L{TooManyPending} and sends nothing; once a reply comes, calls work
        again.
        """
        protocol, transport, _ = connectedProtocol(maxPending=2)
        first = protocol.call("get", "a")
        protocol.call("get", "b")
        transport.clear()
        self.failureResultOf(protocol.call("get", "c"), TooManyPending)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"get [1]\n")
        self.assertEqual(self.successResultOf(first), 1)
        self.assertNoResult(protocol.call("get", "d"))

    def test_undecodableInputLogged(self):
        """
        Undecodable input that answers no call is logged as a warning and
        ignored.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol, transport, _ = connectedProtocol()
        d = protocol.call("get", "a")
        protocol.dataReceived(b"\x01bad []\nget [1]\n")
        self.assertEqual(self.successResultOf(d), 1)
        warnings = [e for e in logged if e["log_level"] == LogLevel.warn]
        self.assertEqual(warnings[0]["code"], "bad_packet")
        self.assertFalse(transport.disconnecting)

    def test_undecodableReplyFailsItsCall(self):
        """
        An undecodable reply to the head call fails that call with a L{Fault}
        of the decoding error's code, so later replies do not shift.
        """
        protocol, _, _ = connectedProtocol()
        first = protocol.call("get", "a")
        second = protocol.call("get", "b")
        protocol.dataReceived(b"get [NaN]\nget [2]\n")
        self.assertEqual(self.failureResultOf(first, Fault).value.code, "bad_json")
        self.assertEqual(self.successResultOf(second), 2)

    def test_tooLongCloses(self):
        """
        A packet longer than C{maxLength} closes the connection.
        """
        protocol, transport, _ = connectedProtocol(maxLength=16)
        protocol.call("get", "a")
        protocol.dataReceived(b"get [" + b"1," * 20)
        self.assertTrue(transport.disconnecting)

    def test_unsolicitedFault(self):
        """
        A fault when no call is pending is logged, not raised.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol, _, _ = connectedProtocol()
        protocol.dataReceived(b'fault [{"command":null,"code":"bad_packet","message":"x"}]\n')
        self.assertEqual(logged[-1]["log_level"], LogLevel.warn)

    def test_unencodableArguments(self):
        """
        Arguments JSON cannot encode fail the call at once; nothing is sent.
        """
        protocol, transport, _ = connectedProtocol()
        self.failureResultOf(protocol.call("get", object()), TypeError)
        self.failureResultOf(protocol.call("bad name"), ValueError)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(protocol.pendingCount, 0)

    def test_notConnected(self):
        """
        A call before the connection is made fails with
        L{GuestConnectionLost}.
        """
        protocol = GuestProtocol(Clock())
        self.failureResultOf(protocol.call("get"), GuestConnectionLost)

    def test_factorySharesListeners(self):
        """
        Every protocol a L{GuestFactory} builds uses the factory's listeners
        and settings.
        """
        factory = GuestFactory(Clock(), timeout=3, maxPending=7)
        ticks = []
        factory.listeners.add("tick", ticks.append)
        for _ in range(2):
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(b"tick [1]\n")
        self.assertEqual(ticks, [[1], [1]])
        self.assertEqual((protocol.timeout, protocol.maxPending), (3, 7))


class Slow(Daemon):
    """
    A daemon whose C{slow} command answers when the test says so.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.waiting = {}

    @command
    def slow(self, key):
        self.waiting[key] = Deferred()
        return self.waiting[key]

    @command
    def fast(self, value):
        return value

    @command
    def refuse(self):
        raise Fault("unauthorized", "no")


class RetiringAfterDaeTests(SynchronousTestCase):
    """
    The daemon closes the connection after answering C{dae}: nothing more
    is sent on it.
    """

    def test_noCallAfterDae(self):
        """
        A call made after C{dae} on the same connection fails at once with
        L{GuestConnectionLost} instead of being sent into the void, and
        only C{dae} went on the wire.
        """
        protocol, transport, clock = connectedProtocol()
        protocol.call("dae")
        self.assertTrue(protocol.retiring)
        failure = self.failureResultOf(protocol.call("whois"), GuestConnectionLost)
        self.assertIn("after dae", str(failure.value))
        self.assertEqual(transport.value(), b"dae []\n")


class GuestProtocolDaemonTests(SynchronousTestCase):
    """
    L{GuestProtocol} against a real daemon protocol, connected by iosim
    (pumped by hand).
    """

    def setUp(self):
        self.daemon = Slow()
        self.connection = connectDaemon(self.daemon, autoPump=False)
        self.protocol = self.connection.client

    def test_outOfOrderCompletion(self):
        """
        Handlers finishing out of order still give every call its own value:
        the daemon replies in command order.
        """
        a = self.protocol.call("slow", "a")
        b = self.protocol.call("slow", "b")
        c = self.protocol.call("fast", "c")
        self.connection.pump()
        self.assertEqual(sorted(self.daemon.waiting), ["a", "b"])
        self.daemon.waiting["b"].callback("B")
        self.connection.pump()
        for d in (a, b, c):
            self.assertNoResult(d)
        self.daemon.waiting["a"].callback("A")
        self.connection.pump()
        self.assertEqual([self.successResultOf(d) for d in (a, b, c)], ["A", "B", "c"])

    def test_faultAndBuiltins(self):
        """
        A handler's fault arrives typed; built-ins and unknown commands are
        answered in order with the rest.
        """
        calls = [
            self.protocol.call("refuse"),
            self.protocol.call("whois"),
            self.protocol.call("nope"),
            self.protocol.call("options"),
            self.protocol.call("fast", 1),
        ]
        self.connection.pump()
        self.assertEqual(self.failureResultOf(calls[0], Fault).value.code, "unauthorized")
        self.assertEqual(self.successResultOf(calls[1])["name"], "Slow")
        self.assertEqual(self.failureResultOf(calls[2], Fault).value.code, "unknown_command")
        self.assertEqual(
            self.successResultOf(calls[3]),
            {"whois": 0, "options": 0, "dae": 0, "slow": 1, "fast": 1, "refuse": 0},
        )
        self.assertEqual(self.successResultOf(calls[4]), 1)

    def test_daeThenClose(self):
        """
        The daemon answers C{dae} then closes: the credential arrives, the
        calls after it fail with L{GuestConnectionLost}.
        """
        dae = self.protocol.call("dae")
        after = self.protocol.call("fast", 1)
        self.connection.pump()
        self.assertEqual(self.successResultOf(dae)[0], "Slow")
        self.failureResultOf(after, GuestConnectionLost)

    def test_events(self):
        """
        Events the daemon broadcasts reach the guest's listeners.
        """
        ticks = []
        self.protocol.addEventListener("tick", ticks.append)
        self.daemon.broadcast("tick", 1, "x")
        self.connection.pump()
        self.assertEqual(ticks, [[1, "x"]])


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    A client endpoint whose connection attempts the test completes.

    @ivar attempts: the (factory, Deferred) of every attempt.
    """

    def __init__(self, clock):
        self.clock = clock
        self.attempts = []

    def connect(self, factory):
        d = Deferred()
        self.attempts.append((factory, d))
        return d

    def succeed(self):
        """
        Complete the last attempt, and run the reactor turn in which the
        guest releases its waiting calls: return the client protocol (as the
        reconnecting service wrapped it) and its transport.
        """
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        d.callback(protocol)
        self.clock.advance(0)
        return protocol, transport

    def refuse(self):
        """
        Fail the last attempt with L{ConnectionRefusedError}.
        """
        self.attempts[-1][1].errback(ConnectionRefusedError())


class GuestTests(SynchronousTestCase):
    """
    L{Guest} with a fake endpoint and a clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint(self.clock)
        self.guest = Guest(
            self.clock, self.endpoint, timeout=5, connectTimeout=10, retryPolicy=lambda n: 1.0
        )

    def test_interface(self):
        """
        L{Guest} provides L{IGuest}.
        """
        self.assertTrue(verifyObject(IGuest, self.guest))

    def test_constructorDoesNothing(self):
        """
        Making a L{Guest} neither connects nor schedules anything.
        """
        self.assertEqual(self.endpoint.attempts, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_callWaitsForConnection(self):
        """
        A call starts the connection, is sent once connected, and gets its
        reply.
        """
        d = self.guest.call("get", "a")
        self.assertEqual(len(self.endpoint.attempts), 1)
        protocol, transport = self.endpoint.succeed()
        self.assertEqual(transport.value(), b'get ["a"]\n')
        protocol.dataReceived(b"get [1]\n")
        self.assertEqual(self.successResultOf(d), 1)

    def test_callTimeoutFromGuest(self):
        """
        The guest's C{timeout} applies to calls once sent.
        """
        d = self.guest.call("get", "a")
        self.endpoint.succeed()
        self.clock.advance(5)
        self.failureResultOf(d, CallTimeout)

    def test_connectTimeout(self):
        """
        A call that gets no connection within C{connectTimeout} fails with
        L{GuestConnectionLost}.
        """
        d = self.guest.call("get", "a")
        self.clock.advance(9)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertIn("within 10", str(self.failureResultOf(d, GuestConnectionLost).value))

    def test_retryThenConnect(self):
        """
        A refused connection is retried after the retry policy's delay, and a
        waiting call is sent once a retry connects.
        """
        d = self.guest.call("get", "a")
        self.endpoint.refuse()
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(len(self.endpoint.attempts), 2)
        protocol, _ = self.endpoint.succeed()
        protocol.dataReceived(b"get [1]\n")
        self.assertEqual(self.successResultOf(d), 1)

    def test_reconnectKeepsListeners(self):
        """
        When the connection drops, pending calls fail with
        L{GuestConnectionLost}; the guest reconnects and its event listeners
        apply to the new connection.
        """
        ticks = []
        self.guest.addEventListener("tick", ticks.append)
        d = self.guest.call("get", "a")
        protocol, transport = self.endpoint.succeed()
        protocol.dataReceived(b"tick [1]\n")
        transport.loseConnection()
        self.failureResultOf(d, GuestConnectionLost)
        d = self.guest.call("get", "b")
        self.clock.advance(1)
        protocol, _ = self.endpoint.succeed()
        protocol.dataReceived(b"tick [2]\nget [3]\n")
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(ticks, [[1], [2]])
        self.guest.removeEventListener("tick", ticks.append)
        protocol.dataReceived(b"tick [4]\n")
        self.assertEqual(ticks, [[1], [2]])

    def test_callFromConnectionLostErrback(self):
        """
        A call made from the errback of a call that lost its connection waits
        for the next connection instead of failing on the dead one.
        """
        retried = self.guest.call("get", "a").addErrback(
            lambda f: self.guest.call("get", "again")
        )
        _, transport = self.endpoint.succeed()
        transport.loseConnection()
        self.assertNoResult(retried)
        self.clock.advance(1)
        protocol, transport = self.endpoint.succeed()
        self.assertEqual(transport.value(), b'get ["again"]\n')
        protocol.dataReceived(b"get [2]\n")
        self.assertEqual(self.successResultOf(retried), 2)

    def test_waitingCallsKeepTheirOrder(self):
        """
        Calls waiting for a connection are sent in the order they were made,
        before a call made once the connection is up.
        """
        self.guest.call("set", "k", 1)
        self.guest.call("set", "k", 2)
        factory, d = self.endpoint.attempts[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        self.guest.call("get", "k")
        self.clock.advance(0)
        self.assertEqual(
            transport.value(), b'set ["k",1]\nset ["k",2]\nget ["k"]\n'
        )

    def test_closeFromCallback(self):
        """
        Closing the guest from the callback of its first connection works
        (the reconnecting service is not re-entered).
        """
        closed = []
        d = Guest.connect(self.clock, self.endpoint)
        d.addCallback(lambda guest: guest.close().addCallback(closed.append))
        self.endpoint.succeed()
        self.assertEqual(closed, [None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close(self):
        """
        L{Guest.close} disconnects: pending calls fail with
        L{GuestConnectionLost}, the returned Deferred fires, later calls fail
        at once, and nothing is left scheduled.
        """
        d = self.guest.call("get", "a")
        self.endpoint.succeed()
        self.successResultOf(self.guest.close())
        self.failureResultOf(d, GuestConnectionLost)
        self.failureResultOf(self.guest.call("get", "b"), GuestConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeWhileConnecting(self):
        """
        Closing while a call waits for a connection fails that call with
        L{GuestConnectionLost}.
        """
        d = self.guest.call("get", "a")
        closed = self.guest.close()
        self.failureResultOf(d, GuestConnectionLost)
        self.successResultOf(closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeUnstarted(self):
        """
        Closing a guest that never connected fires at once.
        """
        self.successResultOf(self.guest.close())
        self.assertEqual(self.endpoint.attempts, [])

    def test_cancelWhileConnecting(self):
        """
        Cancelling a call that waits for a connection fails it with
        L{CancelledError}.
        """
        d = self.guest.call("get", "a")
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_connect(self):
        """
        L{Guest.connect} fires with the guest once it is connected.
        """
        d = Guest.connect(self.clock, self.endpoint)
        self.assertNoResult(d)
        self.endpoint.succeed()
        guest = self.successResultOf(d)
        self.assertIsInstance(guest, Guest)
        self.successResultOf(guest.close())

    def test_connectFails(self):
        """
        L{Guest.connect} fails with L{GuestConnectionLost} when no connection
        comes within C{connectTimeout}, and stops retrying.
        """
        d = Guest.connect(self.clock, self.endpoint, connectTimeout=2, retryPolicy=lambda n: 1.0)
        self.endpoint.refuse()
        self.clock.advance(1)
        self.endpoint.refuse()
        self.clock.advance(1)
        self.failureResultOf(d, GuestConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_endpointString(self):
        """
        An endpoint string is parsed with C{clientFromString} on the guest's
        reactor.
        """
        reactor = MemoryReactorClock()
        guest = Guest(reactor, "tcp:127.0.0.1:4567")
        guest.call("get", "a")
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 4567))

    def test_resolvingEndpoint(self):
        """
        A callable endpoint is called before every connection attempt and may
        return a Deferred of an endpoint (the seam for lookups by name).
        """
        resolved = []

        def resolve():
            resolved.append(True)
            d = Deferred()
            self.clock.callLater(0, d.callback, self.endpoint)
            return d

        guest = Guest(self.clock, resolve, retryPolicy=lambda n: 1.0)
        d = guest.call("get", "a")
        self.clock.advance(0)
        self.endpoint.refuse()
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertEqual(len(resolved), 2)
        protocol, _ = self.endpoint.succeed()
        protocol.dataReceived(b"get [1]\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.successResultOf(guest.close())

    def test_badEndpoint(self):
        """
        Something that is no endpoint is refused at once.
        """
        self.assertRaises(TypeError, Guest, self.clock, 4567)


class HangingEcho(Echo):
    """
    The echo daemon plus a C{hang} command that never answers.
    """

    @command
    def hang(self):
        return Deferred()


class GuestIntegrationTests(TestCase):
    """
    A real L{Guest} and a real daemon over loopback TCP, in the test's reactor.
    """

    @inlineCallbacks
    def startDaemon(self, listen="tcp:0:interface=127.0.0.1"):
        daemon = HangingEcho(name="echo", listen=listen, reactor=globalReactor, drainTimeout=0.01)
        daemon.startService()
        self.addCleanup(lambda: daemon.stopService() if daemon.running else None)
        yield daemon.whenListening()
        return daemon

    @inlineCallbacks
    def test_pipelinedCalls(self):
        """
        Many calls pipelined on one real connection each get their own reply.
        """
        daemon = yield self.startDaemon()
        guest = yield Guest.connect(globalReactor, f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(guest.close)
        values = yield gatherResults([guest.call("echo", i) for i in range(200)])
        self.assertEqual(values, list(range(200)))
        whois = yield guest.call("whois")
        self.assertEqual(whois["port"], daemon.port)

    @inlineCallbacks
    def test_daemonStopsAndComesBack(self):
        """
        When the daemon stops, a pending call fails with
        L{GuestConnectionLost}; a call made while it is down is answered once
        a daemon listens on the same port again.
        """
        daemon = yield self.startDaemon()
        port = daemon.port
        guest = yield Guest.connect(
            globalReactor, f"tcp:127.0.0.1:{port}", retryPolicy=lambda n: 0.02
        )
        self.addCleanup(guest.close)
        self.assertEqual((yield guest.call("echo", "before")), "before")
        hanging = guest.call("hang")
        yield daemon.stopService()
        yield self.assertFailure(hanging, GuestConnectionLost)
        later = guest.call("echo", "after")
        yield self.startDaemon(f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual((yield later), "after")
