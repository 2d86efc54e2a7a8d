"""
The client side of Common TCP: a L{GuestProtocol} for one connection, and a
reconnecting L{Guest} for one daemon endpoint.

Replies are matched to calls by order (PROTOCOL.md, Part 2: every command gets
exactly one reply, in command order), so calls can be pipelined::

    guest = yield Guest.connect(reactor, "tcp:127.0.0.1:4567")
    a, b = yield gatherResults([guest.call("get", "a"), guest.call("get", "b")])

What a call's Deferred fires with (the I{reply value}):

    - for a user command, the first element of the reply's arguments
      (C{get ["k"]} answered by C{get [42]} gives C{42}; C{get []} gives
      L{None});
    - for C{whois}, C{options} and the manager's C{list}, the first element
      too: the credential dict, the command table, the list of entries;
    - for C{dae}, the whole argument list, C{[name, pid, port, secret]}
      (Node's C{credential} reply is not wrapped in a one-element array).

A C{fault} reply fails the call with a L{Fault} carrying the fault's code.  A
packet that answers no call is an I{event}, handed to the listeners added
with C{addEventListener}.
"""

from __future__ import annotations

import math
import os
import random
from collections import deque
from typing import Any, Callable, Mapping, Optional, Union

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .errors import CallTimeout, Fault, GuestConnectionLost, TooManyPending
from .interfaces import IGuest

__all__ = [
    "Guest",
    "GuestProtocol",
    "GuestFactory",
    "replyName",
    "DEFAULT_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_RETRY_POLICY",
]

#: Seconds a call waits for its reply unless told otherwise.
DEFAULT_TIMEOUT = 30.0

#: Seconds a L{Guest} call waits for a connection before failing.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: Unanswered calls one connection may hold (abandoned ones included).
DEFAULT_MAX_PENDING = 10000

#: How long a L{Guest} waits between connection attempts.  Twisted's default
#: backoff grows to a minute, longer than L{DEFAULT_CONNECT_TIMEOUT}: calls
#: would then fail while a restarted local daemon was already back.  Ours
#: starts at 0.2 s and stays under 5 s.
DEFAULT_RETRY_POLICY = backoffPolicy(
    initialDelay=0.1, maxDelay=5.0, factor=2.0, jitter=lambda: random.random() * 0.1
)

# Commands whose reply packet has another name (PROTOCOL.md): the Node
# built-ins and the manager's list.
_REPLY_NAMES = {
    "dae": "credential",
    "whois": "credential",
    "options": "commands",
    "list": "daemons",
}

# Commands whose reply value is the reply's whole argument list.
_WHOLE_REPLY = frozenset({"dae"})

_FAULT = "fault"
_ANY = "*"


def replyName(command: str) -> str:
    """
    The name of the packet that answers C{command}: C{credential} for C{dae}
    and C{whois}, C{commands} for C{options}, C{daemons} for C{list}, else
    the command's own name.
    """
    return _REPLY_NAMES.get(command, command)


class _EventListeners:
    """
    Event listeners by event name (C{"*"}: every event).  A L{Guest} shares
    one of these with each connection it makes, so listeners survive
    reconnections.
    """

    log = Logger()

    def __init__(self) -> None:
        self._byName: dict[str, list[Callable[..., Any]]] = {}

    def add(self, name: str, listener: Callable[..., Any]) -> None:
        self._byName.setdefault(name, []).append(listener)

    def remove(self, name: str, listener: Callable[..., Any]) -> None:
        listeners = self._byName.get(name)
        if listeners and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self._byName[name]

    def deliver(self, name: str, args: list) -> None:
        """
        Call every listener for event C{name}; one that raises is logged and
        the others still run.
        """
        for listener in list(self._byName.get(name, ())):
            try:
                listener(args)
            except Exception:
                self.log.failure(
                    "Listener {listener!r} for event {event} raised",
                    listener=listener,
                    event=name,
                )
        for listener in list(self._byName.get(_ANY, ())):
            try:
                listener(name, args)
            except Exception:
                self.log.failure(
                    "Listener {listener!r} for every event raised on {event}",
                    listener=listener,
                    event=name,
                )


class _Call:
    """
    One unanswered call, in the order it was sent.

    @ivar abandoned: the caller gave up (timeout or cancel); the slot stays
        so that the late reply is consumed rather than taken for the next
        call's.
    """

    __slots__ = ("name", "reply", "deferred", "timer", "abandoned")

    def __init__(self, name: str, reply: str) -> None:
        self.name = name
        self.reply = reply
        self.deferred: Optional[Deferred] = None
        self.timer: Any = None
        self.abandoned = False

    def stopTimer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


class GuestProtocol(Protocol):
    """
    The client side of one Common TCP connection: sends calls, matches replies
    to them by order, and hands everything else to event listeners.

    Matching: a C{fault} packet, or one named after the oldest pending call's
    reply, answers that call.  A timed-out or cancelled call keeps its place
    (I{abandoned}) so its late reply is consumed and discarded.  A Node
    daemon never answers an unknown command, so a packet that matches no
    abandoned call at the head but does match the first live call behind
    them answers that live call, and the abandoned ones before it are
    dropped.  Anything else is an event.

    @ivar timeout: the default per-call timeout in seconds, L{None} for none.
    @ivar maxPending: the most unanswered calls (abandoned ones included)
        this connection holds; further calls fail with L{TooManyPending}.
    @ivar maxLength: the longest packet accepted from the daemon.
    """

    log = Logger()

    timeout: Optional[float] = DEFAULT_TIMEOUT
    maxPending: int = DEFAULT_MAX_PENDING
    maxLength: int = wire.DEFAULT_MAX_LENGTH

    def __init__(
        self,
        reactor: Any,
        *,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        maxPending: int = DEFAULT_MAX_PENDING,
        maxLength: int = wire.DEFAULT_MAX_LENGTH,
        listeners: Optional[_EventListeners] = None,
    ) -> None:
        """
        @param reactor: an L{IReactorTime} provider, for call timeouts.
        @param listeners: the event listener registry to use (a L{Guest}
            passes its own); a new one by default.
        """
        self._reactor = reactor
        self.timeout = timeout
        self.maxPending = maxPending
        self.maxLength = maxLength
        self._listeners = _EventListeners() if listeners is None else listeners
        self._parser = wire.PacketParser(maxLength)
        self._pending: deque[_Call] = deque()
        #: True once C{dae} was sent: the daemon closes after answering it
        #: (Node's and ours alike), so nothing more is sent here.
        self.retiring = False
        self._lost = False
        self._lostWaiters: list[Deferred] = []

    # Public API

    def call(
        self,
        name: str,
        *args: Any,
        timeout: Optional[float] = None,
        reply: Optional[str] = None,
    ) -> Deferred:
        """
        Send command C{name} with C{args}.

        @param timeout: seconds to wait for the reply; L{None} uses
            C{self.timeout}; C{math.inf} waits forever.
        @param reply: the name of the reply packet, when it is not the usual
            one (L{replyName}); Node daemons reply under any name.
        @return: a Deferred firing with the reply value (see the module
            docstring), or failing with L{Fault}, L{CallTimeout},
            L{GuestConnectionLost} or L{TooManyPending}.  Cancelling it
            abandons the call (its late reply is discarded).
        """
        if self._lost or self.transport is None:
            return fail(GuestConnectionLost(f"{name}: not connected"))
        if self.retiring:
            # After dae the daemon answers nothing more and closes.
            return fail(GuestConnectionLost(f"{name}: the connection closes after dae"))
        if len(self._pending) >= self.maxPending:
            return fail(
                TooManyPending(f"{name}: {len(self._pending)} calls already pending")
            )
        try:
            data = wire.encode(name, list(args))
        except (ValueError, TypeError) as e:
            return fail(e)
        pending = _Call(name, reply if reply is not None else replyName(name))

        def cancel(d: Deferred) -> None:
            self._abandon(pending)

        d: Deferred = Deferred(cancel)
        pending.deferred = d
        if timeout is None:
            timeout = self.timeout
        if timeout is not None and timeout != math.inf:
            pending.timer = self._reactor.callLater(timeout, self._timedOut, pending, timeout)
        # Queue the call before writing: an in-memory transport may deliver
        # the reply during the write.
        self._pending.append(pending)
        if name == "dae":
            self.retiring = True
        self.transport.write(data)
        return d

    def addEventListener(self, name: str, listener: Callable[..., Any]) -> None:
        """
        Call C{listener(args)} for every event named C{name}, or
        C{listener(name, args)} for every event when C{name} is C{"*"}.
        """
        self._listeners.add(name, listener)

    def removeEventListener(self, name: str, listener: Callable[..., Any]) -> None:
        """
        Undo L{addEventListener}; nothing happens if it was not added.
        """
        self._listeners.remove(name, listener)

    @property
    def pendingCount(self) -> int:
        """
        How many calls are unanswered (abandoned ones included).
        """
        return len(self._pending)

    def whenDisconnected(self) -> Deferred:
        """
        @return: a new Deferred that fires (with L{None}) once the connection
            is gone.
        """
        if self._lost:
            return succeed(None)
        d: Deferred = Deferred()
        self._lostWaiters.append(d)
        return d

    # IProtocol

    def dataReceived(self, data: bytes) -> None:
        self._handle(self._parser.feed(data))

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        # A Node daemon ends its last packet by closing: deliver it first.
        self._handle(self._parser.finish())
        self._lost = True
        self.connected = 0
        pending, self._pending = self._pending, deque()
        why = reason.getErrorMessage() if reason is not None else "connection closed"
        live = [c for c in pending if not c.abandoned]
        if live:
            self.log.info(
                "Connection lost with {count} calls pending: {reason}",
                count=len(live),
                reason=why,
            )
        for c in pending:
            c.stopTimer()
        for c in live:
            # Each caller gets its own failure.
            c.deferred.errback(
                GuestConnectionLost(f"{c.name}: connection lost ({why})")
            )
        waiters, self._lostWaiters = self._lostWaiters, []
        for w in waiters:
            w.callback(None)

    # Internals

    def _handle(self, items: list) -> None:
        for item in items:
            if self._lost:
                # A callback closed the connection: nobody waits any more.
                break
            if type(item) is wire.Packet:
                self._packet(item.name, item.args)
            else:
                self._wireError(item)

    def _match(self, name: str) -> Optional[_Call]:
        """
        Find and remove the call that a packet named C{name} answers, dropping
        the abandoned calls before it; L{None} if it answers none.
        """
        pending = self._pending
        if not pending:
            return None
        if name == _FAULT:
            return pending.popleft()
        index = 0
        for c in pending:
            if c.reply == name:
                break
            if not c.abandoned:
                return None
            index += 1
        else:
            return None
        for _ in range(index):
            dropped = pending.popleft()
            self.log.debug(
                "Dropping abandoned call {command}: never answered", command=dropped.name
            )
        return pending.popleft()

    def _packet(self, name: str, args: list) -> None:
        c = self._match(name)
        if c is None:
            if name == _FAULT:
                self.log.warn("Unsolicited fault from the daemon: {args!r}", args=args)
            else:
                self._listeners.deliver(name, args)
            return
        c.stopTimer()
        if c.abandoned:
            self.log.debug("Discarding late reply to {command}", command=c.name)
            return
        if name == _FAULT:
            c.deferred.errback(_faultFromArgs(args, c.name))
        elif c.name in _WHOLE_REPLY:
            c.deferred.callback(args)
        else:
            c.deferred.callback(args[0] if args else None)

    def _wireError(self, error: wire.WireError) -> None:
        self.log.warn(
            "Undecodable packet from the daemon ({code}, {command}): {message}",
            code=error.code,
            command=error.command,
            message=error.message,
        )
        if error.code == wire.TOO_LONG:
            # The parser has given up on this connection.
            self.transport.loseConnection()
            return
        # A reply we could not decode still answers its call: fail that call
        # rather than let every later reply shift by one.
        if error.command is not None:
            c = self._match(error.command)
            if c is not None:
                c.stopTimer()
                if not c.abandoned:
                    c.deferred.errback(
                        Fault(error.code, f"undecodable reply: {error.message}", c.name)
                    )

    def _timedOut(self, c: _Call, timeout: float) -> None:
        c.timer = None
        if c.abandoned:
            return
        c.abandoned = True
        c.deferred.errback(CallTimeout(f"{c.name}: no reply within {timeout} seconds"))

    def _abandon(self, c: _Call) -> None:
        c.abandoned = True
        c.stopTimer()


def _faultFromArgs(args: list, command: str) -> Fault:
    """
    The L{Fault} a C{fault} packet carries, even when it is malformed.
    """
    body = args[0] if args else None
    if not isinstance(body, dict):
        return Fault(wire.BAD_PACKET, f"malformed fault: {args!r}", command)
    code = body.get("code")
    message = body.get("message")
    faultCommand = body.get("command")
    return Fault(
        code if isinstance(code, str) and code else wire.BAD_PACKET,
        message if isinstance(message, str) else ("" if message is None else repr(message)),
        faultCommand if isinstance(faultCommand, str) else command,
    )


class GuestFactory(Factory):
    """
    Builds L{GuestProtocol}s that share one set of event listeners.
    """

    noisy = False
    protocol = GuestProtocol

    def __init__(
        self,
        reactor: Any,
        *,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        maxPending: int = DEFAULT_MAX_PENDING,
        maxLength: int = wire.DEFAULT_MAX_LENGTH,
        listeners: Optional[_EventListeners] = None,
    ) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.maxPending = maxPending
        self.maxLength = maxLength
        self.listeners = _EventListeners() if listeners is None else listeners

    def buildProtocol(self, addr: Any) -> GuestProtocol:
        p = self.protocol(
            self.reactor,
            timeout=self.timeout,
            maxPending=self.maxPending,
            maxLength=self.maxLength,
            listeners=self.listeners,
        )
        p.factory = self
        return p


EndpointSource = Union[str, IStreamClientEndpoint, Callable[[], Any]]


@implementer(IStreamClientEndpoint)
class _ResolvingEndpoint:
    """
    An endpoint found anew for every connection attempt, by a callable
    returning (a Deferred of) an endpoint or an endpoint string.  This is the
    seam for connecting to a daemon by name through the manager, whose port
    changes when it restarts.
    """

    def __init__(self, reactor: Any, resolve: Callable[[], Any]) -> None:
        self._reactor = reactor
        self._resolve = resolve

    def connect(self, protocolFactory: Any) -> Deferred:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: Any) -> Any:
        endpoint = self._resolve()
        if isinstance(endpoint, Deferred):
            endpoint = await endpoint
        return await _toEndpoint(self._reactor, endpoint).connect(protocolFactory)

    def __repr__(self) -> str:
        return f"<resolving endpoint {self._resolve!r}>"


def _toEndpoint(reactor: Any, endpoint: Any) -> IStreamClientEndpoint:
    if IStreamClientEndpoint.providedBy(endpoint):
        return endpoint
    if isinstance(endpoint, str):
        return clientFromString(reactor, endpoint)
    raise TypeError(f"not an endpoint or endpoint string: {endpoint!r}")


class _TrackingFactory(GuestFactory):
    """
    A L{GuestFactory} that remembers the last protocol it built, so that
    L{Guest} knows which protocol a new connection is (L{ClientService} makes
    one connection attempt at a time).
    """

    lastProtocol: Optional[GuestProtocol] = None

    def buildProtocol(self, addr: Any) -> GuestProtocol:
        p = super().buildProtocol(addr)
        self.lastProtocol = p
        return p


@implementer(IGuest)
class Guest:
    """
    A client of one daemon that reconnects when the connection drops (with a
    bounded backoff) and matches replies to calls by order.

    Calls made while disconnected wait for the next connection, up to
    C{connectTimeout} seconds, then fail with L{GuestConnectionLost}; calls
    pending when the connection drops fail with L{GuestConnectionLost} too
    (they are not resent: a command may not be safe to run twice).  Event
    listeners apply to every connection.

    The guest starts connecting on its first call (or L{whenConnected});
    L{close} stops it for good.

    Reconnection is L{ClientService}'s.  Its state machine must not be
    re-entered from its own callbacks, and calls are made from callbacks all
    the time, so the guest keeps its own list of calls waiting for a
    connection, learns of new connections through C{prepareConnection}, and
    releases the waiting calls in a fresh reactor turn.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: EndpointSource,
        *,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        connectTimeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT,
        maxPending: int = DEFAULT_MAX_PENDING,
        maxLength: int = wire.DEFAULT_MAX_LENGTH,
        retryPolicy: Optional[Callable[[int], float]] = None,
    ) -> None:
        """
        @param reactor: provides L{IReactorTime} and whatever the endpoint
            needs (L{IReactorTCP} for C{tcp:} endpoints).
        @param endpoint: a client endpoint string (C{"tcp:127.0.0.1:4567"}),
            an L{IStreamClientEndpoint}, or a callable returning either (or a
            Deferred of either), called again before every connection attempt.
        @param timeout: the default per-call timeout once connected (L{None}:
            none).
        @param connectTimeout: how long a call waits for a connection
            (L{None}: forever).
        @param maxPending: the most unanswered calls per connection.
        @param maxLength: the longest packet accepted from the daemon.
        @param retryPolicy: seconds to wait before connection attempt I{n};
            L{DEFAULT_RETRY_POLICY} by default.
        """
        self._reactor = reactor
        if IStreamClientEndpoint.providedBy(endpoint) or isinstance(endpoint, str):
            self._endpoint = _toEndpoint(reactor, endpoint)
        elif callable(endpoint):
            self._endpoint = _ResolvingEndpoint(reactor, endpoint)
        else:
            raise TypeError(f"not an endpoint, endpoint string or callable: {endpoint!r}")
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.maxPending = maxPending
        self.maxLength = maxLength
        self.retryPolicy = DEFAULT_RETRY_POLICY if retryPolicy is None else retryPolicy
        self._listeners = _EventListeners()
        self._factory: Optional[_TrackingFactory] = None
        self._service: Optional[ClientService] = None
        self._current: Optional[GuestProtocol] = None
        self._waiters: list[Deferred] = []
        self._release: Any = None
        self._closed = False
        self._stopped = False
        self._stopWaiters: list[Deferred] = []
        self._alsoClose: list[Any] = []

    @classmethod
    def byName(
        cls,
        reactor: Any,
        name: str,
        manager: Optional[EndpointSource] = None,
        *,
        environ: Optional[Mapping[str, str]] = None,
        resolveTimeout: float = 10.0,
        **kwargs: Any,
    ) -> "Guest":
        """
        A guest of the daemon the manager knows as C{name}: its address is
        looked up through the manager before every connection, and when the
        manager reports that the daemon came back elsewhere (a restart), the
        guest drops its old connection and follows it.

        @param manager: the manager's client endpoint; by default
            C{$DAE_MANAGER}, which the manager gives every daemon it starts.
        @param resolveTimeout: how long one connection attempt waits for the
            daemon to be ready before the attempt fails (and is retried).
        @param kwargs: as for L{Guest}.
        @raise ValueError: without a manager endpoint.
        """
        if manager is None:
            manager = (os.environ if environ is None else environ).get("DAE_MANAGER")
            if not manager:
                raise ValueError("no manager endpoint given and DAE_MANAGER is not set")
        managerGuest = cls(reactor, manager, timeout=kwargs.get("timeout", DEFAULT_TIMEOUT))
        resolver = _NameResolver(reactor, managerGuest, name, resolveTimeout)
        guest = cls(reactor, resolver.resolve, **kwargs)
        resolver.guest = guest
        guest._alsoClose.append(managerGuest)
        return guest

    @classmethod
    def connect(cls, reactor: Any, endpoint: EndpointSource, **kwargs: Any) -> Deferred:
        """
        Make a L{Guest} and wait for its first connection.

        @param kwargs: as for L{Guest}.
        @return: a Deferred firing with the connected L{Guest}, or failing
            with L{GuestConnectionLost} (the guest is then closed).
        """
        guest = cls(reactor, endpoint, **kwargs)

        def failed(f: Failure) -> Deferred:
            return guest.close().addBoth(lambda _: f)

        return guest.whenConnected().addCallbacks(lambda _: guest, failed)

    @property
    def connected(self) -> bool:
        """
        Is the guest connected right now?
        """
        current = self._current
        return current is not None and bool(current.connected) and not current.retiring

    def whenConnected(self) -> Deferred:
        """
        Start connecting if not yet started.

        @return: a Deferred firing with the connected L{GuestProtocol}, or
            failing with L{GuestConnectionLost} after C{connectTimeout}
            seconds or when the guest is closed.
        """
        if self._closed:
            return fail(GuestConnectionLost("the guest is closed"))
        if self.connected and not self._waiters:
            return succeed(self._current)
        # Queue behind the calls already waiting, so calls go out in the
        # order they were made.
        self._start()

        def forget(d: Deferred) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d: Deferred = Deferred(forget)
        self._waiters.append(d)
        if self.connectTimeout is not None:
            d.addTimeout(self.connectTimeout, self._reactor, onTimeoutCancel=self._connectTimedOut)
        return d

    def call(
        self,
        name: str,
        *args: Any,
        timeout: Optional[float] = None,
        reply: Optional[str] = None,
    ) -> Deferred:
        """
        Wait for a connection, then call command C{name} with C{args}, as
        L{GuestProtocol.call}.  C{timeout} counts from when the call is sent.
        """
        if self.connected and not self._waiters:
            return self._current.call(name, *args, timeout=timeout, reply=reply)
        return self.whenConnected().addCallback(
            lambda protocol: protocol.call(name, *args, timeout=timeout, reply=reply)
        )

    def addEventListener(self, name: str, listener: Callable[..., Any]) -> None:
        """
        Call C{listener(args)} for every event named C{name}, or
        C{listener(name, args)} for every event when C{name} is C{"*"}, on
        this connection and every later one.
        """
        self._listeners.add(name, listener)

    def removeEventListener(self, name: str, listener: Callable[..., Any]) -> None:
        """
        Undo L{addEventListener}; nothing happens if it was not added.
        """
        self._listeners.remove(name, listener)

    def close(self) -> Deferred:
        """
        Disconnect and stop reconnecting.  Pending calls fail with
        L{GuestConnectionLost}, so do calls made from now on.

        @return: a Deferred that fires once disconnected.
        """
        if not self._closed:
            self._closed = True
            if self._release is not None and self._release.active():
                self._release.cancel()
            self._release = None
            if self._service is None:
                stopping = succeed(None)
            else:
                stopping = self._service.stopService()
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.errback(GuestConnectionLost("the guest was closed before it connected"))
            stopping.addBoth(self._finishStopping)
            for other in self._alsoClose:
                other.close()
        d: Deferred = Deferred()
        if self._stopped:
            d.callback(None)
        else:
            self._stopWaiters.append(d)
        return d

    # Internals

    def _start(self) -> None:
        if self._service is not None:
            return
        self._factory = _TrackingFactory(
            self._reactor,
            timeout=self.timeout,
            maxPending=self.maxPending,
            maxLength=self.maxLength,
            listeners=self._listeners,
        )
        self._service = ClientService(
            self._endpoint,
            self._factory,
            retryPolicy=self.retryPolicy,
            clock=self._reactor,
            prepareConnection=self._connectionReady,
        )
        self._service.startService()

    def _connectionReady(self, proxy: Any) -> None:
        """
        A new connection is up (C{ClientService}'s C{prepareConnection}):
        make it current and release the waiting calls in a fresh reactor turn,
        out of the service's state machine.
        """
        protocol = self._factory.lastProtocol
        self._current = protocol
        self.log.debug("Connected to {endpoint!r}", endpoint=self._endpoint)

        def disconnected(_: None) -> None:
            if self._current is protocol:
                self._current = None

        protocol.whenDisconnected().addCallback(disconnected)
        if self._waiters and self._release is None:
            self._release = self._reactor.callLater(0, self._releaseWaiters)

    def _releaseWaiters(self) -> None:
        self._release = None
        if not self.connected:
            # Lost again already: the next connection releases them.
            return
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(self._current)

    def _connectTimedOut(self, result: Any, timeout: float) -> Any:
        if isinstance(result, Failure) and result.check(CancelledError):
            raise GuestConnectionLost(
                f"could not connect to {self._endpoint!r} within {timeout} seconds"
            )
        return result

    def _finishStopping(self, result: Any) -> None:
        if isinstance(result, Failure):
            self.log.failure("Error stopping the connection", result)
        self._stopped = True
        waiters, self._stopWaiters = self._stopWaiters, []
        for w in waiters:
            w.callback(None)


class _NameResolver:
    """
    Finds where the daemon called C{name} listens, through the manager: a
    C{subscribe} (so no change is missed) then a C{lookup}; when it is not
    ready, waits for the C{changed} event that says it is.
    """

    log = Logger()

    def __init__(self, reactor: Any, manager: Guest, name: str, timeout: float) -> None:
        self._reactor = reactor
        self._manager = manager
        self.name = name
        self.timeout = timeout
        self.guest: Optional[Guest] = None
        self._port: Optional[int] = None
        self._waiters: list[Deferred] = []
        manager.addEventListener("changed", self._changed)

    def resolve(self) -> Deferred:
        """
        @return: a Deferred of the daemon's client endpoint string.
        """
        manager = self._manager
        manager.call("subscribe").addErrback(lambda f: None)
        d = manager.call("lookup", self.name).addCallback(self._looked)
        return d.addTimeout(self.timeout, self._reactor)

    def _looked(self, entry: Any) -> Any:
        if isinstance(entry, dict) and entry.get("state") == "ready" and entry.get("port"):
            return self._endpoint(entry["port"])
        d: Deferred = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def _endpoint(self, port: int) -> str:
        self._port = port
        return f"tcp:host=127.0.0.1:port={port}"

    def _changed(self, args: list) -> None:
        entry = args[0] if args else None
        if not isinstance(entry, dict) or entry.get("name") != self.name:
            return
        if entry.get("state") != "ready" or not entry.get("port"):
            return
        port = entry["port"]
        waiters, self._waiters = self._waiters, []
        if waiters:
            endpoint = self._endpoint(port)
            for d in waiters:
                d.callback(endpoint)
            return
        guest = self.guest
        if port != self._port and guest is not None and guest._current is not None:
            # It came back elsewhere while we still hold the old connection.
            self.log.info("{name} moved to port {port}; reconnecting", name=self.name, port=port)
            guest._current.transport.loseConnection()
