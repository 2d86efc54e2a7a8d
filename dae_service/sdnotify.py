"""
The manager's side of systemd: it tells systemd, through the
C{NOTIFY_SOCKET} it was started with (C{Type=notify}), when the tree is up
(C{READY=1}), that it is still alive (C{WATCHDOG=1} every half
C{WATCHDOG_USEC}, when the unit has C{WatchdogSec=}), what it is doing
(C{STATUS=...}) and when it stops (C{STOPPING=1}).  Without
C{NOTIFY_SOCKET} in the environment it does nothing.

Socket activation needs no code here: Twisted's C{systemd:} server endpoint
(C{systemd:domain=INET:index=0}, or C{name=} a C{FileDescriptorName})
adopts a socket systemd passed, for the manager's C{listen} and for C{web}.
Twisted reads C{LISTEN_FDS} when C{twisted.internet.endpoints} is first
imported, so that parsing such an endpoint without systemd fails;
L{systemdEndpointProblem} checks one's syntax alone, for config
validation.

The other end (a foreign child's own C{NOTIFY_SOCKET}, kept by the manager)
is L{dae_service.notify}.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from typing import Any, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import _parse as _parseEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = [
    "SYSTEMD_VARIABLES",
    "SystemdNotifier",
    "notifyAddress",
    "formatNotifyMessage",
    "isSystemdEndpoint",
    "systemdEndpointProblem",
    "validSystemdEndpoint",
]

#: What systemd puts in a service's environment for this process alone: a
#: child given them would talk to systemd (or adopt sockets) in the
#: manager's name.  Drop them from children's environments.
SYSTEMD_VARIABLES = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)

#: Seconds between two C{STATUS=} updates at most (a burst of registry
#: changes sends one).
STATUS_DELAY = 1.0

#: The address families a C{systemd:} endpoint can name.
_DOMAINS = frozenset({"INET", "INET6", "UNIX"})

#: A C{FileDescriptorName}: up to 255 printable ASCII characters, no colon.
_FD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,255}")


def notifyAddress(value: Optional[str]) -> Optional[str]:
    """
    The address to send to for a C{NOTIFY_SOCKET} value: an absolute path,
    or an abstract socket name (C{@name} -> C{"\\0name"}).

    @return: L{None} for a missing or unusable value (e.g. C{vsock:}).
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def formatNotifyMessage(fields: Mapping[str, Any]) -> bytes:
    """
    C{{"READY": 1, "STATUS": "up"}} -> C{b"READY=1\\nSTATUS=up"}.

    @raise ValueError: for a key that is not C{[A-Z0-9_]+} or a value with a
        newline.
    """
    lines = []
    for key, value in fields.items():
        if not re.fullmatch(r"[A-Z0-9_]+", key):
            raise ValueError(f"not a notification key: {key!r}")
        text = str(value)
        if "\n" in text:
            raise ValueError(f"{key}: a value cannot hold a newline")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8")


def isSystemdEndpoint(value: str) -> bool:
    """
    Is C{value} a C{systemd:} server endpoint string?
    """
    return value.split(":", 1)[0] == "systemd"


def systemdEndpointProblem(value: str, inherited: Any = None) -> Optional[str]:
    """
    Check a C{systemd:} endpoint string's syntax: C{domain} one of C{INET},
    C{INET6}, C{UNIX}; exactly one of C{index} (a non-negative integer) or
    C{name} (a C{FileDescriptorName}); nothing else.  Positional arguments
    are taken in Twisted's order (domain, index, name).

    @param inherited: a L{twisted.python.systemd.ListenFDs} to check that
        the descriptor was really passed (at run time; config validation
        checks syntax only, so a config can be checked outside systemd).
    @return: L{None} if it is fine, else what is wrong.
    """
    try:
        args, kwargs = _parseEndpoint(value)
    except Exception as e:
        return f"invalid endpoint string {value!r}: {e}"
    if not args or args[0] != "systemd":
        return f"not a systemd: endpoint: {value!r}"
    positional = args[1:]
    if len(positional) > 3:
        return f"{value!r}: too many arguments"
    options = dict(zip(("domain", "index", "name"), positional))
    for key, item in kwargs.items():
        if key in options:
            return f"{value!r}: {key} given twice"
        options[key] = item
    unknown = sorted(set(options) - {"domain", "index", "name"})
    if unknown:
        return f"{value!r}: unknown option {unknown[0]!r} (expected domain, and index or name)"
    domain = options.get("domain")
    if domain not in _DOMAINS:
        return f"{value!r}: domain must be one of {', '.join(sorted(_DOMAINS))}, not {domain!r}"
    index, name = options.get("index"), options.get("name")
    if (index is None) == (name is None):
        return f"{value!r}: give exactly one of index= or name="
    if index is not None and not re.fullmatch(r"[0-9]+", index):
        return f"{value!r}: index must be a non-negative integer, not {index!r}"
    if name is not None and not _FD_NAME.fullmatch(name):
        return f"{value!r}: name must be a socket's FileDescriptorName, not {name!r}"
    if inherited is not None:
        if index is not None and int(index) >= len(inherited.inheritedDescriptors()):
            return f"{value!r}: systemd passed no socket with index {index}"
        if name is not None and name not in inherited.inheritedNamedDescriptors():
            return f"{value!r}: systemd passed no socket named {name!r}"
    return None


def validSystemdEndpoint(value: str) -> bool:
    """
    Is C{value} a syntactically valid C{systemd:} endpoint string?  (See
    L{systemdEndpointProblem} for what is wrong with one that is not.)
    """
    return systemdEndpointProblem(value) is None


class SystemdNotifier(Service):
    """
    Talks to systemd for the manager, when C{NOTIFY_SOCKET} is set:

      - L{ready}: C{READY=1} with C{MAINPID} and a C{STATUS} line, once;
        then C{STATUS=} again after registry changes (at most once a
        second);
      - C{WATCHDOG=1} every C{WATCHDOG_USEC}/2 from L{startService} on, if
        C{WATCHDOG_USEC} is set and C{WATCHDOG_PID} is unset or this
        process (the pings come from a reactor timer, so a blocked reactor
        stops them, which is the point);
      - L{stopping}: C{STOPPING=1} (also sent by L{stopService} if not yet).

    Sending never blocks: a message the socket cannot take at once is
    dropped and logged (systemd reads its socket promptly).

    @ivar enabled: whether there is a C{NOTIFY_SOCKET} to talk to.
    @ivar watchdogInterval: seconds between two pings, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        manager: Any,
        reactor: Any,
        environ: Optional[Mapping[str, str]] = None,
        pid: Optional[int] = None,
        statusDelay: float = STATUS_DELAY,
    ) -> None:
        """
        @param manager: the L{dae_service.manager.Dae} whose registry the
            C{STATUS} line summarizes, or L{None}.
        @param reactor: an L{IReactorTime}.
        @param environ: where C{NOTIFY_SOCKET} and C{WATCHDOG_*} are read
            (the process environment by default).
        @param pid: this process's pid (for C{WATCHDOG_PID}; tests).
        """
        self.manager = manager
        self.reactor = reactor
        self.environ = dict(os.environ if environ is None else environ)
        self.pid = os.getpid() if pid is None else pid
        self.statusDelay = statusDelay
        self.address = notifyAddress(self.environ.get("NOTIFY_SOCKET"))
        self.enabled = self.address is not None
        self.watchdogInterval = self._watchdogInterval()
        self.isReady = False
        self.isStopping = False
        self._socket: Optional[socket.socket] = None
        self._watchdog: Optional[LoopingCall] = None
        self._statusCall: Any = None
        self._unsubscribe: Any = None
        self._failing = False

    def _watchdogInterval(self) -> Optional[float]:
        if not self.enabled:
            return None
        try:
            usec = int(self.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        owner = self.environ.get("WATCHDOG_PID")
        if owner:
            try:
                if int(owner) != self.pid:
                    return None
            except ValueError:
                return None
        return usec / 2e6

    # Lifecycle

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        self._socket = sock
        if self.watchdogInterval is not None:
            self._watchdog = LoopingCall(self.notify, WATCHDOG=1)
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.watchdogInterval, now=True)
            self.log.info(
                "systemd watchdog: a ping every {interval:g} s", interval=self.watchdogInterval
            )

    def stopService(self) -> Deferred:
        super().stopService()
        if self.enabled and not self.isStopping:
            self.stopping()
        self._stopTimers()
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
        return succeed(None)

    def _stopTimers(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        if self._statusCall is not None and self._statusCall.active():
            self._statusCall.cancel()
        self._statusCall = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # Messages

    def notify(self, **fields: Any) -> bool:
        """
        Send one notification: C{notify(READY=1, STATUS="up")}.

        @return: whether it was sent (False without C{NOTIFY_SOCKET}, before
            L{startService}, or when the socket refused it).
        """
        if self._socket is None or self.address is None:
            return False
        data = formatNotifyMessage(fields)
        try:
            self._socket.sendto(data, self.address)
        except OSError as e:
            if not self._failing:
                self._failing = True
                self.log.warn(
                    "cannot notify systemd at {address}: {error}",
                    address=self.environ.get("NOTIFY_SOCKET"),
                    error=errno.errorcode.get(e.errno, str(e)) if e.errno else str(e),
                )
            return False
        if self._failing:
            self._failing = False
            self.log.info("systemd notifications go through again")
        return True

    def ready(self) -> None:
        """
        The tree is up (every daemon started, or given up on): C{READY=1},
        once.
        """
        if self.isReady or not self.enabled:
            return
        self.isReady = True
        self.notify(READY=1, MAINPID=self.pid, STATUS=self.status())
        self.log.info("told systemd the tree is ready")
        if self.manager is not None and self._unsubscribe is None and self.running:
            self._unsubscribe = self.manager.registry.subscribe(self._changed)

    def stopping(self) -> None:
        """
        The manager is stopping its tree: C{STOPPING=1}, once.
        """
        if self.isStopping or not self.enabled:
            return
        self.isStopping = True
        if self._statusCall is not None and self._statusCall.active():
            self._statusCall.cancel()
        self.notify(STOPPING=1, STATUS="stopping every daemon")

    def status(self) -> str:
        """
        One line for C{systemctl status}: C{"3 daemons: 2 ready, 1 failed"}.
        """
        if self.manager is None:
            return "running"
        counts: dict[str, int] = {}
        total = 0
        for entry in self.manager.registry:
            total += 1
            counts[entry.state] = counts.get(entry.state, 0) + 1
        parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda i: (i[0] != "ready", i[0])))
        noun = "daemon" if total == 1 else "daemons"
        return f"{total} {noun}: {parts}" if total else "no daemons"

    def _changed(self, entry: Any) -> None:
        if self.isStopping or (self._statusCall is not None and self._statusCall.active()):
            return
        self._statusCall = self.reactor.callLater(self.statusDelay, self._sendStatus)

    def _sendStatus(self) -> None:
        self._statusCall = None
        if not self.isStopping:
            self.notify(STATUS=self.status())
