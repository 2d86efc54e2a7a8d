"""
Tests for L{dae_service.web}: the dashboard's site driven over in-memory
HTTP connections (a real L{Site} and L{HTTPChannel} on a
L{StringTransport}), against a real L{Dae} on a L{FakeLauncher} and a
L{MemoryReactorClock}.  No real process, socket or time, except the last
class, which serves a socket adopted the way systemd socket activation
hands one over.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport, _FakePort
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dae_service.config import loadConfig
from dae_service.examples.echo import Echo
from dae_service.launcher import FakeLauncher, FakeProcess
from dae_service.manager import Dae
from dae_service.metrics import DaeMetrics, ProcessSampler
from dae_service.registry import Entry
from dae_service.web import (
    MAX_LOG_COUNT,
    SESSION_COOKIE,
    WebService,
    isLocalAddress,
    loopbackByDefault,
)

CONFIG = """\
[dae]
listen = "tcp:7000:interface=127.0.0.1"
state_dir = "state"
web = "tcp:8080:interface=127.0.0.1"

[daemons.alpha]
daemon = "dae_service.examples.echo:Echo"
listen = "tcp:7101:interface=127.0.0.1"

[daemons.beta]
daemon = "dae_service.examples.echo:Echo"
requires = ["alpha"]
"""

ENVIRON = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


class WebReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose TCP ports report the interface they were
    asked for (L{MemoryReactorClock}'s always say C{0.0.0.0}), so that the
    web service's loopback test sees what a real reactor would.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _FakePort:
        super().listenTCP(port, factory, backlog, interface)
        if ":" in interface:
            return _FakePort(IPv6Address("TCP", interface, port))
        return _FakePort(IPv4Address("TCP", interface or "0.0.0.0", port))

    def listenUNIXDatagram(self, address: str, protocol: Any, maxPacketSize: int = 8192, mode: int = 0o666) -> Any:
        return _FakePort(UNIXAddress(address))


@dataclass
class Response:
    """
    One HTTP response as read off a L{StringTransport}.
    """

    code: int
    headers: dict
    body: bytes
    complete: bool
    raw: bytes = b""
    cookies: list = field(default_factory=list)

    def header(self, name: str) -> Optional[str]:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[tuple[str, Any]]:
        """
        The Server-Sent Events in the body: C{(event, data)} (data decoded
        from JSON), and C{(":", comment)} for comments.
        """
        found = []
        for block in self.body.decode("utf-8").split("\n\n"):
            if not block.strip():
                continue
            event, data = "message", []
            for line in block.split("\n"):
                if line.startswith(":"):
                    found.append((":", line[1:].strip()))
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line.startswith("retry: "):
                    found.append(("retry", int(line[7:])))
            if data:
                found.append((event, json.loads("\n".join(data))))
        return found


def parseResponse(raw: bytes) -> Response:
    """
    Parse one HTTP/1.1 response (possibly incomplete: a stream still
    open), decoding a chunked body as far as it goes.
    """
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {raw[:300]!r}")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers: dict = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers.setdefault(key.strip().lower(), []).append(value.strip())
    body = b""
    complete = False
    if headers.get("transfer-encoding", [""])[-1].lower() == "chunked":
        while True:
            sizeLine, sep, after = rest.partition(b"\r\n")
            if not sep:
                break
            size = int(sizeLine.split(b";")[0], 16)
            if size == 0:
                complete = True
                break
            if len(after) < size + 2:
                break
            body += after[:size]
            rest = after[size + 2 :]
    else:
        length = int(headers.get("content-length", ["0"])[-1])
        body = rest[:length]
        complete = len(rest) >= length
    return Response(code, headers, body, complete, raw, headers.get("set-cookie", []))


class Connection:
    """
    One in-memory HTTP connection to a L{Site}.
    """

    def __init__(self, site: Any, host: str = "127.0.0.1", port: int = 8080, peer: str = "127.0.0.1") -> None:
        self.protocol = site.buildProtocol(IPv4Address("TCP", peer, 40000))
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", host, port), peerAddress=IPv4Address("TCP", peer, 40000)
        )
        self.protocol.makeConnection(self.transport)

    def send(self, method: str, path: str, headers: Optional[dict] = None, body: bytes = b"") -> None:
        headers = dict(headers or {})
        headers.setdefault("Host", "127.0.0.1:8080")
        if body or method == "POST":
            headers.setdefault("Content-Length", str(len(body)))
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def response(self) -> Response:
        return parseResponse(self.transport.value())

    def close(self) -> None:
        if self.transport.connected:
            self.transport.connected = False
            self.protocol.connectionLost(Failure(ConnectionDone()))


class WebMixin:
    """
    Builds a running L{Dae} (alpha and beta on a L{FakeLauncher}) and a
    L{WebService} on it, and sends it requests.
    """

    def makeWeb(
        self,
        endpoint: Optional[str] = None,
        requireAuth: Optional[bool] = None,
        text: str = CONFIG,
        ready: bool = True,
        **webOptions: Any,
    ) -> WebService:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        path = os.path.join(self.directory, "tree.toml")
        with open(path, "w") as f:
            f.write(text)
        config = loadConfig(path, ENVIRON)
        self.reactor = WebReactor()
        self.launcher = FakeLauncher()
        self.manager = Dae(
            config,
            {d.name: Echo for d in config.daemons},
            self.reactor,
            launcher=self.launcher,
            listeningPorts=lambda pid: set(),
            environ=dict(ENVIRON),
        )
        self.manager.startService()
        self.addCleanup(self.stopManager)
        if ready:
            self.ready("alpha", 7101)
            self.ready("beta", 7102)
        self.sampler = ProcessSampler(self.manager, self.reactor, procRoot=os.path.join(self.directory, "proc"))
        self.metrics = DaeMetrics(self.manager, self.sampler, processCollector=False)
        self.web = WebService(
            self.manager, self.reactor, self.sampler, self.metrics, endpoint, requireAuth=requireAuth, **webOptions
        )
        self.web.startService()
        self.addCleanup(self.stopWeb)
        self.connections: list[Connection] = []
        return self.web

    def stopWeb(self) -> None:
        for c in self.connections:
            c.close()
        if self.web.running:
            self.successResultOf(self.web.stopService())

    def stopManager(self) -> None:
        if not self.manager.running:
            return
        d = self.manager.stopService()
        for i, process in enumerate(self.launcher.processes):
            if not process.exited:
                self.launcher.exit(i, signal=signal.SIGTERM)
        self.successResultOf(d)

    def process(self, name: str) -> FakeProcess:
        return [p for p in self.launcher.processes if p.spec.name == name][-1]

    def index(self, name: str) -> int:
        return self.launcher.processes.index(self.process(name))

    def ready(self, name: str, port: int) -> None:
        self.launcher.ready(self.index(name), port)

    def exit(self, name: str, **how: Any) -> None:
        self.launcher.exit(self.index(name), **(how or {"signal": signal.SIGTERM}))

    def connect(self, **kwargs: Any) -> Connection:
        connection = Connection(self.web.site, **kwargs)
        self.connections.append(connection)
        return connection

    def request(self, method: str, path: str, headers: Optional[dict] = None, body: bytes = b"", **kwargs: Any) -> Response:
        connection = self.connect(**kwargs)
        connection.send(method, path, headers, body)
        return connection.response()

    def get(self, path: str, headers: Optional[dict] = None, **kwargs: Any) -> Response:
        return self.request("GET", path, headers, **kwargs)

    def post(self, path: str, headers: Optional[dict] = None, csrf: bool = True, **kwargs: Any) -> Connection:
        headers = dict(headers or {})
        if csrf:
            headers.setdefault("X-Dae", "1")
        connection = self.connect(**kwargs)
        connection.send("POST", path, headers)
        return connection


class EndpointTests(SynchronousTestCase):
    """
    L{loopbackByDefault} and L{isLocalAddress}.
    """

    def test_tcpWithoutInterface(self) -> None:
        """
        A TCP endpoint that names no interface is bound to loopback.
        """
        self.assertEqual(loopbackByDefault("tcp:8080"), "tcp:8080:interface=127.0.0.1")
        self.assertEqual(loopbackByDefault("tcp6:8080"), "tcp6:8080:interface=\\:\\:1")
        self.assertEqual(
            loopbackByDefault("ssl:8443:privateKey=k.pem"), "ssl:8443:privateKey=k.pem:interface=127.0.0.1"
        )

    def test_explicitInterfaceKept(self) -> None:
        """
        An interface, given by name or position, is kept; so is every other
        kind of endpoint.
        """
        for description in (
            "tcp:8080:interface=0.0.0.0",
            "tcp:8080:10.1.2.3",
            "unix:address=/run/dae/web.sock:mode=600",
            "systemd:domain=INET:index=0",
        ):
            self.assertEqual(loopbackByDefault(description), description)

    def test_localAddresses(self) -> None:
        """
        Loopback addresses are local; unspecified and routable ones are
        not.
        """
        self.assertTrue(isLocalAddress(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertTrue(isLocalAddress(IPv4Address("TCP", "127.9.9.9", 1)))
        self.assertTrue(isLocalAddress(IPv6Address("TCP", "::1", 1)))
        self.assertFalse(isLocalAddress(IPv4Address("TCP", "0.0.0.0", 1)))
        self.assertFalse(isLocalAddress(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertFalse(isLocalAddress(IPv6Address("TCP", "::", 1)))
        self.assertFalse(isLocalAddress(object()))

    def test_unixSocketMode(self) -> None:
        """
        A UNIX socket is local only if its mode shuts out group and others.
        """
        path = os.path.abspath(self.mktemp())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        os.chmod(path, 0o600)
        self.assertTrue(isLocalAddress(UNIXAddress(path)))
        os.chmod(path, 0o660)
        self.assertFalse(isLocalAddress(UNIXAddress(path)))
        self.assertFalse(isLocalAddress(UNIXAddress(path + "-missing")))
        self.assertFalse(isLocalAddress(UNIXAddress(None)))


class ListeningTests(WebMixin, SynchronousTestCase):
    """
    Where the web service listens, and what it writes about it.
    """

    def test_configuredEndpoint(self) -> None:
        """
        By default it listens on the config's C{web} endpoint, writes
        C{web.json} (mode 0600, nothing secret) and needs no token on
        loopback.
        """
        self.makeWeb()
        port, _, _, interface = self.reactor.tcpServers[-1]
        self.assertEqual((port, interface), (8080, "127.0.0.1"))
        self.assertFalse(self.web.requireAuth)
        path = os.path.join(self.manager.config.stateDir, "web.json")
        with open(path) as f:
            self.assertEqual(json.load(f), {"url": "http://127.0.0.1:8080/", "port": 8080, "auth": False})
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertNotIn(self.manager.token, open(path).read())

    def test_noInterfaceMeansLoopback(self) -> None:
        """
        C{tcp:PORT} alone is bound to 127.0.0.1, and the log says so.
        """
        with capturedLogs() as events:
            self.makeWeb("tcp:8081")
        self.assertEqual(self.reactor.tcpServers[-1][3], "127.0.0.1")
        self.assertIn("loopback only", "\n".join(formatEvent(e) for e in events))

    def test_publicInterfaceNeedsAuth(self) -> None:
        """
        On a non-loopback interface every request needs the token.
        """
        self.makeWeb("tcp:8082:interface=0.0.0.0")
        self.assertTrue(self.web.requireAuth)
        with open(self.web.stateFile) as f:
            self.assertTrue(json.load(f)["auth"])

    def test_stopService(self) -> None:
        """
        Stopping removes C{web.json}, ends every event stream and cancels
        every timer.
        """
        self.makeWeb()
        stream = self.connect()
        stream.send("GET", "/api/events")
        self.assertEqual(len(self.web.hub.clients), 1)
        self.successResultOf(self.web.stopService())
        self.assertFalse(os.path.exists(self.web.stateFile))
        self.assertEqual(self.web.hub.clients, [])
        self.assertTrue(stream.response().complete)
        # The connection itself stays (keep-alive) until it idles out.
        self.reactor.advance(60)
        self.assertTrue(stream.transport.disconnecting)
        stream.close()
        self.sampler.stopService()
        self.stopManager()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_idleTimeout(self) -> None:
        """
        An idle connection is closed after a minute; one with an event
        stream open is not idle.
        """
        self.makeWeb()
        idle = self.connect()
        idle.send("GET", "/api/daemons")
        stream = self.connect()
        stream.send("GET", "/api/events")
        self.reactor.advance(59)
        self.assertFalse(idle.transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(idle.transport.disconnecting)
        self.reactor.advance(600)
        self.assertFalse(stream.transport.disconnecting)

    def test_listenFailure(self) -> None:
        """
        An endpoint that cannot listen is logged and fails
        L{WebService.whenListening}; the service itself stays up.
        """

        class Refusing(WebReactor):
            def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
                from twisted.internet.error import CannotListenError

                raise CannotListenError("127.0.0.1", 8080, OSError("in use"))

        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        path = os.path.join(self.directory, "tree.toml")
        with open(path, "w") as f:
            f.write(CONFIG)
        config = loadConfig(path, ENVIRON)
        manager = Dae(config, {}, Refusing(), launcher=FakeLauncher(), environ=dict(ENVIRON))
        web = WebService(manager, manager.reactor)
        with capturedLogs() as events:
            web.startService()
        self.failureResultOf(web.whenListening())
        self.assertIn("cannot listen", "\n".join(formatEvent(e) for e in events))
        self.successResultOf(web.stopService())


class PageTests(WebMixin, SynchronousTestCase):
    """
    The dashboard page and its static files.
    """

    def test_page(self) -> None:
        """
        C{/} is the dashboard: HTML with a strict CSP that allows only its
        own script and style sheet, and no token in it.
        """
        self.makeWeb()
        response = self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "text/html; charset=utf-8")
        csp = response.header("content-security-policy")
        self.assertIn("default-src 'none'", csp)
        self.assertIn("script-src 'self'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertEqual(response.header("x-frame-options"), "DENY")
        self.assertIn(b'src="static/dashboard.js"', response.body)
        self.assertNotIn(self.manager.token.encode(), response.body)
        self.assertNotIn(b"<script>", response.body)

    def test_static(self) -> None:
        """
        The script and the style sheet are served with their types.
        """
        self.makeWeb()
        js = self.get("/static/dashboard.js")
        self.assertEqual(js.code, 200)
        self.assertEqual(js.header("content-type"), "text/javascript; charset=utf-8")
        self.assertIn(b"EventSource", js.body)
        css = self.get("/static/dashboard.css")
        self.assertEqual(css.header("content-type"), "text/css; charset=utf-8")
        self.assertEqual(self.get("/static/nothing.js").code, 404)


class ApiTests(WebMixin, SynchronousTestCase):
    """
    The JSON API: entries, logs, history.
    """

    def test_daemons(self) -> None:
        """
        C{/api/daemons} is every entry with its CPU/RSS (none sampled yet)
        and its workers (none for a plain daemon), in config order.
        """
        self.makeWeb()
        response = self.get("/api/daemons")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertEqual(response.header("cache-control"), "no-store")
        daemons = response.json()
        self.assertEqual([d["name"] for d in daemons], ["alpha", "beta"])
        alpha = daemons[0]
        self.assertEqual(alpha["state"], "ready")
        self.assertEqual(alpha["pid"], self.process("alpha").pid)
        self.assertEqual(alpha["port"], 7101)
        self.assertEqual((alpha["cpu"], alpha["rss"], alpha["workers"]), (None, None, []))

    def test_oneDaemon(self) -> None:
        """
        C{/api/daemons/NAME} is one entry; an unknown name is a 404.
        """
        self.makeWeb()
        self.assertEqual(self.get("/api/daemons/beta").json()["name"], "beta")
        missing = self.get("/api/daemons/gamma")
        self.assertEqual(missing.code, 404)
        self.assertIn("gamma", missing.json()["error"])
        self.assertEqual(self.get("/api/daemons/gamma/logs").code, 404)
        self.assertEqual(self.get("/api/daemons/alpha/nothing").code, 404)

    def test_sampled(self) -> None:
        """
        Once sampled, an entry carries its process's CPU (percent of one
        core) and RSS (bytes).
        """
        self.makeWeb()
        proc = FakeProc(os.path.join(self.directory, "proc"))
        pid = self.process("alpha").pid
        proc.write(pid, ticks=100, rss_kb=2048)
        self.sampler.sample()
        self.reactor.advance(2)
        proc.write(pid, ticks=150, rss_kb=4096)
        self.sampler.sample()
        alpha = self.get("/api/daemons/alpha").json()
        self.assertEqual(alpha["rss"], 4096 * 1024)
        ticks = os.sysconf("SC_CLK_TCK")
        self.assertAlmostEqual(alpha["cpu"], 100 * 50 / ticks / 2, places=1)
        history = self.get("/api/daemons/alpha/history").json()
        self.assertEqual([h["rss"] for h in history], [2048 * 1024, 4096 * 1024])

    def test_logs(self) -> None:
        """
        C{/logs?count=N} is the last N output lines C{[time, stream,
        line]}; a bad count is a 400, and the count is capped.
        """
        self.makeWeb()
        for i in range(5):
            self.launcher.output(self.index("alpha"), f"line {i}")
        lines = self.get("/api/daemons/alpha/logs?count=2").json()
        self.assertEqual([line[1:] for line in lines], [["stdout", "line 3"], ["stdout", "line 4"]])
        self.assertEqual(self.get("/api/daemons/alpha/logs?count=0").json(), [])
        self.assertEqual(self.get("/api/daemons/alpha/logs?count=x").code, 400)
        self.assertEqual(self.get("/api/daemons/alpha/logs?count=-1").code, 400)
        everything = self.get(f"/api/daemons/alpha/logs?count={MAX_LOG_COUNT * 10}")
        self.assertEqual(everything.code, 200)

    def test_longLineTrimmed(self) -> None:
        """
        A very long output line is cut for the dashboard.
        """
        self.makeWeb()
        self.launcher.output(self.index("alpha"), "x" * 50000)
        (line,) = self.get("/api/daemons/alpha/logs?count=1").json()
        self.assertLess(len(line[2]), 2100)
        self.assertTrue(line[2].endswith("\u2026"))


class ActionTests(WebMixin, SynchronousTestCase):
    """
    C{POST /api/daemons/NAME/start|stop|restart}.
    """

    def test_restart(self) -> None:
        """
        A restart answers once the daemon is ready again, with its new
        entry.
        """
        self.makeWeb()
        old = self.process("alpha").pid
        with capturedLogs() as events:
            connection = self.post("/api/daemons/beta/restart")
        self.assertIn("web: restart beta asked by 127.0.0.1", [formatEvent(e) for e in events])
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(self.process("beta").signals, ["TERM"])
        self.exit("beta")
        self.assertEqual(connection.transport.value(), b"")
        self.ready("beta", 7122)
        response = connection.response()
        self.assertEqual(response.code, 200)
        entry = response.json()
        self.assertEqual((entry["name"], entry["state"], entry["port"]), ("beta", "ready", 7122))
        self.assertEqual(entry["pid"], self.process("beta").pid)
        self.assertNotEqual(entry["pid"], old)

    def test_stopThenStart(self) -> None:
        """
        A stop answers once the daemon exited; a start once it is ready.
        """
        self.makeWeb()
        stop = self.post("/api/daemons/beta/stop")
        self.exit("beta")
        self.assertEqual(stop.response().json()["state"], "stopped")
        start = self.post("/api/daemons/beta/start")
        self.ready("beta", 7133)
        self.assertEqual(start.response().json()["state"], "ready")

    def test_startFailed(self) -> None:
        """
        A start whose daemon gives up is a 502 saying why.
        """
        self.makeWeb()
        self.post("/api/daemons/beta/stop")
        self.exit("beta")
        start = self.post("/api/daemons/beta/start")
        with capturedLogs():
            self.exit("beta", exitCode=78)
        response = start.response()
        self.assertEqual(response.code, 502)
        self.assertIn("beta", response.json()["error"])

    def test_unknownDaemon(self) -> None:
        """
        Acting on an unknown daemon is a 404, and nothing happens.
        """
        self.makeWeb()
        response = self.post("/api/daemons/gamma/restart").response()
        self.assertEqual(response.code, 404)
        self.assertEqual(len(self.launcher.processes), 2)

    def test_getIsNotAllowed(self) -> None:
        """
        An action needs POST: GET is a 405 that changes nothing.
        """
        self.makeWeb()
        response = self.get("/api/daemons/alpha/restart")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("allow"), "POST")
        self.assertEqual(self.process("alpha").signals, [])

    def test_csrfHeaderRequired(self) -> None:
        """
        Without C{X-Dae: 1} (what a cross-site form sends) a POST is a 403
        and changes nothing.
        """
        self.makeWeb()
        response = self.post("/api/daemons/alpha/restart", csrf=False).response()
        self.assertEqual(response.code, 403)
        self.assertIn("X-Dae", response.json()["error"])
        self.assertEqual(self.process("alpha").signals, [])

    def test_crossOrigin(self) -> None:
        """
        A POST from another origin is refused even with the header; one
        from the dashboard's own origin is not.
        """
        self.makeWeb()
        refused = self.post("/api/daemons/alpha/stop", {"Origin": "http://evil.example"}).response()
        self.assertEqual(refused.code, 403)
        refused = self.post("/api/daemons/alpha/stop", {"Sec-Fetch-Site": "cross-site"}).response()
        self.assertEqual(refused.code, 403)
        self.assertEqual(self.process("alpha").signals, [])
        self.post("/api/daemons/beta/stop", {"Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"})
        self.assertEqual(self.process("beta").signals, ["TERM"])

    def test_clientGone(self) -> None:
        """
        A client that disconnects before the answer does not stop the
        action, and nothing is written to it.
        """
        self.makeWeb()
        connection = self.post("/api/daemons/beta/restart")
        connection.close()
        self.exit("beta")
        self.ready("beta", 7144)
        self.assertEqual(self.manager.registry.get("beta").state, "ready")
        self.assertEqual(connection.transport.value(), b"")


class HostTests(WebMixin, SynchronousTestCase):
    """
    Without authentication, only loopback host names are answered (DNS
    rebinding).
    """

    def test_loopbackNames(self) -> None:
        """
        127.0.0.1, localhost and [::1] are answered.
        """
        self.makeWeb()
        for host in ("127.0.0.1:8080", "localhost:8080", "localhost", "[::1]:8080", "app.localhost"):
            self.assertEqual(self.get("/api/daemons", {"Host": host}).code, 200, host)

    def test_otherNames(self) -> None:
        """
        Any other host name is refused.
        """
        self.makeWeb()
        for host in ("evil.example:8080", "evil.example", "192.0.2.1:8080", ""):
            response = self.get("/api/daemons", {"Host": host})
            self.assertEqual(response.code, 403, host)
        self.assertEqual(self.get("/", {"Host": "evil.example"}).code, 403)


class AuthTests(WebMixin, SynchronousTestCase):
    """
    Off loopback: the token as a bearer, or a session from the login form.
    """

    def setUp(self) -> None:
        self.makeWeb("tcp:8080:interface=0.0.0.0")
        self.token = self.manager.token
        self.assertTrue(self.token)

    def test_refusedWithoutToken(self) -> None:
        """
        Without credentials the API and C{/metrics} are 401s with a Bearer
        challenge, and the page redirects to the login form.
        """
        for path in ("/api/daemons", "/api/events", "/metrics", "/api/daemons/alpha/logs"):
            response = self.get(path, {"Host": "dae.example:8080"})
            self.assertEqual(response.code, 401, path)
            self.assertEqual(response.header("www-authenticate"), 'Bearer realm="dae"')
        page = self.get("/", {"Host": "dae.example:8080"})
        self.assertEqual(page.code, 303)
        self.assertEqual(page.header("location"), "login")
        response = self.post("/api/daemons/alpha/restart").response()
        self.assertEqual(response.code, 401)
        self.assertEqual(self.process("alpha").signals, [])

    def test_bearer(self) -> None:
        """
        C{Authorization: Bearer <token>} opens everything; a wrong token
        does not.
        """
        good = {"Authorization": f"Bearer {self.token}", "Host": "dae.example:8080"}
        self.assertEqual(self.get("/api/daemons", good).code, 200)
        self.assertEqual(self.get("/metrics", good).code, 200)
        bad = {"Authorization": f"Bearer {self.token}x"}
        self.assertEqual(self.get("/api/daemons", bad).code, 401)
        self.assertEqual(self.get("/api/daemons", {"Authorization": f"Basic {self.token}"}).code, 401)
        self.post("/api/daemons/beta/stop", good)
        self.assertEqual(self.process("beta").signals, ["TERM"])

    def test_loginOpen(self) -> None:
        """
        The login form and the static files need no credentials, and the
        form holds no token.
        """
        form = self.get("/login")
        self.assertEqual(form.code, 200)
        self.assertIn(b'name="token"', form.body)
        self.assertNotIn(self.token.encode(), form.body)
        self.assertEqual(self.get("/static/dashboard.css").code, 200)

    def login(self, token: str) -> Response:
        body = f"token={token}".encode()
        return self.request(
            "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"}, body
        )

    def test_loginWrongToken(self) -> None:
        """
        A wrong token is a 403 with the form again, and no cookie.
        """
        with capturedLogs() as events:
            response = self.login("nope")
        self.assertEqual(response.code, 403)
        self.assertIn(b"Wrong token", response.body)
        self.assertEqual(response.cookies, [])
        self.assertIn("wrong token", " ".join(formatEvent(e) for e in events))

    def test_loginSession(self) -> None:
        """
        The right token sets an HttpOnly, SameSite=Strict session cookie
        (not the token) that opens the API, until logout.
        """
        with capturedLogs() as events:
            response = self.login(self.token)
        self.assertEqual(response.code, 303)
        self.assertEqual(response.header("location"), "./")
        (cookie,) = response.cookies
        self.assertTrue(cookie.startswith(SESSION_COOKIE.decode() + "="))
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertNotIn(self.token, cookie)
        session = cookie.split(";")[0]
        self.assertEqual(self.get("/api/daemons", {"Cookie": session}).code, 200)
        self.assertEqual(self.get("/", {"Cookie": session}).code, 200)
        self.assertEqual(self.get("/api/daemons", {"Cookie": session + "x"}).code, 401)
        # The cookie opens the API, but an action still needs X-Dae.
        self.assertEqual(self.post("/api/daemons/alpha/stop", {"Cookie": session}, csrf=False).response().code, 403)
        logout = self.post("/logout", {"Cookie": session}).response()
        self.assertEqual(logout.code, 200)
        self.assertEqual(self.get("/api/daemons", {"Cookie": session}).code, 401)
        logged = "\n".join(formatEvent(e) for e in events)
        self.assertNotIn(self.token, logged)

    def test_sessionExpires(self) -> None:
        """
        A session lasts twelve hours.
        """
        session = self.login(self.token).cookies[0].split(";")[0]
        self.reactor.advance(12 * 3600 - 1)
        self.assertEqual(self.get("/api/daemons", {"Cookie": session}).code, 200)
        self.reactor.advance(2)
        self.assertEqual(self.get("/api/daemons", {"Cookie": session}).code, 401)

    def test_sessionsBounded(self) -> None:
        """
        At most 64 sessions are kept: the oldest goes.
        """
        first = self.login(self.token).cookies[0].split(";")[0]
        for _ in range(64):
            self.login(self.token)
        self.assertEqual(self.get("/api/daemons", {"Cookie": first}).code, 401)

    def test_anyHostWithToken(self) -> None:
        """
        With authentication the Host header is not checked (the token is
        what protects).
        """
        response = self.get("/api/daemons", {"Host": "dae.example", "Authorization": f"Bearer {self.token}"})
        self.assertEqual(response.code, 200)


class EventTests(WebMixin, SynchronousTestCase):
    """
    C{/api/events}: Server-Sent Events.
    """

    def stream(self) -> Connection:
        connection = self.connect()
        connection.send("GET", "/api/events")
        return connection

    def test_snapshotFirst(self) -> None:
        """
        A stream starts with a retry delay and a C{snapshot} of the manager,
        every entry and every history.
        """
        self.makeWeb()
        response = self.stream().response()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(response.header("cache-control"), "no-store")
        self.assertFalse(response.complete)
        events = response.events()
        self.assertEqual(events[0], ("retry", 2000))
        kind, snapshot = events[1]
        self.assertEqual(kind, "snapshot")
        self.assertEqual([d["name"] for d in snapshot["daemons"]], ["alpha", "beta"])
        self.assertEqual(snapshot["manager"]["pid"], os.getpid())
        self.assertIs(snapshot["manager"]["auth"], False)
        self.assertNotIn(self.manager.token, json.dumps(snapshot))

    def test_entryChanges(self) -> None:
        """
        Every registry change is pushed at once as an C{entry} event.
        """
        self.makeWeb()
        connection = self.stream()
        self.manager.act("restart", "beta")
        self.exit("beta")
        self.ready("beta", 7155)
        states = [data["state"] for kind, data in connection.response().events() if kind == "entry"]
        self.assertEqual(states[0], "stopping")
        self.assertEqual(states[-1], "ready")
        self.assertIn("starting", states)

    def test_samples(self) -> None:
        """
        Each sampling round is pushed as a C{samples} event.
        """
        self.makeWeb()
        FakeProc(os.path.join(self.directory, "proc")).write(self.process("alpha").pid, ticks=10, rss_kb=100)
        connection = self.stream()
        self.sampler.sample()
        samples = [data for kind, data in connection.response().events() if kind == "samples"]
        self.assertEqual(samples[-1]["alpha"]["rss"], 100 * 1024)
        self.assertNotIn("beta", samples[-1])

    def test_logLines(self) -> None:
        """
        New output lines are pushed every second as C{log} events, each
        line once.
        """
        self.makeWeb()
        self.launcher.output(self.index("alpha"), "before")
        self.reactor.advance(1)
        connection = self.stream()
        self.launcher.output(self.index("alpha"), "one")
        self.launcher.output(self.index("alpha"), "two")
        self.reactor.advance(1)
        self.launcher.output(self.index("alpha"), "three")
        self.reactor.advance(1)
        self.reactor.advance(1)
        logs = [data for kind, data in connection.response().events() if kind == "log"]
        lines = [(d["name"], line[2]) for d in logs for line in d["lines"]]
        self.assertEqual(lines, [("alpha", "one"), ("alpha", "two"), ("alpha", "three")])

    def test_heartbeat(self) -> None:
        """
        A comment every 15 seconds keeps the stream alive.
        """
        self.makeWeb()
        connection = self.stream()
        self.reactor.advance(14)
        self.assertNotIn((":", "heartbeat"), connection.response().events())
        self.reactor.advance(1)
        self.assertIn((":", "heartbeat"), connection.response().events())

    def test_removed(self) -> None:
        """
        A daemon removed by a reload is pushed as C{removed}.
        """
        self.makeWeb()
        connection = self.stream()
        with open(self.manager.config.path, "w") as f:
            f.write(CONFIG[: CONFIG.index("[daemons.beta]")])
        d = self.manager.reload()
        self.exit("beta")
        self.assertEqual(self.successResultOf(d)["removed"], ["beta"])
        self.assertIn(("removed", {"name": "beta"}), connection.response().events())

    def test_closedStreamForgotten(self) -> None:
        """
        A stream whose client went away is forgotten.
        """
        self.makeWeb()
        connection = self.stream()
        self.assertEqual(len(self.web.hub.clients), 1)
        connection.close()
        self.assertEqual(self.web.hub.clients, [])
        self.manager.act("restart", "beta")  # nothing to write to; no error

    def test_tooManyStreams(self) -> None:
        """
        Past the bound on streams, a new one is a 503.
        """
        self.makeWeb(maxClients=2)
        self.stream()
        self.stream()
        self.assertEqual(self.stream().response().code, 503)

    def test_slowClientQueued(self) -> None:
        """
        While the connection cannot take more, events queue, and are sent
        in order when it can.
        """
        self.makeWeb()
        connection = self.stream()
        connection.transport.producer.pauseProducing()
        before = connection.transport.value()
        self.manager.act("restart", "beta")
        self.assertEqual(connection.transport.value(), before)
        connection.transport.producer.resumeProducing()
        states = [d["state"] for kind, d in connection.response().events() if kind == "entry"]
        self.assertEqual(states, ["stopping"])

    def test_slowClientDropped(self) -> None:
        """
        A client that does not read is dropped once its queue passes the
        bound, and its memory is released.
        """
        self.makeWeb(maxBuffered=4096)
        connection = self.stream()
        connection.transport.producer.pauseProducing()
        with capturedLogs() as events:
            for i in range(100):
                self.launcher.output(self.index("alpha"), "x" * 100)
                self.reactor.advance(1)
                if connection.transport.disconnecting:
                    break
        self.assertTrue(connection.transport.disconnected)
        self.assertEqual(self.web.hub.clients, [])
        self.assertIn("dropping an event stream", "\n".join(formatEvent(e) for e in events))


class MetricsEndpointTests(WebMixin, SynchronousTestCase):
    """
    C{/metrics} on the web endpoint.
    """

    def test_metrics(self) -> None:
        """
        C{/metrics} is the Prometheus text format of L{DaeMetrics}.
        """
        from prometheus_client.parser import text_string_to_metric_families

        self.makeWeb()
        response = self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header("content-type").startswith("text/plain; version=0.0.4"))
        families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
        up = {s.labels["daemon"]: s.value for s in families["dae_daemon_up"].samples}
        self.assertEqual(up, {"alpha": 1.0, "beta": 1.0})

    def test_openMetrics(self) -> None:
        """
        A scraper asking for OpenMetrics gets it.
        """
        self.makeWeb()
        response = self.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertTrue(response.header("content-type").startswith("application/openmetrics-text"))
        self.assertTrue(response.body.endswith(b"# EOF\n"))


class FakeProc:
    """
    A fake C{/proc}: C{stat} and C{status} files for made-up processes.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def write(self, pid: int, ticks: int = 0, rss_kb: Optional[int] = 0, start: int = 1000, comm: str = "python3") -> None:
        directory = os.path.join(self.root, str(pid))
        os.makedirs(directory, exist_ok=True)
        utime, stime = ticks - ticks // 3, ticks // 3
        fields = ["S", "1", str(pid), str(pid), "0", "-1", "4194560", "0", "0", "0", "0",
                  str(utime), str(stime), "0", "0", "20", "0", "1", "0", str(start), "1000000", "100"]
        with open(os.path.join(directory, "stat"), "w") as f:
            f.write(f"{pid} ({comm}) " + " ".join(fields) + "\n")
        with open(os.path.join(directory, "status"), "w") as f:
            f.write(f"Name:\t{comm}\nState:\tS (sleeping)\n")
            if rss_kb is not None:
                f.write(f"VmRSS:\t{rss_kb:8d} kB\n")
            f.write("Threads:\t1\n")

    def remove(self, pid: int) -> None:
        import shutil

        shutil.rmtree(os.path.join(self.root, str(pid)), ignore_errors=True)


class SocketActivationTests(TestCase):
    """
    The web service on a C{systemd:} endpoint: a listening socket passed
    the way systemd passes one (here made by the test and handed to
    Twisted's parser as an inherited descriptor), served for real.
    """

    @inlineCallbacks
    def test_adoptedSocket(self):
        """
        C{systemd:domain=INET:name=web} adopts the passed socket; it is on
        loopback, so it is served without a token.
        """
        from twisted.internet import endpoints
        from twisted.web.client import Agent, readBody

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        # The descriptor is Twisted's now: adopting it closes it (as a
        # process must close what systemd passed once it has adopted it).
        fd = listener.detach()
        self.patch(endpoints._SystemdParser, "_sddaemon", ListenFDs([fd], ("web",)))

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "tree.toml")
        with open(path, "w") as f:
            f.write(CONFIG.replace('web = "tcp:8080:interface=127.0.0.1"', 'web = "systemd:domain=INET:name=web"'))
        config = loadConfig(path, ENVIRON)
        manager = Dae(config, {}, globalReactor, launcher=FakeLauncher(), environ=dict(ENVIRON))
        manager.token = "t" * 40
        for name in ("alpha", "beta"):
            manager.registry.add(Entry(name))
        os.makedirs(config.stateDir, exist_ok=True)
        web = WebService(manager, globalReactor)
        web.startService()
        self.addCleanup(web.stopService)
        yield web.whenListening()
        self.assertEqual(web.port, port)
        self.assertFalse(web.requireAuth)
        response = yield Agent(globalReactor).request(b"GET", f"http://127.0.0.1:{port}/api/daemons".encode())
        self.assertEqual(response.code, 200)
        body = yield readBody(response)
        self.assertEqual([d["name"] for d in json.loads(body)], ["alpha", "beta"])
