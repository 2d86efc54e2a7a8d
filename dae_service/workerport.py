"""
The worker's side of a pool's listening socket.

The manager binds the socket of each worker slot of a pool and hands the
worker a duplicate of it (a descriptor number, C{DAE_POOL_FD}).
L{WorkerEndpoint} adopts that descriptor as a L{WorkerPort}: an ordinary
Twisted TCP port, so the kernel hands each accepted connection straight to
the worker (the manager never touches a byte, and the worker sees the
client's real address), which also counts its open connections and calls
its C{observers} with the count on every change, for the pool's load
accounting and for a draining server.

Stopping the port (a drain) only closes this worker's duplicate: the socket
stays open in the manager, and the connections waiting in its queue go to
the worker's replacement, which adopts the same socket.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from twisted.internet import fdesc, tcp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["WorkerPort", "WorkerEndpoint", "socketFamily"]


class _CountedServer(tcp.Server):
    """
    A server-side TCP transport that its L{WorkerPort} counts from when it
    is made until it is lost.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        port = self.server
        port.connections.add(self)
        for observer in port.observers:
            observer(len(port.connections))

    def connectionLost(self, reason: Any) -> None:
        try:
            super().connectionLost(reason)
        finally:
            port = self.server
            port.connections.discard(self)
            for observer in port.observers:
                observer(len(port.connections))


class WorkerPort(tcp.Port):
    """
    A TCP port over an adopted listening socket that counts its open
    connections.  Nothing is added on the data path: the count changes
    when a transport is made and when it is lost.

    @ivar connections: the open server transports (each one's C{protocol}
        is what the factory built, inside TLS if any).
    @ivar observers: callables told the number of open connections after
        each change (the child's load reports, a draining server).
    """

    transport = _CountedServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set = set()
        self.observers: list[Callable[[int], None]] = []


def socketFamily(fd: int) -> int:
    """
    The address family of the socket open on C{fd}.

    @raise OSError: if C{fd} is not an open socket.
    """
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return probe.family
    finally:
        probe.close()


@implementer(IStreamServerEndpoint)
class WorkerEndpoint:
    """
    An endpoint that "listens" by adopting the listening socket open on
    descriptor C{fd}: the port holds its own duplicate, and C{fd} itself is
    closed, so that a stopped port really lets go of the socket.

    @param reactor: an L{IReactorSocket} whose ports are L{tcp.Port}s (any
        posix reactor).
    """

    #: The ports it makes keep C{connections} (see L{WorkerPort}).
    countsConnections = True

    def __init__(self, reactor: Any, fd: int, portClass: type = WorkerPort) -> None:
        self._reactor = reactor
        self._fd = fd
        self._portClass = portClass

    def listen(self, factory: Any) -> Deferred:
        try:
            family = socketFamily(self._fd)
            if family not in (socket.AF_INET, socket.AF_INET6):
                raise OSError(f"descriptor {self._fd} is not a TCP socket (family {family})")
            fdesc.setNonBlocking(self._fd)
            port = self._portClass._fromListeningDescriptor(
                self._reactor, self._fd, family, factory
            )
            port.startListening()
        except Exception:
            return fail()
        os.close(self._fd)
        return succeed(port)
