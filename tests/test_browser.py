"""
The dashboard in a real browser: a real C{twistd -n dae} tree with its web
dashboard on loopback, and headless Chromium (Debian's C{chromium}) driven
over the DevTools protocol.  The test loads the page, sees the daemon, clicks
its restart button and sees its pid change, as a person would.

The DevTools protocol is spoken by L{DevTools}, a minimal WebSocket client
over Twisted (RFC 6455 client framing, text messages, no extensions): no
extra dependency and no thread.  Chromium is found on C{PATH} (or at
C{$DAE_CHROMIUM}); the tests are skipped only when it is not installed
(C{apt-get install chromium}, which C{tools/setup-venv.sh} does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import struct
import tempfile
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from .twistdtree import TwistdTree, _sleep, _TwistdProtocol, renderConfig, withTimeout

#: How Chromium runs here: headless, as root (no sandbox), and never
#: reaching for the network on its own (this machine has none).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
]

#: The GUID every WebSocket server appends to the key (RFC 6455, 1.3).
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: The longest message accepted from Chromium (a screenshot is a few MB).
_MAX_MESSAGE = 64 * 1024 * 1024


def findChromium() -> Optional[str]:
    """
    The Chromium executable: C{$DAE_CHROMIUM}, else C{chromium} on C{PATH}.
    """
    explicit = os.environ.get("DAE_CHROMIUM")
    if explicit:
        return explicit
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevToolsError(Exception):
    """
    The browser answered a command with an error.
    """


class DevTools(Protocol):
    """
    A DevTools protocol connection over a WebSocket: L{call} sends a
    command and returns a Deferred of its result; events go to the
    listeners added with L{on}.  Commands for a page attached with
    C{flatten} carry its C{sessionId}.
    """

    def __init__(self, reactor: Any, host: str, port: int, path: str) -> None:
        self.reactor = reactor
        self.host, self.port, self.path = host, port, path
        self._key = base64.b64encode(os.urandom(16))
        self._buffer = b""
        self._open = False
        self._opened: Deferred = Deferred()
        self._fragments: list[bytes] = []
        self._nextId = 0
        self._pending: dict[int, tuple[str, Deferred]] = {}
        self._listeners: list[Callable[[dict], None]] = []
        self.events: list[dict] = []

    # Connection

    def connectionMade(self) -> None:
        request = (
            f"GET {self.path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode("ascii"))

    def whenOpen(self) -> Deferred:
        return self._opened

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if not self._open:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest()).decode()
            headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
            if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != accept:
                self._opened.errback(DevToolsError(f"WebSocket upgrade refused: {lines[0]}"))
                self.transport.loseConnection()
                return
            self._open = True
            self._buffer = rest
            self._opened.callback(self)
        self._frames()

    def _frames(self) -> None:
        while True:
            data = self._buffer
            if len(data) < 2:
                return
            fin, opcode = data[0] & 0x80, data[0] & 0x0F
            masked, length = data[1] & 0x80, data[1] & 0x7F
            offset = 2
            if length == 126:
                if len(data) < 4:
                    return
                (length,) = struct.unpack("!H", data[2:4])
                offset = 4
            elif length == 127:
                if len(data) < 10:
                    return
                (length,) = struct.unpack("!Q", data[2:10])
                offset = 10
            if length > _MAX_MESSAGE:
                self.transport.abortConnection()
                return
            mask = b""
            if masked:
                mask = data[offset : offset + 4]
                offset += 4
            if len(data) < offset + length:
                return
            payload = data[offset : offset + length]
            if masked:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            self._buffer = data[offset + length :]
            if opcode in (0x0, 0x1, 0x2):
                self._fragments.append(payload)
                if fin:
                    message, self._fragments = b"".join(self._fragments), []
                    self._message(json.loads(message))
            elif opcode == 0x8:
                self._send(0x8, payload[:2])
                self.transport.loseConnection()
            elif opcode == 0x9:
                self._send(0xA, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        self.transport.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def connectionLost(self, reason: Failure = None) -> None:
        self._open = False
        if not self._opened.called:
            self._opened.errback(reason)
        pending, self._pending = self._pending, {}
        for method, d in pending.values():
            d.errback(DevToolsError(f"connection to the browser lost during {method}"))

    # Messages

    def _message(self, message: dict) -> None:
        if "id" in message:
            entry = self._pending.pop(message["id"], None)
            if entry is None:
                return
            method, d = entry
            if "error" in message:
                d.errback(DevToolsError(f"{method}: {message['error']}"))
            else:
                d.callback(message.get("result", {}))
            return
        self.events.append(message)
        for listener in list(self._listeners):
            listener(message)

    def on(self, listener: Callable[[dict], None]) -> None:
        self._listeners.append(listener)

    def call(self, method: str, params: Optional[dict] = None, sessionId: Optional[str] = None, timeout: float = 30) -> Deferred:
        """
        Send a command; a Deferred of its result (failing with
        L{DevToolsError} on an error answer, and after C{timeout} s).
        """
        self._nextId += 1
        message: dict = {"id": self._nextId, "method": method, "params": params or {}}
        if sessionId is not None:
            message["sessionId"] = sessionId
        d: Deferred = Deferred()
        self._pending[self._nextId] = (method, d)
        self._send(0x1, json.dumps(message).encode("utf-8"))
        return withTimeout(d, timeout, self.reactor, f"the browser to answer {method}")

    def close(self) -> None:
        if self._open:
            self._send(0x8, struct.pack("!H", 1000))
        self.transport.loseConnection()


class Page:
    """
    One browser tab, attached through L{DevTools} with its own session.
    """

    def __init__(self, devtools: DevTools, sessionId: str, reactor: Any) -> None:
        self.devtools = devtools
        self.sessionId = sessionId
        self.reactor = reactor
        #: Console messages, exceptions and log entries of level error.
        self.problems: list[str] = []
        devtools.on(self._event)

    def _event(self, message: dict) -> None:
        if message.get("sessionId") != self.sessionId:
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.problems.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.problems.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.problems.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")

    def call(self, method: str, params: Optional[dict] = None, timeout: float = 30) -> Deferred:
        return self.devtools.call(method, params, self.sessionId, timeout)

    @inlineCallbacks
    def evaluate(self, expression: str):
        """
        The value of a JavaScript expression in the page.
        """
        result = yield self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    @inlineCallbacks
    def waitFor(self, expression: str, timeout: float = 20, what: str = ""):
        """
        Evaluate C{expression} every 100 ms until it is truthy; its value.
        """
        deadline = self.reactor.seconds() + timeout
        while True:
            value = yield self.evaluate(expression)
            if value:
                return value
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what or expression}")
            yield _sleep(self.reactor, 0.1)

    @inlineCallbacks
    def click(self, selector: str):
        """
        Click the middle of the element C{selector} with the mouse, as a
        person would (so a disabled or covered button does not work).
        """
        box = yield self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
        )
        if not box:
            raise AssertionError(f"nothing matches {selector}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            yield self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    @inlineCallbacks
    def screenshot(self, path: str):
        result = yield self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(result["data"]))


class Chromium:
    """
    A headless Chromium of one test: its own profile directory, its own
    session (so its helpers die with it), stopped in the test's cleanup.
    """

    def __init__(self, testCase: TestCase, reactor: Any, executable: str) -> None:
        self.testCase = testCase
        self.reactor = reactor
        self.executable = executable
        self.profile = tempfile.mkdtemp(prefix="dae-chromium-")
        self.protocol = _TwistdProtocol()
        self.devtools: Optional[DevTools] = None
        self.pid: Optional[int] = None
        testCase.addCleanup(self._cleanup)

    @inlineCallbacks
    def start(self, timeout: float = 30):
        argv = ["setsid", self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        setsid = shutil.which("setsid")
        if setsid is None:
            argv = argv[1:]
        process = self.reactor.spawnProcess(
            self.protocol, setsid or self.executable, argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
        )
        self.pid = process.pid
        portFile = os.path.join(self.profile, "DevToolsActivePort")
        deadline = self.reactor.seconds() + timeout
        while True:
            if self.protocol.ended is not None:
                raise AssertionError(
                    f"chromium exited {self.protocol.ended}: {self.protocol.output[-2000:].decode('utf-8', 'replace')}"
                )
            try:
                with open(portFile) as f:
                    lines = f.read().split("\n")
                if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
                    break
            except FileNotFoundError:
                pass
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"chromium wrote no DevToolsActivePort in {timeout:g} s")
            yield _sleep(self.reactor, 0.05)
        port, path = int(lines[0]), lines[1].strip()
        devtools = DevTools(self.reactor, "127.0.0.1", port, path)
        yield connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=10), devtools)
        yield withTimeout(devtools.whenOpen(), 10, self.reactor, "the DevTools WebSocket to open")
        self.devtools = devtools

    @inlineCallbacks
    def newPage(self):
        """
        A new tab, attached, with the domains the test uses enabled.
        """
        target = yield self.devtools.call("Target.createTarget", {"url": "about:blank"})
        attached = yield self.devtools.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self.devtools, attached["sessionId"], self.reactor)
        for domain in ("Page", "Runtime", "Log"):
            yield page.call(f"{domain}.enable")
        yield page.call("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": 700, "deviceScaleFactor": 1, "mobile": False})
        return page

    @inlineCallbacks
    def _cleanup(self):
        if self.devtools is not None:
            self.devtools.close()
        if self.pid is not None and self.protocol.ended is None:
            exited = self.protocol.whenExited()
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    yield withTimeout(exited, wait, self.reactor, "chromium to exit")
                    break
                except AssertionError:
                    exited = self.protocol.whenExited()
        # Its helpers (zygote, renderers) are in its session: gone with it.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass
        shutil.rmtree(self.profile, ignore_errors=True)


class WebTree(TwistdTree):
    """
    A L{TwistdTree} whose manager also serves its dashboard, on a port of
    loopback it picks itself (the test reads it from C{web.json}).
    """

    web = "tcp:0:interface=127.0.0.1"

    def writeConfig(self, daemons: dict) -> None:
        text = renderConfig({"listen": self.listen, "state_dir": self.stateDir, "web": self.web}, daemons)
        tmp = self.configPath + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.configPath)

    @inlineCallbacks
    def webURL(self, timeout: float = 10):
        """
        The dashboard's URL, from C{<state_dir>/web.json} once the manager
        wrote it.
        """
        path = os.path.join(self.stateDir, "web.json")
        deadline = self.reactor.seconds() + timeout
        while True:
            try:
                with open(path) as f:
                    return json.load(f)["url"]
            except (FileNotFoundError, ValueError, KeyError):
                pass
            if self.reactor.seconds() > deadline:
                raise AssertionError(
                    f"no {path} {timeout:g} s after the tree started: does Dae.startService "
                    f"start the WebService when [dae] web is set?\n{self.describe()}"
                )
            yield _sleep(self.reactor, 0.05)


class DashboardInBrowserTests(TestCase):
    """
    The dashboard of a real tree, in headless Chromium.
    """

    timeout = 120

    def setUp(self) -> None:
        self.chromium = findChromium()
        if self.chromium is None:
            raise SkipTest("chromium is not installed (apt-get install chromium)")

    @inlineCallbacks
    def test_restartFromTheDashboard(self):
        """
        The page shows the daemon with its pid, live; clicking its restart
        button restarts it, and the page shows the new pid without a
        reload; the page logs no error (a CSP violation would be one).
        """
        tree = WebTree(self, {"store": {"daemon": "dae_service.examples.store:Store"}})
        entries = yield tree.start()
        pid = entries["store"]["pid"]
        url = yield tree.webURL()
        self.assertEqual(urlsplit(url).hostname, "127.0.0.1")

        browser = Chromium(self, globalReactor, self.chromium)
        yield browser.start()
        page = yield browser.newPage()
        yield page.call("Page.navigate", {"url": url})

        row = 'tr[data-daemon="store"]'
        pidCell = f"document.querySelector('{row} td.pid')?.textContent"
        yield page.waitFor(f"{pidCell} === {json.dumps(str(pid))}", what=f"the page to show pid {pid}")
        state = yield page.evaluate(f"document.querySelector('{row} td.state').textContent")
        self.assertEqual(state, "ready")
        live = yield page.waitFor("document.getElementById('connection').textContent === 'live'", what="live updates")
        self.assertTrue(live)
        navigations = yield page.evaluate("performance.getEntriesByType('navigation').length")

        yield page.click(f'{row} button[data-action="restart"]')
        restarted = yield tree.waitForEntry(
            "store",
            lambda e: e["state"] == "ready" and e["pid"] not in (None, pid),
            what="store to be ready again with a new pid",
        )
        newPid = restarted["pid"]
        yield page.waitFor(f"{pidCell} === {json.dumps(str(newPid))}", what=f"the page to show pid {newPid}")
        restarts = yield page.evaluate(f"document.querySelector('{row} td.restarts').textContent")
        self.assertEqual(restarts, str(restarted["restarts"]))
        # Updated in place: the same document, never reloaded.
        again = yield page.evaluate("performance.getEntriesByType('navigation').length")
        self.assertEqual(again, navigations)
        yield page.screenshot(os.path.join(tree.directory, "dashboard.png"))
        self.assertEqual(page.problems, [])
