"""
The manager's web dashboard and Prometheus endpoint: a C{twisted.web} site
served on C{[dae] web = "<endpoint>"} by L{WebService}.

=====================================  ======  =============================================
path                                   method  what
=====================================  ======  =============================================
C{/}                                   GET     the dashboard (C{web_static/index.html})
C{/static/<file>}                      GET     its script and style sheet
C{/api/daemons}                        GET     every entry, with its latest CPU/RSS sample
C{/api/daemons/<name>}                 GET     one entry (404 if unknown)
C{/api/daemons/<name>/logs?count=N}    GET     its last N output lines C{[time, stream, line]}
C{/api/daemons/<name>/history}         GET     its CPU/RSS samples, oldest first
C{/api/daemons/<name>/start|stop|restart}  POST  do it; answers once done, with the entry
C{/api/events}                         GET     Server-Sent Events: C{snapshot}, C{entry},
                                               C{removed}, C{samples}, C{log}
C{/metrics}                            GET     Prometheus exposition (L{DaeMetrics})
C{/login}                              GET/POST  the token form (only when auth is needed)
C{/logout}                             POST    forget this browser's session
=====================================  ======  =============================================

An action answers once it is done: 200 with the daemon's entry; 404 for
an unknown daemon; 403 without the CSRF header; 409 while the manager is
stopping; 502 when the daemon did not become ready (it gave up, or was
stopped first), with C{{"error": "..."}}.  Event C{data} is JSON:
C{snapshot} C{{manager, daemons, histories}}, C{entry} (an entry as in
C{/api/daemons}), C{removed} C{{name}}, C{samples} C{{name: {pid, t, cpu,
cpuSeconds, rss, workers}}}, C{log} C{{name, lines}}; a comment line every
15 seconds keeps the stream alive.

Where it listens: any server endpoint string.  A C{tcp:}, C{tcp6:} or
C{ssl:} endpoint that names no interface is bound to loopback (127.0.0.1,
or ::1 for C{tcp6:}), never to every interface: exposing the dashboard takes
an explicit C{interface=}.

Authentication, decided from the address actually bound (so it also holds
for C{systemd:} sockets): on a loopback address, or on a UNIX socket that
only its owner may open (mode without group/other bits, e.g.
C{unix:address=...:mode=600}; Twisted's default mode is 0666), there is none,
like the control commands on the manager's UNIX socket; anywhere else every
request but the login form and the static files needs the manager's token,
as C{Authorization: Bearer <token>} (for scripts and Prometheus) or through
the login form, which sets an C{HttpOnly}, C{SameSite=Strict} session cookie
(a random session id: the token is never in a page, a cookie, a URL or a
log line).

Without authentication, a request whose C{Host} header is not a loopback
name or address is refused (403), so that a web page cannot reach the
dashboard through DNS rebinding.  Every C{POST} under C{/api} needs the
header C{X-Dae: 1} (which a cross-site form cannot send and a cross-site
script cannot send without a CORS preflight that is never granted), and is
refused if its C{Origin} is another site.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import os
import secrets
import stat
from collections import deque
from importlib import resources
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import _parse as _parseEndpoint
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from .listening import ListenOutcome
from .metrics import DaeMetrics, ProcessSampler, entryWorkers
from .registry import Entry, writeAtomically
from .supervisor import StartFailed

__all__ = [
    "WebService",
    "loopbackByDefault",
    "isLocalAddress",
    "ACTIONS",
    "SESSION_COOKIE",
    "CSRF_HEADER",
]

#: What the dashboard can ask the manager to do to one daemon.
ACTIONS = ("start", "stop", "restart")

#: The session cookie set by the login form.
SESSION_COOKIE = b"dae_session"

#: The header every POST under /api must carry (with the value C{1}).
CSRF_HEADER = b"x-dae"

#: Seconds between two heartbeat comments on an event stream (keeps proxies
#: and the browser from deciding the stream is dead).
HEARTBEAT_INTERVAL = 15.0

#: Seconds between two looks for new output lines to push.
LOG_INTERVAL = 1.0

#: Event streams open at once; more are answered 503.
MAX_EVENT_CLIENTS = 32

#: Bytes queued for one event stream while its connection cannot take more
#: (beyond the transport's own buffer); past this the client is dropped, so
#: a stalled browser costs a bounded amount of memory.
MAX_CLIENT_BUFFER = 1024 * 1024

#: Login sessions kept; the oldest goes first.
MAX_SESSIONS = 64

#: Seconds a login session lasts.
SESSION_LIFETIME = 12 * 3600.0

#: Output lines sent per daemon per push, and the longest line sent whole
#: (the dashboard shows a tail, not the log file).
MAX_LOG_LINES_PER_PUSH = 200
MAX_LOG_LINE_CHARS = 2000

#: The most lines C{/logs?count=N} returns.
MAX_LOG_COUNT = 1000

#: Seconds an idle HTTP connection stays open.
IDLE_TIMEOUT = 60

#: Bytes of a login form body read.
MAX_FORM_BYTES = 4096

_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def loopbackByDefault(description: str) -> str:
    """
    C{description} with C{interface=127.0.0.1} (C{::1} for C{tcp6:}) added
    when it is a C{tcp:}, C{tcp6:} or C{ssl:} endpoint naming no interface;
    any other endpoint string unchanged.
    """
    args, kwargs = _parseEndpoint(description)
    kind = args[0] if args else ""
    if kind not in _INTERFACE_POSITION:
        return description
    # The interface may also be given positionally (tcp:PORT:INTERFACE).
    if kwargs.get("interface") or len(args) > _INTERFACE_POSITION[kind]:
        return description
    loopback = "\\:\\:1" if kind == "tcp6" else "127.0.0.1"
    return f"{description}:interface={loopback}"


#: Where each kind of endpoint with an C{interface} takes it positionally
#: (counting the kind itself as 0): Twisted's C{_parseTCP(port, interface,
#: backlog)} and C{_parseSSL(port, privateKey, certKey, sslmethod,
#: interface, ...)}.
_INTERFACE_POSITION = {"tcp": 2, "tcp6": 2, "ssl": 5}


def isLocalAddress(address: Any) -> bool:
    """
    Is a listening address one only this machine's users can reach, and
    (for a UNIX socket) only its owner: a loopback IP, or a UNIX socket
    file whose mode has no group or other bits?
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        try:
            return ipaddress.ip_address(address.host.split("%", 1)[0]).is_loopback
        except ValueError:
            return False
    if isinstance(address, UNIXAddress):
        path = address.name
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not path or path.startswith("\0"):
            return False
        try:
            return stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
        except OSError:
            return False
    return False


def _isLoopbackHost(host: str) -> bool:
    """
    Is C{host} (a C{Host} header's name, without the port) a loopback
    address or C{localhost}?
    """
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostName(hostHeader: str) -> str:
    """
    The name part of a C{Host} header (C{"[::1]:8080"} -> C{"[::1]"}).
    """
    if hostHeader.startswith("["):
        end = hostHeader.find("]")
        return hostHeader[: end + 1] if end > 0 else hostHeader
    return hostHeader.rsplit(":", 1)[0] if hostHeader.count(":") == 1 else hostHeader


def _securityHeaders(request: Any) -> None:
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"cross-origin-resource-policy", b"same-origin")


def _json(request: Any, code: int, value: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, separators=(",", ":")).encode("ascii") + b"\n"


def _error(request: Any, code: int, message: str) -> bytes:
    return _json(request, code, {"error": message})


def _sseMessage(event: str, data: Any) -> bytes:
    """
    One Server-Sent Events message; the JSON is ASCII on one line.
    """
    payload = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode("ascii")


def _trimLine(line: str) -> str:
    if len(line) > MAX_LOG_LINE_CHARS:
        return line[: MAX_LOG_LINE_CHARS - 1] + "\u2026"
    return line


def _loadStatic(name: str) -> bytes:
    return resources.files("dae_service").joinpath("web_static", name).read_bytes()


class _Sessions:
    """
    Login sessions: random ids with an expiry, at most L{MAX_SESSIONS}.
    """

    def __init__(self, clock: Any, lifetime: float = SESSION_LIFETIME, limit: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self.limit = limit
        self._sessions: dict[str, float] = {}

    def new(self) -> str:
        now = self._clock.seconds()
        self._expire(now)
        while len(self._sessions) >= self.limit:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = now + self.lifetime
        return sid

    def valid(self, sid: Optional[str]) -> bool:
        if not sid:
            return False
        expires = self._sessions.get(sid)
        if expires is None:
            return False
        if expires <= self._clock.seconds():
            del self._sessions[sid]
            return False
        return True

    def end(self, sid: Optional[str]) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def clear(self) -> None:
        self._sessions.clear()

    def _expire(self, now: float) -> None:
        for sid in [s for s, t in self._sessions.items() if t <= now]:
            del self._sessions[sid]


@implementer(IPushProducer)
class _EventClient:
    """
    One open event stream.  Registered as the request's push producer: when
    the connection's buffer fills, messages queue here, up to
    C{maxBuffered} bytes; past that the client is dropped.
    """

    log = Logger()

    def __init__(self, hub: "EventHub", request: Any, maxBuffered: int) -> None:
        self.hub = hub
        self.request = request
        self.maxBuffered = maxBuffered
        self.paused = False
        self.closed = False
        self._queue: deque = deque()
        self._queued = 0

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(self._finished)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.paused or self._queue:
            self._queued += len(data)
            if self._queued > self.maxBuffered:
                self.drop()
                return
            self._queue.append(data)
        else:
            self.request.write(data)

    # IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self._queue and not self.paused and not self.closed:
            data = self._queue.popleft()
            self._queued -= len(data)
            self.request.write(data)

    def stopProducing(self) -> None:
        self._forget()

    # Ending

    def drop(self) -> None:
        """
        The client does not read: close its connection now.
        """
        self.log.warn(
            "web: dropping an event stream that does not read ({bytes} bytes queued)",
            bytes=self._queued,
        )
        self._forget()
        channel = getattr(self.request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            self.request.loseConnection()

    def close(self) -> None:
        """
        End the stream (the manager's web service stops).
        """
        if self.closed:
            return
        self._forget()
        try:
            self.request.finish()
        except RuntimeError:
            # Its connection was lost and Twisted could not tell us (it
            # does not while the connection is paused): nothing to finish.
            pass

    def _forget(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self.hub._remove(self)
        if getattr(self.request, "channel", None) is not None:
            self.request.unregisterProducer()

    def _finished(self, result: Any) -> None:
        self._forget()


class EventHub:
    """
    Feeds every open event stream: registry changes at once, samples after
    every sampling round, new output lines every L{LOG_INTERVAL} seconds,
    and a heartbeat comment every L{HEARTBEAT_INTERVAL} seconds.
    """

    log = Logger()

    def __init__(
        self,
        web: "WebService",
        reactor: Any,
        heartbeat: float = HEARTBEAT_INTERVAL,
        logInterval: float = LOG_INTERVAL,
        maxClients: int = MAX_EVENT_CLIENTS,
        maxBuffered: int = MAX_CLIENT_BUFFER,
    ) -> None:
        self.web = web
        self.reactor = reactor
        self.heartbeat = heartbeat
        self.logInterval = logInterval
        self.maxClients = maxClients
        self.maxBuffered = maxBuffered
        self.clients: list[_EventClient] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._loops: list[LoopingCall] = []
        # name -> (the ChildLog object, the last line pushed): a reload
        # replaces a daemon's ChildLog, and lines are tuples compared by
        # identity, so a line equal to an older one is still new.
        self._logMarks: dict[str, tuple[Any, Any]] = {}

    @property
    def full(self) -> bool:
        return len(self.clients) >= self.maxClients

    def start(self) -> None:
        manager = self.web.manager
        self._unsubscribe.append(manager.registry.subscribe(self._entryChanged))
        if self.web.sampler is not None:
            self._unsubscribe.append(self.web.sampler.subscribe(self._sampled))
        self._markLogs()
        for interval, call in ((self.heartbeat, self._beat), (self.logInterval, self._pushLogs)):
            loop = LoopingCall(call)
            loop.clock = self.reactor
            loop.start(interval, now=False).addErrback(
                lambda f: self.log.failure("web: event timer failed", f)
            )
            self._loops.append(loop)

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for client in list(self.clients):
            client.close()

    def add(self, request: Any) -> _EventClient:
        """
        Start an event stream on C{request}: a C{snapshot} event first
        (every entry, every history), then changes as they come.
        """
        client = _EventClient(self, request, self.maxBuffered)
        self.clients.append(client)
        client.start()
        client.send(b"retry: 2000\n\n")
        client.send(_sseMessage("snapshot", self.web.snapshot()))
        return client

    def _remove(self, client: _EventClient) -> None:
        if client in self.clients:
            self.clients.remove(client)

    def broadcast(self, event: str, data: Any) -> None:
        if not self.clients:
            return
        message = _sseMessage(event, data)
        for client in list(self.clients):
            client.send(message)

    def _entryChanged(self, entry: Entry) -> None:
        if entry.state == "removed":
            self._logMarks.pop(entry.name, None)
            self.broadcast("removed", {"name": entry.name})
        else:
            self.broadcast("entry", self.web.entryView(entry))

    def _sampled(self, samples: dict) -> None:
        self.broadcast("samples", samples)

    def _beat(self) -> None:
        for client in list(self.clients):
            client.send(b": heartbeat\n\n")

    def _markLogs(self) -> None:
        for name, childLog in self.web.manager.childLogs.items():
            recent = childLog.recent
            self._logMarks[name] = (childLog, recent[-1] if recent else None)

    def _pushLogs(self) -> None:
        """
        Send the output lines added since the last push, for each daemon.
        """
        for name, childLog in list(self.web.manager.childLogs.items()):
            recent = list(childLog.recent)
            mark = self._logMarks.get(name)
            last = recent[-1] if recent else None
            self._logMarks[name] = (childLog, last)
            if not recent or (mark is not None and mark[0] is childLog and mark[1] is last):
                continue
            new = recent
            if mark is not None and mark[0] is childLog and mark[1] is not None:
                for i in range(len(recent) - 1, -1, -1):
                    if recent[i] is mark[1]:
                        new = recent[i + 1 :]
                        break
            if new and self.clients:
                lines = [[t, stream, _trimLine(line)] for t, stream, line in new[-MAX_LOG_LINES_PER_PUSH:]]
                self.broadcast("log", {"name": name, "lines": lines})


class _Static(Resource):
    """
    One file of C{web_static/}, held in memory.
    """

    isLeaf = True

    def __init__(self, body: bytes, contentType: bytes, csp: bool = False) -> None:
        super().__init__()
        self.body = body
        self.contentType = contentType
        self.csp = csp

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.contentType)
        request.setHeader(b"cache-control", b"no-cache")
        if self.csp:
            request.setHeader(b"content-security-policy", _CSP)
        return self.body

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)


class _Refusal(Resource):
    """
    Answers every request with one error.
    """

    isLeaf = True

    def __init__(self, code: int, message: str, bearer: bool = False) -> None:
        super().__init__()
        self.code = code
        self.message = message
        self.bearer = bearer

    def render(self, request: Any) -> bytes:
        if self.bearer:
            request.setHeader(b"www-authenticate", b'Bearer realm="dae"')
        return _error(request, self.code, self.message)


class _Redirect(Resource):
    isLeaf = True

    def __init__(self, location: bytes) -> None:
        super().__init__()
        self.location = location

    def render(self, request: Any) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", self.location)
        request.setHeader(b"cache-control", b"no-store")
        return b""


class _Login(Resource):
    """
    C{GET}: the token form; C{POST}: check the token, start a session.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, web: "WebService") -> None:
        super().__init__()
        self.web = web

    def _form(self, request: Any, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", _CSP)
        page = self.web.loginPage.replace(b"{message}", html.escape(message).encode("utf-8"))
        return page

    def render_GET(self, request: Any) -> bytes:
        if not self.web.requireAuth:
            return _Redirect(b"./").render(request)
        return self._form(request, 200, "")

    def render_POST(self, request: Any) -> bytes:
        if not self.web.requireAuth:
            return _Redirect(b"./").render(request)
        body = request.content.read(MAX_FORM_BYTES) if request.content is not None else b""
        token = parse_qs(body.decode("ascii", "replace")).get("token", [""])[0]
        if not self.web.checkToken(token):
            self.log.warn("web: wrong token in the login form from {peer}", peer=_peer(request))
            return self._form(request, 403, "Wrong token.")
        sid = self.web.sessions.new()
        request.addCookie(
            SESSION_COOKIE,
            sid.encode("ascii"),
            path=b"/",
            httpOnly=True,
            secure=request.isSecure(),
            sameSite="strict",
            max_age=str(int(self.web.sessions.lifetime)).encode("ascii"),
        )
        self.log.info("web: login from {peer}", peer=_peer(request))
        return _Redirect(b"./").render(request)


class _Logout(Resource):
    isLeaf = True

    def __init__(self, web: "WebService") -> None:
        super().__init__()
        self.web = web

    def render_POST(self, request: Any) -> bytes:
        problem = self.web.csrfProblem(request)
        if problem:
            return _error(request, 403, problem)
        self.web.sessions.end(_cookie(request))
        request.addCookie(SESSION_COOKIE, b"", path=b"/", httpOnly=True, max_age=b"0", sameSite="strict")
        return _json(request, 200, {"ok": True})


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, web: "WebService") -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Any) -> bytes:
        if self.web.metrics is None:
            return _error(request, 404, "no metrics")
        accept = request.getHeader(b"accept")
        body, contentType = self.web.metrics.render(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", contentType.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


class _Events(Resource):
    isLeaf = True

    def __init__(self, web: "WebService") -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Any) -> Any:
        hub = self.web.hub
        if hub is None:
            return _error(request, 503, "not running")
        if hub.full:
            return _error(request, 503, "too many event streams")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        hub.add(request)
        return NOT_DONE_YET


class _Daemons(Resource):
    """
    C{/api/daemons}: the list; its children are the daemons by name.
    """

    def __init__(self, web: "WebService") -> None:
        super().__init__()
        self.web = web

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return _Refusal(404, "no such daemon")
        return _Daemon(self.web, name)

    def render_GET(self, request: Any) -> bytes:
        return _json(request, 200, [self.web.entryView(e) for e in self.web.manager.registry])


class _Daemon(Resource):
    """
    C{/api/daemons/<name>} and what is below it.
    """

    log = Logger()

    def __init__(self, web: "WebService", name: str) -> None:
        super().__init__()
        self.web = web
        self.name = name

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        if request.postpath:
            return _Refusal(404, "not found")
        if path == b"logs":
            return _Leaf(self._logs)
        if path == b"history":
            return _Leaf(self._history)
        action = path.decode("ascii", "replace")
        if action in ACTIONS:
            return _Leaf(post=lambda request: self._act(request, action))
        return _Refusal(404, "not found")

    def _entry(self) -> Optional[Entry]:
        return self.web.manager.registry.get(self.name)

    def render_GET(self, request: Any) -> bytes:
        entry = self._entry()
        if entry is None:
            return _error(request, 404, f"no daemon named {self.name!r}")
        return _json(request, 200, self.web.entryView(entry))

    def _logs(self, request: Any) -> bytes:
        if self._entry() is None or self.name not in self.web.manager.childLogs:
            return _error(request, 404, f"no daemon named {self.name!r}")
        raw = request.args.get(b"count", [b"100"])[0]
        try:
            count = int(raw)
        except ValueError:
            return _error(request, 400, "count must be an integer")
        if count < 0:
            return _error(request, 400, "count must not be negative")
        count = min(count, MAX_LOG_COUNT)
        recent = list(self.web.manager.childLogs[self.name].recent)
        lines = recent[-count:] if count else []
        return _json(request, 200, [[t, stream, _trimLine(line)] for t, stream, line in lines])

    def _history(self, request: Any) -> bytes:
        if self._entry() is None:
            return _error(request, 404, f"no daemon named {self.name!r}")
        sampler = self.web.sampler
        return _json(request, 200, sampler.history(self.name) if sampler is not None else [])

    def _act(self, request: Any, action: str) -> Any:
        problem = self.web.csrfProblem(request)
        if problem:
            return _error(request, 403, problem)
        manager = self.web.manager
        if self._entry() is None:
            return _error(request, 404, f"no daemon named {self.name!r}")
        if not manager.running:
            return _error(request, 409, "the manager is stopping")
        self.log.info(
            "web: {action} {name} asked by {peer}", action=action, name=self.name, peer=_peer(request)
        )
        gone = []
        request.notifyFinish().addErrback(lambda f: gone.append(f))
        d = maybeDeferred(manager.act, action, self.name)

        def done(_: Any) -> None:
            if gone:
                return
            entry = self._entry()
            if entry is None:
                body = _error(request, 404, f"{self.name} was removed")
            else:
                body = _json(request, 200, self.web.entryView(entry))
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(StartFailed):
                body_ = (502, str(failure.value))
            elif failure.check(KeyError):
                body_ = (404, f"no daemon named {self.name!r}")
            else:
                self.log.failure("web: {action} {name} failed", failure, action=action, name=self.name)
                body_ = (500, f"{action} failed: {failure.type.__name__}")
            if gone:
                return
            request.write(_error(request, *body_))
            request.finish()

        d.addCallbacks(done, failed).addErrback(
            lambda f: self.log.failure("web: answering {action} {name}", f, action=action, name=self.name)
        )
        return NOT_DONE_YET


class _Leaf(Resource):
    """
    A leaf answering C{GET} with C{get(request)}, C{POST} with
    C{post(request)}.
    """

    isLeaf = True

    def __init__(self, get: Optional[Callable] = None, post: Optional[Callable] = None) -> None:
        super().__init__()
        self._get = get
        self._post = post
        self.allowedMethods = tuple(
            m for m, f in ((b"GET", get), (b"HEAD", get), (b"POST", post)) if f is not None
        )

    def render_GET(self, request: Any) -> Any:
        if self._get is None:
            return _notAllowed(request, self.allowedMethods)
        return self._get(request)

    def render_HEAD(self, request: Any) -> Any:
        return self.render_GET(request)

    def render_POST(self, request: Any) -> Any:
        if self._post is None:
            return _notAllowed(request, self.allowedMethods)
        return self._post(request)


def _notAllowed(request: Any, allowed: Iterable[bytes]) -> bytes:
    request.setHeader(b"allow", b", ".join(allowed))
    return _error(request, 405, "method not allowed")


def _peer(request: Any) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else "local"


def _cookie(request: Any) -> Optional[str]:
    value = request.getCookie(SESSION_COOKIE)
    return value.decode("ascii", "replace") if value else None


class _Root(Resource):
    """
    The site's root: checks the C{Host} header or the credentials of every
    request before handing it to the resource it names.
    """

    def __init__(self, web: "WebService") -> None:
        super().__init__()
        self.web = web
        self.putChild(b"", _Static(web.indexPage, b"text/html; charset=utf-8", csp=True))
        static = Resource()
        for name, kind in (("dashboard.js", b"text/javascript; charset=utf-8"), ("dashboard.css", b"text/css; charset=utf-8")):
            static.putChild(name.encode("ascii"), _Static(_loadStatic(name), kind))
        self.putChild(b"static", static)
        self.putChild(b"login", _Login(web))
        self.putChild(b"logout", _Logout(web))
        api = Resource()
        api.putChild(b"daemons", _Daemons(web))
        api.putChild(b"events", _Events(web))
        self.putChild(b"api", api)
        self.putChild(b"metrics", _Metrics(web))

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        _securityHeaders(request)
        web = self.web
        if not web.requireAuth:
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if not _isLoopbackHost(_hostName(host)):
                return _Refusal(403, "this dashboard answers only to loopback host names")
        elif path not in (b"login", b"static") and not web.authorized(request):
            if path == b"" and request.method in (b"GET", b"HEAD"):
                return _Redirect(b"login")
            return _Refusal(401, "authentication required", bearer=True)
        return super().getChildWithDefault(path, request)


class _QuietSite(Site):
    """
    A site that writes no access log: every dashboard refresh and scrape
    would land in the manager's log.  Actions are logged as events.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


class WebService(Service):
    """
    Serves the dashboard, its API and C{/metrics} on C{endpoint} (by
    default the manager's C{config.web}), and writes where it listens to
    C{<state_dir>/web.json} (C{{"url", "port", "auth"}}, nothing secret)
    once it does.

    @ivar requireAuth: whether requests need the token; decided once
        listening (see the module docstring), unless forced by the
        constructor.
    @ivar port: the TCP port it listens on, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        manager: Any,
        reactor: Any,
        sampler: Optional[ProcessSampler] = None,
        metrics: Optional[DaeMetrics] = None,
        endpoint: Optional[str] = None,
        *,
        requireAuth: Optional[bool] = None,
        heartbeat: float = HEARTBEAT_INTERVAL,
        logInterval: float = LOG_INTERVAL,
        maxClients: int = MAX_EVENT_CLIENTS,
        maxBuffered: int = MAX_CLIENT_BUFFER,
    ) -> None:
        """
        @param manager: the L{dae_service.manager.Dae}: its C{registry},
            C{childLogs}, C{act}, C{token}, C{config} and C{running}.
        @param reactor: an L{IReactorTime} that endpoints can listen with.
        @param sampler: CPU/RSS samples (none: the dashboard shows none).
        @param metrics: what C{/metrics} serves (none: 404).
        @param requireAuth: force authentication on or off instead of
            deciding from the address.
        """
        self.manager = manager
        self.reactor = reactor
        self.sampler = sampler
        self.metrics = metrics
        self.endpoint = endpoint
        self.requireAuth = True
        self._forcedAuth = requireAuth
        self._heartbeat = heartbeat
        self._logInterval = logInterval
        self._maxClients = maxClients
        self._maxBuffered = maxBuffered
        self.hub: Optional[EventHub] = None
        self.site: Optional[Site] = None
        self.port: Optional[int] = None
        self.sessions = _Sessions(reactor)
        self.indexPage = b""
        self.loginPage = b""
        self._listen = ListenOutcome()
        self._listening: Optional[Deferred] = None

    @property
    def stateFile(self) -> str:
        return os.path.join(self.manager.config.stateDir, "web.json")

    # Lifecycle

    def startService(self) -> None:
        super().startService()
        description = loopbackByDefault(self.endpoint or self.manager.config.web)
        if description != (self.endpoint or self.manager.config.web):
            self.log.info("web: no interface given; listening on loopback only ({endpoint})", endpoint=description)
        self.indexPage = _loadStatic("index.html")
        self.loginPage = _loadStatic("login.html")
        self.hub = EventHub(
            self, self.reactor, self._heartbeat, self._logInterval, self._maxClients, self._maxBuffered
        )
        # Idle keep-alive connections close after a minute (Twisted's default
        # is 12 hours); an open event stream is a request in progress, which
        # never times out.
        self.site = _QuietSite(_Root(self), timeout=IDLE_TIMEOUT, reactor=self.reactor)
        self.site.displayTracebacks = False
        try:
            listening = serverFromString(self.reactor, description).listen(self.site)
        except Exception:
            listening = Deferred()
            listening.errback(Failure())
        self._listening = listening
        listening.addCallbacks(self._listened, self._listenFailed, callbackArgs=(description,), errbackArgs=(description,))

    def _listened(self, port: Any, description: str) -> None:
        address = port.getHost()
        self.port = getattr(address, "port", None)
        local = isLocalAddress(address)
        self.requireAuth = (not local) if self._forcedAuth is None else self._forcedAuth
        self.hub.start()
        url = self.url(address)
        try:
            writeAtomically(
                self.stateFile,
                json.dumps({"url": url, "port": self.port, "auth": self.requireAuth}).encode("utf-8") + b"\n",
                0o600,
            )
        except OSError:
            self.log.failure("web: cannot write {path}", path=self.stateFile)
        self.log.info(
            "web dashboard on {url} ({auth})",
            url=url or description,
            auth="token required" if self.requireAuth else "loopback, no token",
        )
        self._listen.succeeded(port)

    def _listenFailed(self, failure: Failure, description: str) -> None:
        self.log.error(
            "web: cannot listen on {endpoint}: {error}; no dashboard",
            endpoint=description,
            error=failure.getErrorMessage(),
        )
        self._listen.failed(failure)

    def whenListening(self) -> Deferred:
        """
        @return: a Deferred firing with the listening port, or failing with
            why it could not listen.
        """
        return self._listen.when()

    def stopService(self) -> Deferred:
        super().stopService()
        if self.hub is not None:
            self.hub.stop()
        self.sessions.clear()
        port = self._listen.release()
        self.port = None
        try:
            os.unlink(self.stateFile)
        except OSError:
            pass
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)

    # What the resources use

    def url(self, address: Any) -> Optional[str]:
        """
        The dashboard's URL on a listening C{address} (L{None} for a UNIX
        socket).
        """
        if not isinstance(address, (IPv4Address, IPv6Address)):
            return None
        host = address.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if isinstance(address, IPv6Address):
            host = f"[{host}]"
        description = self.endpoint or self.manager.config.web or ""
        scheme = "https" if description.startswith("ssl:") else "http"
        return f"{scheme}://{host}:{address.port}/"

    def checkToken(self, token: Any) -> bool:
        if not isinstance(token, str) or not token or not self.manager.token:
            return False
        return hmac.compare_digest(token.encode("utf-8"), self.manager.token.encode("utf-8"))

    def authorized(self, request: Any) -> bool:
        """
        Does C{request} carry the token (C{Authorization: Bearer}) or a
        live session cookie?
        """
        header = request.getHeader(b"authorization")
        if header:
            scheme, _, credentials = header.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and self.checkToken(credentials.strip()):
                return True
        return self.sessions.valid(_cookie(request))

    def csrfProblem(self, request: Any) -> Optional[str]:
        """
        Why a state-changing request may come from another site, or
        L{None}: it must carry C{X-Dae: 1}, and an C{Origin}, if any, must
        be this site.
        """
        if request.getHeader(CSRF_HEADER) != b"1":
            return "this request needs the header X-Dae: 1"
        origin = request.getHeader(b"origin")
        if origin is not None:
            host = request.getHeader(b"host") or b""
            try:
                netloc = urlsplit(origin.decode("latin-1")).netloc
            except ValueError:
                netloc = ""
            if netloc.lower() != host.decode("latin-1").lower():
                return "cross-origin request refused"
        if request.getHeader(b"sec-fetch-site") in (b"cross-site", b"same-site"):
            return "cross-site request refused"
        return None

    def entryView(self, entry: Entry) -> dict:
        """
        An entry as the dashboard shows it: the registry's fields, its
        workers, and the latest CPU (percent of one core) and RSS (bytes)
        of its process and of each worker's (L{None} when unknown).
        """
        view = entry.toDict()
        sample = self.sampler.latest.get(entry.name) if self.sampler is not None else None
        if sample is not None and sample.pid == entry.pid:
            view["cpu"] = None if sample.cpuPercent is None else round(sample.cpuPercent, 2)
            view["rss"] = sample.rssBytes
        else:
            view["cpu"] = view["rss"] = None
        workers = []
        for worker in entryWorkers(entry):
            sample = None
            if self.sampler is not None and isinstance(worker.get("index"), int):
                sample = self.sampler.latestWorkers.get((entry.name, worker["index"]))
            if sample is not None and sample.pid == worker.get("pid"):
                worker["cpu"] = None if sample.cpuPercent is None else round(sample.cpuPercent, 2)
                worker["rss"] = sample.rssBytes
            else:
                worker["cpu"] = worker["rss"] = None
            workers.append(worker)
        view["workers"] = workers
        return view

    def snapshot(self) -> dict:
        """
        What a new event stream gets first: the manager, every entry, every
        CPU/RSS history.
        """
        manager = self.manager
        return {
            "manager": {
                "pid": os.getpid(),
                "config": manager.config.path,
                "started": int(manager.started * 1000) if getattr(manager, "started", None) else None,
                "auth": self.requireAuth,
            },
            "daemons": [self.entryView(e) for e in manager.registry],
            "histories": self.sampler.histories() if self.sampler is not None else {},
        }
