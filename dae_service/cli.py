"""
The C{dae} command: talks Common TCP to a running manager.

    dae --config tree.toml status
    dae --config tree.toml restart store
    dae --config tree.toml call store set '["k", 1]'
    dae --config tree.toml logs store -f

The manager's endpoint comes from the same config file that C{twistd -n dae
--config FILE} runs (its C{[dae] listen}; for a TCP port of 0, the running
manager's C{state.json}), or from C{--manager ENDPOINT}, or from
C{$DAE_MANAGER} (set in every daemon the manager starts).  When the manager
listens on TCP, C{start}, C{stop}, C{restart} and C{reload} first send
C{auth} with the token from C{<state_dir>/token}; the token is never printed.

This module is the edge of the program: L{main} resolves the global reactor
(through L{task.react}) and L{run} does the work with the reactor, the
connection factory and the output callables it is given, so that the tests
can drive it in memory.

Exit codes: L{EXIT_OK} 0, L{EXIT_FAILED} 1 (a command failed: a fault, a
daemon that did not start), L{EXIT_USAGE} 2 (bad options or arguments, an
invalid config file), L{EXIT_UNREACHABLE} 3 (the manager is not running or
cannot be reached), L{EXIT_UNKNOWN} 4 (no daemon of that name).  C{status}
exits 0 whatever the daemons' states, as long as the manager answered.
"""

from __future__ import annotations

import getopt
import json
import math
import os
import re
import sys
import time
import traceback
from typing import Any, Callable, Mapping, NoReturn, Optional, Sequence

from twisted.internet import defer, error, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from .config import ConfigError, DaeConfig, loadConfig
from .errors import CallTimeout, Fault, GuestConnectionLost, TooManyPending
from .guest import GuestFactory
from .manager import clientEndpointFor

__all__ = [
    "main",
    "run",
    "Options",
    "CommandError",
    "connectOnce",
    "managerEndpointFor",
    "readProcessUsage",
    "formatStatus",
    "formatDuration",
    "formatBytes",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "EXIT_UNKNOWN",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNKNOWN = 4

#: Seconds to wait for each reply unless C{--timeout} says otherwise.  A
#: restart replies only once the daemon is ready again, which for a slow
#: daemon takes a while.
DEFAULT_TIMEOUT = 30.0

#: Lines of output C{logs} prints unless C{-n} says otherwise.
DEFAULT_LOG_LINES = 50

#: Manager commands that need C{auth} first when the manager is on TCP.
AUTH_COMMANDS = frozenset({"start", "stop", "restart", "reload"})

#: Columns of the C{status} table.
STATUS_COLUMNS = ("NAME", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "CPU", "RSS")

#: States in which a daemon's uptime is shown.
_RUNNING_STATES = frozenset({"ready", "starting"})

_MANAGER_NAME = "dae"


class CommandError(Exception):
    """
    The command cannot go on: C{message} goes to stderr as one line (after
    C{"dae: "}) and the process exits with C{code}.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Help(Exception):
    """
    C{--help} or C{--version} was given: print C{text} and exit 0.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# Options


_GLOBAL_FLAGS = [["json", "j", "Print JSON (one document per line) for scripts."]]


def _globalParameters(timeoutDefault: Optional[float]) -> list:
    return [
        ["config", "c", None, "The tree's config file, as given to twistd -n dae --config."],
        [
            "manager",
            "m",
            None,
            "The manager's client endpoint string (overrides the config), "
            "e.g. unix:path=/run/dae/dae.sock or tcp:host=127.0.0.1:port=7000.",
        ],
        ["timeout", "t", timeoutDefault, "Seconds to wait for each reply.", float],
    ]


class _BaseOptions(usage.Options):
    """
    C{--help} and C{--version} raise instead of printing, so that L{run}
    writes them through its own output.
    """

    def opt_help(self) -> None:
        """
        Display this help and exit.
        """
        raise _Help(str(self))

    def opt_version(self) -> None:
        """
        Display the version and exit.
        """
        from importlib import metadata

        try:
            version = metadata.version("dae_service")
        except metadata.PackageNotFoundError:
            version = "unknown"
        raise _Help(f"dae (dae_service) {version}")


class _CommandOptions(_BaseOptions):
    """
    A command's options: the global options are accepted after the command
    too (C{dae status --json}), and options may come after the arguments
    (C{dae logs store -f}); C{--} ends the options.
    """

    optFlags = _GLOBAL_FLAGS
    optParameters = _globalParameters(None)

    def getSynopsis(self) -> str:
        command = self.parent.subCommand if self.parent is not None else "COMMAND"
        return f"Usage: dae [options] {command} {self.synopsis}".rstrip()

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            opts, args = getopt.gnu_getopt(list(options), self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e))
        ordered: list[str] = []
        for opt, value in opts:
            if opt.startswith("--"):
                ordered.append(f"{opt}={value}" if opt[2:] + "=" in self.longOpt else opt)
            else:
                i = self.shortOpt.index(opt[1])
                takesValue = self.shortOpt[i + 1 : i + 2] == ":"
                ordered.extend([opt, value] if takesValue else [opt])
        super().parseOptions(ordered + ["--"] + args)

    def postOptions(self) -> None:
        _checkTimeout(self["timeout"])


class StatusOptions(_CommandOptions):
    """
    C{dae status [NAME]}.
    """

    synopsis = "[NAME]"
    longdesc = (
        "A table of every daemon: name, state, pid, port, uptime, restarts, CPU "
        "seconds and resident memory (read from /proc on this host); pool workers "
        "are listed under their pool.  With NAME, that daemon's details.  Exits 0 "
        "whatever the daemons' states; 3 if the manager cannot be reached."
    )

    def parseArgs(self, name: Optional[str] = None) -> None:
        self["name"] = name


class _ActionOptions(_CommandOptions):
    action = ""
    synopsis = "NAME|all"

    def parseArgs(self, name: str) -> None:
        self["name"] = name


class StartOptions(_ActionOptions):
    """
    C{dae start NAME|all}.
    """

    action = "start"
    longdesc = "Start a daemon (and what it requires); returns once it is ready."


class StopOptions(_ActionOptions):
    """
    C{dae stop NAME|all}.
    """

    action = "stop"
    longdesc = "Stop a daemon (and what requires it); returns once it has exited."


class RestartOptions(_ActionOptions):
    """
    C{dae restart NAME|all}.
    """

    action = "restart"
    longdesc = "Restart a daemon; returns once it is ready again."


class ReloadOptions(_CommandOptions):
    """
    C{dae reload}.
    """

    synopsis = ""
    longdesc = (
        "Re-read the config file (like SIGHUP): restart the daemons whose definition "
        "changed, start new ones, stop removed ones."
    )


class CallOptions(_CommandOptions):
    """
    C{dae call NAME COMMAND [JSON-ARGS]}.
    """

    synopsis = "NAME COMMAND [JSON-ARGS]"
    longdesc = (
        "Send COMMAND with JSON-ARGS (a JSON array, default []) to daemon NAME "
        "(found through the manager) and print the reply as JSON.  NAME 'dae' is "
        "the manager itself.  A fault is printed on stderr and exits 1."
    )
    optParameters = _globalParameters(None) + [
        ["reply", None, None, "The reply packet's name, for a daemon that answers under another name."],
    ]

    def parseArgs(self, name: str, command: str, args: str = "[]") -> None:
        self["name"] = name
        self["command"] = command
        self["args"] = args

    def postOptions(self) -> None:
        super().postOptions()
        try:
            value = json.loads(self["args"])
        except ValueError as e:
            raise usage.UsageError(f"JSON-ARGS is not valid JSON ({e}): {self['args']}")
        if not isinstance(value, list):
            raise usage.UsageError(
                f"JSON-ARGS must be a JSON array, like '[\"k\", 1]' or '[]'; got {self['args']}"
            )
        self["arguments"] = value


class LogsOptions(_CommandOptions):
    """
    C{dae logs NAME [-n N] [-f]}.
    """

    synopsis = "NAME"
    longdesc = (
        "Print the last lines of a daemon's output (stdout, stderr and the "
        "manager's notes about it).  With -f, keep printing new lines as the "
        "manager pushes them, until interrupted."
    )
    optFlags = _GLOBAL_FLAGS + [["follow", "f", "Keep printing new lines as they come."]]
    optParameters = _globalParameters(None) + [
        ["lines", "n", DEFAULT_LOG_LINES, "How many of the last lines to print first.", int],
    ]

    def parseArgs(self, name: str) -> None:
        self["name"] = name

    def postOptions(self) -> None:
        super().postOptions()
        if self["lines"] < 0:
            raise usage.UsageError("--lines must be 0 or more")


def _checkTimeout(value: Optional[float]) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise usage.UsageError("--timeout must be a positive number of seconds")


class Options(_BaseOptions):
    """
    The command line of C{dae}.
    """

    synopsis = "Usage: dae [--config FILE | --manager ENDPOINT] [--json] [--timeout S] COMMAND [ARGS]"
    longdesc = (
        "Control a running dae manager (twistd -n dae --config FILE) over Common TCP.  "
        "Exit codes: 0 ok; 1 a command failed; 2 usage error or invalid config; "
        "3 the manager cannot be reached; 4 no daemon of that name."
    )
    optFlags = _GLOBAL_FLAGS
    optParameters = _globalParameters(DEFAULT_TIMEOUT)
    subCommands = [
        ("status", None, StatusOptions, "Every daemon's state, pid, port, uptime, restarts, CPU, RSS"),
        ("start", None, StartOptions, "Start NAME (or all) and wait until ready"),
        ("stop", None, StopOptions, "Stop NAME (or all) and wait until exited"),
        ("restart", None, RestartOptions, "Restart NAME (or all) and wait until ready"),
        ("reload", None, ReloadOptions, "Re-read the config file"),
        ("call", None, CallOptions, "Send a command to a daemon and print the reply"),
        ("logs", None, LogsOptions, "Print a daemon's recent output (-f: follow)"),
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("no command given")
        _checkTimeout(self["timeout"])

    def setting(self, key: str) -> Any:
        """
        A global option's value: given after the command, else before it.
        """
        if key == "json":
            return bool(self["json"] or self.subOptions["json"])
        value = self.subOptions[key]
        return self[key] if value is None else value


# Finding and reaching the manager


_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def _fixedPort(listen: str) -> Optional[int]:
    """
    The port a TCP or TLS server endpoint string binds, if fixed (not 0).
    """
    parts = _UNESCAPED_COLON.split(listen)
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        candidate = value if sep and key == "port" else (key if not sep else None)
        if candidate is not None:
            try:
                port = int(candidate)
            except ValueError:
                return None
            return port or None
    return None


def _isLocal(endpoint: str) -> bool:
    """
    Does a client endpoint string reach this host (a UNIX socket, or TCP
    to a loopback address)?
    """
    parts = _UNESCAPED_COLON.split(endpoint)
    if parts[0] == "unix":
        return True
    if parts[0] not in ("tcp", "tcp6", "ssl", "tls"):
        return False
    host = next(
        (p.partition("=")[2] for p in parts[1:] if p.startswith("host=")),
        parts[1] if len(parts) > 1 and "=" not in parts[1] else "",
    ).replace("\\:", ":")
    return host in ("localhost", "::1") or host.startswith("127.")


def _processExists(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def managerEndpointFor(config: DaeConfig, how: str = "") -> str:
    """
    The client endpoint string of the manager that runs C{config}: from its
    C{listen} when that is a UNIX socket or a fixed port, else (TCP port 0)
    from the running manager's C{state.json}.

    @param how: how to start the manager, for the error message.
    @raise CommandError: (L{EXIT_UNREACHABLE}) when the state file does not
        say where a running manager listens.
    """
    listen = config.listen
    if listen.startswith("unix:"):
        return clientEndpointFor(listen, None)
    port = _fixedPort(listen)
    if port is not None:
        return clientEndpointFor(listen, port)
    path = os.path.join(config.stateDir, "state.json")
    notRunning = f"the manager is not running (no endpoint in {path}){how}"
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        raise CommandError(EXIT_UNREACHABLE, notRunning)
    manager = state.get("manager") if isinstance(state, dict) else None
    if not isinstance(manager, dict) or not manager.get("endpoint"):
        raise CommandError(EXIT_UNREACHABLE, notRunning)
    if "pid" in manager and not _processExists(manager["pid"]):
        raise CommandError(
            EXIT_UNREACHABLE, f"the manager is not running (pid {manager['pid']} is gone){how}"
        )
    return str(manager["endpoint"])


class _Connection:
    """
    One Common TCP connection made by L{connectOnce}: C{call} and
    C{addEventListener} as L{GuestProtocol}'s, and C{close}.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def call(self, name: str, *args: Any, timeout: Optional[float] = None, reply: Optional[str] = None) -> Deferred:
        return self.protocol.call(name, *args, timeout=timeout, reply=reply)

    def addEventListener(self, name: str, listener: Callable[..., Any]) -> None:
        self.protocol.addEventListener(name, listener)

    def whenDisconnected(self) -> Deferred:
        return self.protocol.whenDisconnected()

    def close(self) -> Deferred:
        if self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
        return self.protocol.whenDisconnected()


#: The longest path a UNIX socket address holds (C{sun_path} less its NUL).
UNIX_PATH_MAX = 107


def _unixPathProblem(endpoint: str) -> Optional[str]:
    """
    Why a C{unix:} client endpoint string cannot be connected to, if its
    path is too long for a socket address.
    """
    parts = _UNESCAPED_COLON.split(endpoint)
    if parts[0] != "unix":
        return None
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key == "path":
            path = (value if sep else key).replace("\\:", ":")
            size = len(os.fsencode(path))
            if size > UNIX_PATH_MAX:
                return f"the socket path is {size} bytes, longer than a UNIX socket allows ({UNIX_PATH_MAX})"
            return None
    return None


def connectOnce(reactor: Any, endpoint: str, timeout: float) -> Deferred:
    """
    Connect to a Common TCP endpoint once (no retries: a command line tool
    should say at once that nothing listens there).

    @param timeout: seconds for the connection and, then, for each reply.
    @return: a Deferred of a connection with C{call}, C{addEventListener}
        and C{close}; failing with L{CommandError} (L{EXIT_USAGE}) for an
        invalid endpoint string, or with the connection error.
    """
    try:
        client = clientFromString(reactor, endpoint)
    except (ValueError, TypeError, KeyError) as e:
        return defer.fail(CommandError(EXIT_USAGE, f"invalid endpoint {endpoint!r}: {e}"))
    problem = _unixPathProblem(endpoint)
    if problem:
        # Twisted's UNIX connector fails with a TypeError inside the reactor
        # for such a path and never reports it: the call would only time out.
        return defer.fail(CommandError(EXIT_UNREACHABLE, f"cannot connect to {endpoint}: {problem}"))
    d = client.connect(GuestFactory(reactor, timeout=timeout))

    def timedOut(result: Any, seconds: float) -> Any:
        # Cancelling a connection attempt fails with ConnectingCancelledError.
        raise error.TimeoutError(string=f"no connection within {seconds:g} s")

    d.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)
    return d.addCallback(_Connection)


_CONNECT_ERRORS = (
    error.ConnectError,
    error.ConnectingCancelledError,
    error.TimeoutError,
    defer.TimeoutError,
    defer.CancelledError,
    GuestConnectionLost,
    OSError,
)


# Reading /proc


def readProcessUsage(pid: int, procRoot: str = "/proc") -> Optional[dict]:
    """
    CPU time and resident memory of process C{pid} on this host.

    @return: C{{"cpu": seconds (user + system), "rss": bytes or None}}, or
        L{None} if the process cannot be read (gone, or not ours to see).
    """
    try:
        with open(os.path.join(procRoot, str(pid), "stat"), "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        # "pid (comm) S ppid ...": comm may hold spaces and parentheses;
        # after it, field 3 (state) is fields[0], utime (14) fields[11],
        # stime (15) fields[12].
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
    except (ValueError, IndexError):
        return None
    cpu = ticks / os.sysconf("SC_CLK_TCK")
    rss = None
    try:
        with open(os.path.join(procRoot, str(pid), "status"), "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    value, _, unit = line[len(b"VmRSS:") :].strip().partition(b" ")
                    rss = int(value) * (1024 if unit.strip().lower() == b"kb" else 1)
                    break
    except (OSError, ValueError):
        pass
    return {"cpu": cpu, "rss": rss}


# Formatting


def formatDuration(seconds: float) -> str:
    """
    C{42s}, C{5m07s}, C{3h05m}, C{2d04h}.
    """
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def formatBytes(count: Optional[int]) -> str:
    """
    C{512K}, C{12.3M}, C{1.2G}; C{-} for unknown.
    """
    if count is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return f"{count // 1024}K"


def _formatCpu(cpu: Optional[float]) -> str:
    if cpu is None:
        return "-"
    return f"{cpu:.2f}s" if cpu < 60 else formatDuration(cpu)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _processCells(label: str, e: dict, now: float) -> list[str]:
    """
    A status row's cells for a daemon or a pool worker: its label, then
    state, pid, port, uptime, restarts, CPU, RSS.
    """
    return [
        label,
        _cell(e.get("state")),
        _cell(e.get("pid")),
        _cell(e.get("port")),
        _uptime(e, now),
        _cell(e.get("restarts")),
        _formatCpu(e.get("cpu")),
        formatBytes(e.get("rss")),
    ]


def _uptime(item: Mapping, now: float) -> str:
    started = item.get("started")
    if item.get("state") not in _RUNNING_STATES or not isinstance(started, (int, float)):
        return "-"
    return formatDuration(now - started / 1000)


def _withUsage(item: dict, usage: Callable[[int], Optional[dict]]) -> dict:
    """
    A copy of an entry (or worker) with C{cpu} and C{rss} from this host.
    """
    item = dict(item)
    pid = item.get("pid")
    measured = usage(pid) if isinstance(pid, int) and not isinstance(pid, bool) else None
    item["cpu"] = measured["cpu"] if measured else None
    item["rss"] = measured["rss"] if measured else None
    if isinstance(item.get("workers"), list):
        item["workers"] = [
            _withUsage(w, usage) if isinstance(w, dict) else w for w in item["workers"]
        ]
    return item


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def formatStatus(entries: list, now: float) -> str:
    """
    The C{status} table of C{entries} (with C{cpu} and C{rss} filled in, as
    by L{readProcessUsage}); pool workers indented under their pool, and a
    C{CONNS} column when there are any.

    @param now: seconds since the epoch, for uptimes.
    """
    pools = any(isinstance(e.get("workers"), list) and e["workers"] for e in entries)
    header = list(STATUS_COLUMNS) + (["CONNS"] if pools else [])
    rows = [header]
    for e in entries:
        workers = [w for w in e.get("workers") or () if isinstance(w, dict)]
        row = _processCells(_cell(e.get("name")), e, now)
        if pools:
            conns = [w.get("connections") for w in workers if isinstance(w.get("connections"), int)]
            row.append(str(sum(conns)) if conns else "-")
        rows.append(row)
        for i, w in enumerate(workers):
            # The pool's own index, as in list/status and /metrics.
            label = f"  worker {w.get('index', i)}"
            rows.append(_processCells(label, w, now) + [_cell(w.get("connections"))])
    return _table(rows)


def _formatDetails(details: Mapping, now: float) -> str:
    lines = []
    for key, value in details.items():
        if key in ("cpu", "rss", "workers"):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        lines.append([f"{key}:", _cell(value)])
    lines.append(["uptime:", _uptime(details, now)])
    lines.append(["cpu:", _formatCpu(details.get("cpu"))])
    lines.append(["rss:", formatBytes(details.get("rss"))])
    return _table(lines)


def _describeEntry(entry: Mapping) -> str:
    """
    One line for a daemon after an action: C{store: ready (pid 12, port 7011)}.
    """
    details = []
    if entry.get("pid") is not None:
        details.append(f"pid {entry['pid']}")
    if entry.get("port") is not None:
        details.append(f"port {entry['port']}")
    if entry.get("state") != "ready" and entry.get("reason"):
        details.append(str(entry["reason"]))
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{entry.get('name')}: {entry.get('state')}{suffix}"


def _changedEntries(before: Any, after: Any, exclude: str) -> list:
    """
    The entries of C{after} (a C{list} reply) whose state or pid differ
    from C{before}'s, other than C{exclude}'s.
    """
    old = {e.get("name"): e for e in before or () if isinstance(e, dict)}
    changed = []
    for e in after or ():
        if not isinstance(e, dict) or e.get("name") == exclude:
            continue
        previous = old.get(e.get("name"))
        if previous is None or (previous.get("state"), previous.get("pid")) != (e.get("state"), e.get("pid")):
            changed.append(e)
    return changed


def _formatRecord(record: Any) -> str:
    if not isinstance(record, list) or len(record) != 3:
        return str(record)
    when, stream, line = record
    if isinstance(when, (int, float)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
        stamp += f".{int(when * 1000) % 1000:03d}"
    else:
        stamp = str(when)
    return f"{stamp} {stream:<6} {line}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Running


class _OutputClosed(Exception):
    """
    Standard output was closed by its reader (C{dae logs -f | head}).
    """


def _stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Nobody reads any more: send the rest (and the flush at exit) to
        # /dev/null, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise _OutputClosed()


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


class _Session:
    """
    One run of the C{dae} command.
    """

    def __init__(
        self,
        reactor: Any,
        options: Options,
        connect: Optional[Callable[[str], Deferred]],
        out: Callable[[str], Any],
        environ: Mapping[str, str],
        processUsage: Callable[[int], Optional[dict]],
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.sub = options.subOptions
        self.out = out
        self.environ = environ
        self.processUsage = processUsage
        self.json = options.setting("json")
        self.timeout = options.setting("timeout")
        self.configPath = options.setting("config")
        if connect is None:
            connect = lambda endpoint: connectOnce(reactor, endpoint, self.timeout)
        self._connect = connect
        self._connections: list = []
        self._config: Optional[DaeConfig] = None
        self._managerEndpoint = ""
        self._authenticated = False

    # Plumbing

    def config(self) -> Optional[DaeConfig]:
        if self._config is None and self.configPath:
            try:
                self._config = loadConfig(self.configPath, self.environ)
            except ConfigError as e:
                raise CommandError(EXIT_USAGE, str(e).replace("\n", "\n  "))
        return self._config

    def _howToStart(self) -> str:
        if self.configPath:
            return f" (twistd -n dae --config {self.configPath})"
        return ""

    def managerEndpoint(self) -> str:
        endpoint = self.options.setting("manager")
        if endpoint:
            return endpoint
        config = self.config()
        if config is not None:
            return managerEndpointFor(config, self._howToStart())
        endpoint = self.environ.get("DAE_MANAGER")
        if endpoint:
            return endpoint
        raise CommandError(EXIT_USAGE, "give --config FILE or --manager ENDPOINT (dae --help)")

    async def connect(self, endpoint: str) -> Any:
        connection = await self._connect(endpoint)
        self._connections.append(connection)
        return connection

    async def manager(self) -> Any:
        endpoint = self._managerEndpoint = self.managerEndpoint()
        try:
            return await self.connect(endpoint)
        except _CONNECT_ERRORS:
            raise CommandError(
                EXIT_UNREACHABLE,
                f"cannot reach the manager at {endpoint}: is it running?{self._howToStart()}",
            )

    async def closeAll(self) -> None:
        connections, self._connections = self._connections, []
        for connection in connections:
            try:
                await defer.maybeDeferred(connection.close).addTimeout(5, self.reactor)
            except Exception:
                pass  # Leaving anyway: the process exit closes the socket.

    async def managerCall(self, manager: Any, command: str, *args: Any, name: Optional[str] = None) -> Any:
        """
        Call a manager command, turning its failures into L{CommandError}s:
        C{not_found} for C{name} is L{EXIT_UNKNOWN}, a lost connection
        L{EXIT_UNREACHABLE}, any other fault or a timeout L{EXIT_FAILED}.
        """
        try:
            return await manager.call(command, *args, timeout=self.timeout)
        except Fault as f:
            if f.code == "not_found" and name is not None:
                raise CommandError(EXIT_UNKNOWN, f"no daemon named {name!r}")
            if f.code == "unauthorized" and command in AUTH_COMMANDS and self.config() is None:
                raise CommandError(
                    EXIT_FAILED,
                    f"{command} needs the manager's token: give --config FILE "
                    "(the token is in its state directory)",
                )
            raise CommandError(EXIT_FAILED, f"{command} failed: {f.code}: {f.message}")
        except CallTimeout:
            raise CommandError(EXIT_FAILED, f"no reply to {command} within {self.timeout:g} s (--timeout)")
        except GuestConnectionLost:
            raise CommandError(
                EXIT_UNREACHABLE, f"lost the connection to the manager at {self._managerEndpoint}"
            )
        except TooManyPending as e:
            raise CommandError(EXIT_FAILED, f"{command} failed: {e}")

    async def authenticate(self, manager: Any) -> None:
        """
        Send C{auth} with the token from the state directory, once, when
        the manager is on TCP and the config (hence the token) is known.
        """
        if self._authenticated or self._managerEndpoint.startswith("unix:"):
            return
        config = self.config()
        if config is None:
            return  # managerCall explains if the manager insists.
        path = os.path.join(config.stateDir, "token")
        try:
            with open(path, encoding="ascii") as f:
                token = f.read().strip()
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise CommandError(EXIT_FAILED, f"cannot read the manager's token from {path}: {reason}")
        await self.managerCall(manager, "auth", token)
        self._authenticated = True

    def emit(self, text: str) -> None:
        self.out(text if text.endswith("\n") else text + "\n")

    # Commands

    async def execute(self) -> int:
        try:
            return await getattr(self, self.options.subCommand + "Command")()
        finally:
            await self.closeAll()

    def usage(self, pid: int) -> Optional[dict]:
        """
        CPU and RSS of a daemon's process, read here only when the manager
        is on this host (a UNIX socket or loopback): pids elsewhere mean
        nothing here.
        """
        if not _isLocal(self._managerEndpoint):
            return None
        return self.processUsage(pid)

    async def statusCommand(self) -> int:
        manager = await self.manager()
        name = self.sub["name"]
        now = self.reactor.seconds()
        if name is not None:
            details = _withUsage(await self.managerCall(manager, "status", name, name=name), self.usage)
            self.emit(_dumps(details) if self.json else _formatDetails(details, now))
            return EXIT_OK
        report = await self.managerCall(manager, "status")
        report = dict(report)
        report["daemons"] = [_withUsage(e, self.usage) for e in report.get("daemons") or []]
        self.emit(_dumps(report) if self.json else formatStatus(report["daemons"], now))
        return EXIT_OK

    async def _act(self, action: str) -> int:
        """
        C{start}, C{stop} or C{restart}; prints every daemon it affected
        (for one name: that daemon, then any other whose state or pid the
        action changed, e.g. the dependents a C{stop} stopped too).
        """
        name = self.sub["name"]
        manager = await self.manager()
        await self.authenticate(manager)
        if name == "all":
            reply = await self.managerCall(manager, action, name)
            entries = [e for e in reply if isinstance(e, dict)] if isinstance(reply, list) else []
            named = entries
        else:
            before = await self.managerCall(manager, "list")
            reply = await self.managerCall(manager, action, name, name=name)
            after = await self.managerCall(manager, "list")
            named = [reply] if isinstance(reply, dict) else []
            entries = named + _changedEntries(before, after, exclude=name)
        if self.json:
            self.emit(_dumps(entries))
        else:
            for entry in entries:
                self.emit(_describeEntry(entry))
        wanted = ("stopped", "exited", "failed") if action == "stop" else ("ready",)
        bad = [e for e in named if e.get("state") not in wanted]
        return EXIT_FAILED if bad or not named else EXIT_OK

    async def startCommand(self) -> int:
        return await self._act("start")

    async def stopCommand(self) -> int:
        return await self._act("stop")

    async def restartCommand(self) -> int:
        return await self._act("restart")

    async def reloadCommand(self) -> int:
        manager = await self.manager()
        await self.authenticate(manager)
        summary = await self.managerCall(manager, "reload")
        if self.json:
            self.emit(_dumps(summary))
            return EXIT_OK
        lines = [
            f"{what}: {', '.join(summary[what])}"
            for what in ("added", "removed", "changed")
            if isinstance(summary, dict) and summary.get(what)
        ]
        self.emit("\n".join(lines) if lines else "reloaded: nothing changed")
        return EXIT_OK

    async def callCommand(self) -> int:
        name, command, args = self.sub["name"], self.sub["command"], self.sub["arguments"]
        manager = await self.manager()
        if name == _MANAGER_NAME:
            if command in AUTH_COMMANDS:
                await self.authenticate(manager)
            connection = manager
        else:
            entry = await self.managerCall(manager, "lookup", name, name=name)
            entry = entry if isinstance(entry, dict) else {}
            port = entry.get("port")
            if entry.get("state") != "ready" or not port:
                why = f": {entry['reason']}" if entry.get("reason") else ""
                raise CommandError(EXIT_FAILED, f"{name} is not ready (state {entry.get('state')}{why})")
            endpoint = f"tcp:host=127.0.0.1:port={port}"
            try:
                connection = await self.connect(endpoint)
            except _CONNECT_ERRORS as e:
                raise CommandError(EXIT_FAILED, f"cannot reach {name} at {endpoint}: {e}")
        try:
            value = await connection.call(command, *args, timeout=self.timeout, reply=self.sub["reply"])
        except Fault as f:
            raise CommandError(EXIT_FAILED, f"{command} failed: {f.code}: {f.message}")
        except CallTimeout:
            raise CommandError(EXIT_FAILED, f"no reply to {command} within {self.timeout:g} s (--timeout)")
        except (GuestConnectionLost, TooManyPending) as e:
            raise CommandError(EXIT_FAILED, f"{command} failed: {e}")
        self.emit(_dumps(value))
        return EXIT_OK

    async def logsCommand(self) -> int:
        name = self.sub["name"]
        manager = await self.manager()
        follower = _LogPrinter(self.emit, self.json)
        follower.show(await self.managerCall(manager, "logs", name, self.sub["lines"], name=name))
        if not self.sub["follow"]:
            return EXIT_OK

        # Pushed by the manager as they come; runs until interrupted
        # (task.react stops on SIGINT) or until the manager goes away.
        lost = manager.whenDisconnected()
        manager.addEventListener(
            "log",
            lambda args: follower.show([args[1:]] if isinstance(args, list) and len(args) == 4 else []),
        )
        await self.managerCall(manager, "follow", name, name=name)
        await lost
        raise CommandError(EXIT_UNREACHABLE, "the manager went away")


class _LogPrinter:
    """
    Prints log records, and on later polls only those not printed yet:
    newer than the last printed time, or at that time and not printed.
    """

    def __init__(self, write: Callable[[str], None], asJSON: bool) -> None:
        self.write = write
        self.asJSON = asJSON
        self.lastTime: float = -math.inf
        self.atLastTime: list = []

    def show(self, records: Any, onlyNew: bool = False) -> None:
        fresh = []
        for record in records if isinstance(records, list) else []:
            when = record[0] if isinstance(record, list) and record else None
            if not isinstance(when, (int, float)):
                when = self.lastTime
            if onlyNew and (when < self.lastTime or (when == self.lastTime and record in self.atLastTime)):
                continue
            fresh.append(record)
            if when > self.lastTime:
                self.lastTime, self.atLastTime = when, []
            self.atLastTime.append(record)
        if fresh:
            format = _dumps if self.asJSON else _formatRecord
            self.write("\n".join(format(r) for r in fresh))


async def run(
    reactor: Any,
    argv: Optional[Sequence[str]] = None,
    *,
    connect: Optional[Callable[[str], Deferred]] = None,
    out: Optional[Callable[[str], Any]] = None,
    err: Optional[Callable[[str], Any]] = None,
    environ: Optional[Mapping[str, str]] = None,
    processUsage: Optional[Callable[[int], Optional[dict]]] = None,
) -> None:
    """
    Run the C{dae} command line C{argv} (without the program name).

    @param reactor: the reactor (L{IReactorTime}, and what the endpoints
        need).
    @param connect: C{connect(endpointString)} returns a Deferred of a
        connection with C{call(name, *args, reply=None)} (a Deferred of the
        reply value, as L{GuestProtocol.call}) and C{close()}; by default
        L{connectOnce}.
    @param out: writes text to standard output (L{sys.stdout} by default).
    @param err: writes text to standard error (L{sys.stderr} by default).
    @param environ: for C{$DAE_MANAGER} and the config's default state
        directory; L{os.environ} by default.
    @param processUsage: C{processUsage(pid)} returns a process's
        C{{"cpu": s, "rss": bytes}} or L{None}; L{readProcessUsage} by
        default.
    @raise SystemExit: with the exit code, unless it is 0.
    """
    out = _stdout if out is None else out
    err = _stderr if err is None else err
    environ = os.environ if environ is None else environ
    processUsage = readProcessUsage if processUsage is None else processUsage
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else list(argv))
    except _Help as h:
        try:
            out(h.text.rstrip("\n") + "\n")
        except _OutputClosed:
            pass
        return
    except usage.UsageError as e:
        err(f"dae: {e}\n(dae --help for usage)\n")
        raise SystemExit(EXIT_USAGE)
    try:
        code = await _Session(reactor, options, connect, out, environ, processUsage).execute()
    except CommandError as e:
        err(f"dae: {e.message}\n")
        code = e.code
    except _OutputClosed:
        code = EXIT_FAILED
    except Exception:
        err("dae: internal error:\n" + traceback.format_exc())
        code = EXIT_FAILED
    if code:
        raise SystemExit(code)


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """
    The C{dae} console script: run L{run} on the global reactor and exit
    with its code.
    """
    task.react(run, (argv,))
