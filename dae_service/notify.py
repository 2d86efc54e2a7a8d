"""
The manager's end of the systemd notification protocol (C{sd_notify}) for
foreign children: the child finds a UNIX datagram socket's path in
C{NOTIFY_SOCKET} and sends C{KEY=VALUE} lines there (C{READY=1},
C{STATUS=...}, C{STOPPING=1}, C{MAINPID=...}).

Use one socket per child (the message says nothing about who sent it), in a
directory only the manager can enter: the socket is made mode 0600 right
after it is bound, and the directory closes the moment in between.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

__all__ = ["MAX_DATAGRAM", "NotifySocket", "parseNotifyMessage"]

#: The largest notification accepted, in bytes (systemd's messages are
#: short: a status line, a pid, a few flags); larger ones are dropped.
MAX_DATAGRAM = 4096


def parseNotifyMessage(data: bytes) -> dict[str, str]:
    """
    C{b"READY=1\\nSTATUS=up"} -> C{{"READY": "1", "STATUS": "up"}}.  Lines
    without C{=} or with an empty key are skipped; bytes that are not
    UTF-8 are replaced.
    """
    state = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            state[key] = value
    return state


class _NotifyProtocol(DatagramProtocol):
    def __init__(self, owner: "NotifySocket") -> None:
        self._owner = owner

    def datagramReceived(self, datagram: bytes, address: Any) -> None:
        self._owner._received(datagram)


class NotifySocket:
    """
    A C{NOTIFY_SOCKET} listener: calls C{onMessage(dict)} for each
    notification (see L{parseNotifyMessage}) received at C{path}.

    @param reactor: an L{IReactorUNIXDatagram}.
    @param path: the socket's file-system path.
    @param onMessage: called with each message's C{KEY=VALUE} dict; empty
        and oversized datagrams are not passed on.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        path: str,
        onMessage: Callable[[dict[str, str]], None],
        maxSize: int = MAX_DATAGRAM,
    ) -> None:
        self._reactor = reactor
        self.path = path
        self._onMessage = onMessage
        self.maxSize = maxSize
        self._port: Optional[Any] = None

    def start(self) -> None:
        """
        Bind the socket (replacing a stale socket file left at C{path}).

        @raise FileExistsError: if something other than a socket is there.
        @raise twisted.internet.error.CannotListenError: if it cannot bind.
        """
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            os.unlink(self.path)
        # One byte more than the limit, to tell a datagram of exactly
        # maxSize from a larger one the kernel truncated.
        self._port = self._reactor.listenUNIXDatagram(
            self.path, _NotifyProtocol(self), maxPacketSize=self.maxSize + 1, mode=0o600
        )

    def _received(self, datagram: bytes) -> None:
        if len(datagram) > self.maxSize:
            self.log.warn(
                "ignoring a notification over {limit} bytes on {path}",
                limit=self.maxSize,
                path=self.path,
            )
            return
        state = parseNotifyMessage(datagram)
        if not state:
            return
        try:
            self._onMessage(state)
        except Exception:
            self.log.failure("notification handler failed")

    def stop(self) -> Deferred:
        """
        Stop listening and remove the socket file.

        @return: a Deferred that fires when done.
        """
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addBoth(self._removeFile)

    def _removeFile(self, result: Any) -> Any:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return result
