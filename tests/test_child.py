"""
Tests for L{dae_service.child}, run in-process: the description, the
report channel, and L{main} on the test's reactor with pipes standing in
for the manager's.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dae_service import Daemon
from dae_service.child import (
    EX_CONFIG,
    EX_FAILURE,
    EX_OK,
    ChildConfigError,
    _PipeWatcher,
    _Reporter,
    _textLineObserver,
    childDescription,
    main,
)


def describe(**overrides: Any) -> str:
    description = {
        "name": "echo",
        "reference": "dae_service.examples.echo:Echo",
        "listen": "tcp:0:interface=127.0.0.1",
        "settings": {},
        "maxLength": None,
    }
    description.update(overrides)
    return json.dumps(description)


class Refuses(Daemon):
    """
    A daemon whose constructor rejects its settings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("size must be positive")


class DescriptionTests(SynchronousTestCase):
    """
    L{childDescription}.
    """

    def test_full(self) -> None:
        """
        C{DAE_CHILD} gives the name, reference, endpoint, settings and
        packet limit.
        """
        description = childDescription(
            {"DAE_CHILD": describe(settings={"a": 1}, maxLength=100)}
        )
        self.assertEqual(
            description,
            {
                "name": "echo",
                "reference": "dae_service.examples.echo:Echo",
                "listen": "tcp:0:interface=127.0.0.1",
                "settings": {"a": 1},
                "maxLength": 100,
                "kind": "daemon",
                "drainTimeout": None,
                "tls": None,
            },
        )

    def test_poolKeys(self) -> None:
        """
        C{kind}, C{drainTimeout} and C{tls} are read when given.
        """
        description = childDescription(
            {
                "DAE_CHILD": describe(
                    kind="factory", drainTimeout=2.5, tls={"cert": "c.pem", "key": "k.pem"}
                )
            }
        )
        self.assertEqual(
            (description["kind"], description["drainTimeout"], description["tls"]),
            ("factory", 2.5, {"cert": "c.pem", "key": "k.pem"}),
        )

    def test_defaults(self) -> None:
        """
        Missing or null settings are an empty table; a missing limit is
        L{None}; the kind is C{daemon}, with no drain timeout and no TLS.
        """
        text = json.dumps({"name": "n", "reference": "m:C", "listen": "tcp:0", "settings": None})
        description = childDescription({"DAE_CHILD": text})
        self.assertEqual((description["settings"], description["maxLength"]), ({}, None))
        self.assertEqual(
            (description["kind"], description["drainTimeout"], description["tls"]),
            ("daemon", None, None),
        )

    def test_byHand(self) -> None:
        """
        Without C{DAE_CHILD}, argv gives the reference and, optionally, the
        endpoint.
        """
        description = childDescription({}, ["child", "pkg.mod:Store"])
        self.assertEqual(
            (description["name"], description["listen"]),
            ("Store", "tcp:0:interface=127.0.0.1"),
        )
        description = childDescription({"DAE": "s"}, ["child", "pkg.mod:Store", "tcp:7000"])
        self.assertEqual((description["name"], description["listen"]), ("s", "tcp:7000"))

    def test_bad(self) -> None:
        """
        A missing or malformed description is a L{ChildConfigError}.
        """
        for environ in (
            {},
            {"DAE_CHILD": "{not json"},
            {"DAE_CHILD": "[]"},
            {"DAE_CHILD": describe(name=3)},
            {"DAE_CHILD": describe(listen=None)},
            {"DAE_CHILD": describe(settings=[1])},
            {"DAE_CHILD": describe(maxLength=0)},
            {"DAE_CHILD": describe(maxLength=True)},
            {"DAE_CHILD": describe(maxLength="10")},
            {"DAE_CHILD": describe(kind="worker")},
            {"DAE_CHILD": describe(drainTimeout=0)},
            {"DAE_CHILD": describe(drainTimeout=True)},
            {"DAE_CHILD": describe(tls={"cert": "c.pem"})},
            {"DAE_CHILD": describe(tls="c.pem")},
        ):
            self.assertRaises(ChildConfigError, childDescription, environ, ["child"])


class ReporterTests(SynchronousTestCase):
    """
    L{_Reporter} writes JSON lines to the report pipe.
    """

    def test_lines(self) -> None:
        """
        Each report is one compact JSON line.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        reporter = _Reporter(w)
        reporter.report({"event": "ready", "port": 5})
        reporter.report({"event": "x"})
        self.assertEqual(os.read(r, 1000), b'{"event":"ready","port":5}\n{"event":"x"}\n')

    def test_noChannel(self) -> None:
        """
        Without a report fd, reports go nowhere.
        """
        _Reporter(None).report({"event": "ready"})

    def test_managerGone(self) -> None:
        """
        A report to a manager that closed its end is logged, not raised.
        """
        r, w = os.pipe()
        os.close(r)
        self.addCleanup(os.close, w)
        _Reporter(w).report({"event": "ready"})


class ObserverTests(SynchronousTestCase):
    """
    The child's log format.
    """

    def test_format(self) -> None:
        """
        One C{namespace level: message} line per event; debug events are
        dropped; a failure's traceback follows its line.
        """
        stream = io.StringIO()
        observer = _textLineObserver(stream)
        log = Logger(namespace="here", observer=observer)
        log.debug("hidden")
        log.info("hello {who}", who="you")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("oops")
        lines = stream.getvalue().splitlines()
        self.assertEqual(lines[:2], ["here info: hello you", "here critical: oops"])
        self.assertIn("ZeroDivisionError", lines[-1])


class Pipes:
    """
    The manager's side of a child's control and report pipes, for one test.
    """

    def __init__(self, case: TestCase) -> None:
        self.controlRead, self.controlWrite = os.pipe()
        self.reportRead, self.reportWrite = os.pipe()
        for fd in (self.controlRead, self.reportRead, self.reportWrite):
            case.addCleanup(os.close, fd)
        case.addCleanup(self.closeControl)
        self.environ = {
            "DAE_CONTROL_FD": str(self.controlRead),
            "DAE_REPORT_FD": str(self.reportWrite),
        }
        self._buffer = b""
        self._waiter: Any = None
        self._watcher = _PipeWatcher(reactor, self.reportRead, self._data, lambda r: None)
        self._watcher.start()
        case.addCleanup(self._watcher.stop)

    def closeControl(self) -> None:
        if self.controlWrite is not None:
            os.close(self.controlWrite)
            self.controlWrite = None

    def _data(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def _deliver(self) -> None:
        if self._waiter is not None and b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            d, self._waiter = self._waiter, None
            d.callback(json.loads(line))

    def nextReport(self) -> Deferred:
        self._waiter = Deferred()
        d = self._waiter
        self._deliver()
        return d


class _LineClient(Protocol):
    def __init__(self) -> None:
        self.received: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.received.called:
            self.received.callback(data)


class MainTests(TestCase):
    """
    L{main} in this process, on the test's reactor.
    """

    timeout = 20

    @inlineCallbacks
    def test_lifecycle(self):
        """
        The daemon listens and reports C{ready} with its pid, port and start
        time; it answers; when the control pipe closes it stops, and the
        exit code is 0.
        """
        pipes = Pipes(self)
        environ = {**pipes.environ, "DAE_CHILD": describe(name="e1")}
        done = main(reactor, environ, ["child"])
        ready = yield pipes.nextReport()
        self.assertEqual(ready["event"], "ready")
        self.assertEqual(ready["pid"], os.getpid())
        self.assertIsInstance(ready["port"], int)
        self.assertIsInstance(ready["created"], int)

        client = _LineClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ready["port"]), client)
        client.transport.write(b'echo [1]\n')
        self.assertEqual((yield client.received), b"echo [1]\n")
        client.transport.loseConnection()

        self.assertNoResult(done)
        pipes.closeControl()
        code = yield done
        self.assertEqual(code, EX_OK)
        refused = connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", ready["port"]), Protocol()
        )
        yield self.assertFailure(refused, Exception)

    @inlineCallbacks
    def test_listenFailure(self):
        """
        A daemon that cannot listen reports C{failed} and exits 1.
        """
        busy = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        pipes = Pipes(self)
        listen = f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        done = main(reactor, {**pipes.environ, "DAE_CHILD": describe(listen=listen)})
        failed = yield pipes.nextReport()
        self.assertEqual(failed["event"], "failed")
        self.assertNotIn("\n", failed["error"])
        self.assertEqual((yield done), EX_FAILURE)
        self.flushLoggedErrors()

    def test_configErrors(self):
        """
        A missing description, an unimportable reference, a bad endpoint
        string or settings the class refuses: C{failed} and 78 at once.
        """
        for child in (
            None,
            describe(reference="no.such.module:X"),
            describe(reference="dae_service.examples.echo:Nothing"),
            describe(reference="json:JSONDecoder"),
            describe(listen="nonsense:1:2"),
            describe(reference=f"{__name__}:Refuses"),
        ):
            r, w = os.pipe()
            self.addCleanup(os.close, r)
            self.addCleanup(os.close, w)
            environ = {"DAE_REPORT_FD": str(w)}
            if child is not None:
                environ["DAE_CHILD"] = child
            code = self.successResultOf(main(reactor, environ, ["child"]))
            self.assertEqual(code, EX_CONFIG, child)
            report = json.loads(os.read(r, 10000))
            self.assertEqual(report["event"], "failed")
            self.assertTrue(report["error"], child)
        self.assertIn(
            "size must be positive", report["error"]
        )

    def test_badDescriptorNumber(self):
        """
        A descriptor variable that is not a number is a config error.
        """
        code = self.successResultOf(main(reactor, {"DAE_CONTROL_FD": "x", "DAE_CHILD": describe()}))
        self.assertEqual(code, EX_CONFIG)


class PipeWatcherTests(TestCase):
    """
    L{_PipeWatcher} on a real pipe.
    """

    timeout = 10

    @inlineCallbacks
    def test_dataThenEnd(self):
        """
        Data arrives as it is written; EOF ends the watch once.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        received = []
        ended: Deferred = Deferred()
        watcher = _PipeWatcher(reactor, r, received.append, lambda f: ended.callback(f.value))
        watcher.start()
        os.write(w, b"abc")
        os.close(w)
        reason = yield ended
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual(b"".join(received), b"abc")
        watcher.stop()
