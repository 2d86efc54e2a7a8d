"""
Configuration: a TOML file to validated, frozen config values.

L{loadConfig} reads a file and L{parseConfig} parses text.  Both validate the
whole document before returning and raise one L{ConfigError} listing every
problem found, each naming the file, the dotted key and what is wrong::

    tree.toml: daemons.store.listen: invalid endpoint string 'tcp:x': ...

The results are frozen dataclasses, so a reload can compare old and new
L{DaemonConfig}s with C{==} to find the daemons that changed.  Nothing here
imports daemon classes or listens: endpoint strings are only parsed, against a
L{MemoryReactor}.  TOML keys are snake_case and the matching attributes
camelCase (C{backoff_initial} becomes C{backoffInitial}).  Relative paths are
resolved against the directory of the config file.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.testing import MemoryReactor

from dae_service.wire import DEFAULT_MAX_LENGTH

__all__ = [
    "ConfigProblem",
    "ConfigError",
    "DaemonConfig",
    "DaeConfig",
    "loadConfig",
    "parseConfig",
    "serverEndpointProblem",
    "DEFAULT_DAEMON_LISTEN",
    "DEFAULT_DRAIN_TIMEOUT",
    "MAX_WORKERS",
]

#: Where a daemon (not a command) listens unless its config says otherwise.
DEFAULT_DAEMON_LISTEN = "tcp:0:interface=127.0.0.1"

#: Seconds a stopping daemon (or pool worker) lets its connections finish
#: what they are doing before closing them: the Daemon class's own default.
DEFAULT_DRAIN_TIMEOUT = 5.0

#: The most workers one pool may have, whatever the config says: each is a
#: process, and a typo (workers = 1000) must not fork-bomb the host.
MAX_WORKERS = 256

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_CLASS_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_PLUGIN_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")
_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "KILL")
_NO_DEFAULT = ("daemon", "factory", "command", "requires")
_POOL_ENDPOINTS = ("tcp", "tcp6")


@dataclass(frozen=True)
class ConfigProblem:
    """
    One thing wrong with a config file.

    @ivar path: The config file, as it was named to L{loadConfig}.
    @ivar key: The dotted key (C{"daemons.store.listen"}), C{"line N"} for a
        TOML syntax error, or C{""} for a problem with the whole file.
    @ivar problem: What is wrong, for a human.
    """

    path: str
    key: str
    problem: str

    def __str__(self) -> str:
        if not self.key:
            return f"{self.path}: {self.problem}"
        return f"{self.path}: {self.key}: {self.problem}"


class ConfigError(Exception):
    """
    A config file is invalid.

    @ivar errors: Every L{ConfigProblem} found, in the order found.
    """

    def __init__(self, errors: list[ConfigProblem]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class _FrozenTable(tuple):
    """
    A TOML table inside C{settings}, frozen as sorted C{(key, value)} pairs.
    Never equal to an array of pairs, so thawing gives back what was frozen.
    """

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FrozenTable) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return _FrozenTable(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, _FrozenTable):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class DaemonConfig:
    """
    How to run and supervise one daemon: a C{[daemons.NAME]} table.

    Exactly one of C{daemon} (C{"package.module:Class"} or a plugin name,
    stored unresolved), C{factory} (C{"package.module:name"} of a Twisted
    protocol factory, or of a callable making one) and C{command} (an argv
    tuple) is set.  The parser
    always fills C{cwd}, C{logFile} and, for C{daemon}s, C{listen}; the other
    defaults are the field defaults below.  C{listen} is L{None} for a
    command that reports its port at runtime.  C{env} and C{settings} are
    sorted C{(key, value)} pairs; use L{envDict} and L{settingsDict}.
    C{tlsCert} and C{tlsKey} come from the optional C{tls} table.  Times are
    in seconds; C{giveUpAfter} counts quick failures in a row; C{maxLength}
    bounds one packet in bytes; C{workers}, or C{minWorkers} and
    C{maxWorkers} with C{idleTimeout}, make the daemon a pool (see
    L{isPool} and L{workerRange}).  C{drainTimeout} bounds how long a
    stopping daemon or worker lets its connections finish.  A key from
    C{[defaults]} is replaced, not merged, by the daemon's own.
    """

    name: str
    daemon: str | None = None
    command: tuple[str, ...] | None = None
    factory: str | None = None
    listen: str | None = None
    requires: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    inheritEnv: bool = True
    cwd: str | None = None
    restart: str = "always"
    backoffInitial: float = 0.1
    backoffMax: float = 30.0
    backoffFactor: float = 2.0
    jitter: float = 0.1
    stableAfter: float = 2.0
    giveUpAfter: int = 5
    startTimeout: float = 30.0
    stopSignal: str = "TERM"
    stopTimeout: float = 10.0
    logFile: str | None = None
    logMaxBytes: int = 10 * 1024 * 1024
    logBackups: int = 5
    maxLength: int = DEFAULT_MAX_LENGTH
    settings: tuple[tuple[str, Any], ...] = ()
    workers: int | None = None
    minWorkers: int | None = None
    maxWorkers: int | None = None
    idleTimeout: float = 60.0
    tlsCert: str | None = None
    tlsKey: str | None = None
    drainTimeout: float = DEFAULT_DRAIN_TIMEOUT

    @property
    def isPool(self) -> bool:
        """
        True when this daemon runs as a pool of worker processes behind one
        listening socket: C{workers}, C{min_workers} or C{max_workers} is set.
        """
        return any(n is not None for n in (self.workers, self.minWorkers, self.maxWorkers))

    def workerRange(self, cpus: int) -> tuple[int, int]:
        """
        The least and the most workers of a pool: C{(workers, workers)}, or
        C{min_workers} (default 1) and C{max_workers} (default C{cpus}, and
        never below the minimum), both capped at L{MAX_WORKERS}.

        @param cpus: how many CPUs this host has (C{os.cpu_count()}).
        """
        if self.workers is not None:
            return (min(self.workers, MAX_WORKERS),) * 2
        least = self.minWorkers or 1
        most = self.maxWorkers if self.maxWorkers is not None else max(cpus, least)
        return min(least, MAX_WORKERS), min(most, MAX_WORKERS)

    def envDict(self) -> dict[str, str]:
        """
        @return: The extra environment variables, as a new dict.
        """
        return dict(self.env)

    def settingsDict(self) -> dict[str, Any]:
        """
        @return: The daemon's opaque settings as new plain dicts and lists,
            which the caller may change freely.
        """
        return {key: _thaw(value) for key, value in self.settings}


@dataclass(frozen=True)
class DaeConfig:
    """
    A whole config file: the manager's C{[dae]} table and every daemon.

    @ivar path: The absolute path of the config file.
    @ivar listen: The manager's Common TCP server endpoint string.
    @ivar stateDir: The absolute path of the state directory.
    @ivar web: The web UI's server endpoint string, or L{None} for none.
    @ivar shutdownTimeout: Seconds to wait for every daemon to stop.
    @ivar daemons: Every L{DaemonConfig}, in file order.
    @ivar launcher: How python daemons are started: C{"spawn"} (a new
        interpreter each) or C{"forkserver"} (forked from a warm fork
        server, see L{dae_service.forkserver}).
    """

    path: str
    listen: str
    stateDir: str
    web: str | None = None
    shutdownTimeout: float = 30.0
    daemons: tuple[DaemonConfig, ...] = ()
    launcher: str = "spawn"

    @property
    def names(self) -> tuple[str, ...]:
        """
        The daemon names, in file order.
        """
        return tuple(daemon.name for daemon in self.daemons)

    def daemon(self, name: str) -> DaemonConfig:
        """
        @return: The daemon called C{name}.
        @raise KeyError: If there is none.
        """
        for daemon in self.daemons:
            if daemon.name == name:
                return daemon
        raise KeyError(name)

    def startOrder(self) -> tuple[str, ...]:
        """
        Each step takes the first daemon in file order whose requirements
        have all started, so file order is kept wherever requirements allow.

        @return: The daemon names in the order to start them.
        @raise ValueError: If some requirement can never be met (a cycle, or
            a name not in the config); L{parseConfig} never returns such a
            config.
        """
        started: list[str] = []
        waiting = list(self.daemons)
        while waiting:
            ready = [d for d in waiting if set(d.requires) <= set(started)]
            if not ready:
                names = ", ".join(d.name for d in waiting)
                raise ValueError(f"requirements of {names} are cyclic or missing")
            started.append(ready[0].name)
            waiting.remove(ready[0])
        return tuple(started)


def serverEndpointProblem(value: str) -> str | None:
    """
    Check a server endpoint string by parsing it against a L{MemoryReactor},
    which builds the endpoint without listening.

    @return: L{None} if C{value} is valid, else what is wrong with it.
    """
    try:
        serverFromString(MemoryReactor(), value)
    except Exception as e:
        return f"invalid endpoint string {value!r}: {e}"
    return None


class _Invalid(Exception):
    """
    Raised by a value checker with one or more problems.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = problems


_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"),
               (str, "string"), (list, "array"), (dict, "table"))


def _describe(value: object) -> str:
    kind = next((n for t, n in _TOML_TYPES if isinstance(value, t)),
                type(value).__name__)
    return kind if isinstance(value, (list, dict)) else f"{kind} {value!r}"


def _unknown(what: str, name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint}"


def _expect(value: object, kind: type, name: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise _Invalid(f"expected {name}, got {_describe(value)}")
    return value


def _string(value: object) -> str:
    return _expect(value, str, "a string")


def _boolean(value: object) -> bool:
    return _expect(value, bool, "a boolean")


def _path(value: object) -> str:
    if not _string(value):
        raise _Invalid("expected a path, got an empty string")
    return value  # resolved later, against the config directory


def _endpoint(value: object) -> str:
    text = _string(value)
    if text.split(":", 1)[0] == "systemd":
        raise _Invalid(
            "systemd: endpoints (socket activation) are for the manager's own "
            "[dae] listen and web: a daemon's child never inherits the sockets"
        )
    problem = serverEndpointProblem(text)
    if problem:
        raise _Invalid(problem)
    return value


def _managerEndpoint(value: object) -> str:
    """
    The manager's own endpoints may also be C{systemd:} sockets; only their
    syntax is checked here, so the config can be read outside systemd (by
    the C{dae} command, say).
    """
    from .sdnotify import isSystemdEndpoint, systemdEndpointProblem

    text = _string(value)
    if not isSystemdEndpoint(text):
        return _endpoint(value)
    problem = systemdEndpointProblem(text)
    if problem:
        raise _Invalid(problem)
    return value


def _number(accept: Callable[[float], bool], rule: str) -> Callable:
    def check(value: object) -> float:
        _expect(value, (int, float), "a number")
        if not (math.isfinite(value) and accept(value)):
            raise _Invalid(f"must be {rule}, got {value!r}")
        return float(value)
    return check


def _integer(minimum: int, maximum: float = math.inf) -> Callable:
    def check(value: object) -> int:
        if _expect(value, int, "an integer") < minimum:
            raise _Invalid(f"must be at least {minimum}, got {value!r}")
        if value > maximum:
            raise _Invalid(f"must be at most {maximum}, got {value!r}")
        return value
    return check


def _choice(*choices: str) -> Callable:
    def check(value: object) -> str:
        if _string(value) not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}; got {value!r}")
        return value
    return check


def _signal(value: object) -> str:
    name = _string(value).upper().removeprefix("SIG")
    if name not in _SIGNALS:
        raise _Invalid(f"expected one of {', '.join(_SIGNALS)}; got {value!r}")
    return name


def _daemonReference(value: object) -> str:
    pattern = _CLASS_REFERENCE if ":" in _string(value) else _PLUGIN_NAME
    if not pattern.match(value):
        raise _Invalid(f"expected 'package.module:Class' or a plugin name, got {value!r}")
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    items = _expect(value, list, f"an array of {what}")
    wrong = [f"expected {what}, got {_describe(item)}"
             for item in items if not isinstance(item, str)]
    if wrong:
        raise _Invalid(*wrong)
    return tuple(items)


def _command(value: object) -> tuple[str, ...]:
    argv = _strings(value, "strings")
    if not argv or not argv[0]:
        raise _Invalid("expected a program and its arguments, got an empty command")
    return argv


def _requires(value: object) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_strings(value, "daemon names")))  # drop repeats


def _environment(value: object) -> tuple[tuple[str, str], ...]:
    wrong = [f"{key!r} must be a string, got {_describe(item)}"
             for key, item in _expect(value, dict, "a table").items()
             if not isinstance(item, str)]
    wrong += [f"invalid variable name {key!r}" for key in value if not key or "=" in key]
    if wrong:
        raise _Invalid(*wrong)
    return tuple(sorted(value.items()))


def _settings(value: object) -> tuple[tuple[str, Any], ...]:
    return tuple(_freeze(_expect(value, dict, "a table")))


def _tls(value: object) -> tuple[str, str]:
    table = _expect(value, dict, "a table with 'cert' and 'key'")
    wrong = [_unknown("key", k, ["cert", "key"]) for k in table if k not in ("cert", "key")]
    for k in ("cert", "key"):
        try:
            _path(table[k])
        except KeyError:
            wrong.append(f"missing {k!r}")
        except _Invalid as e:
            wrong += [f"{k}: {problem}" for problem in e.problems]
    if wrong:
        raise _Invalid(*wrong)
    return table["cert"], table["key"]


_positive = _number(lambda x: x > 0, "greater than 0")

_DAE_KEYS: dict[str, Callable] = {
    "listen": _managerEndpoint,
    "state_dir": _path,
    "web": _managerEndpoint,
    "shutdown_timeout": _positive,
    "launcher": _choice("spawn", "forkserver"),
}

def _factoryReference(value: object) -> str:
    if not _CLASS_REFERENCE.match(_string(value)):
        raise _Invalid(f"expected 'package.module:name', got {value!r}")
    return value


_DAEMON_KEYS: dict[str, Callable] = {
    "daemon": _daemonReference,
    "factory": _factoryReference,
    "command": _command,
    "listen": _endpoint,
    "requires": _requires,
    "env": _environment,
    "inherit_env": _boolean,
    "cwd": _path,
    "restart": _choice("always", "on-failure", "never"),
    "backoff_initial": _positive,
    "backoff_max": _positive,
    "backoff_factor": _number(lambda x: x > 1, "greater than 1"),
    "jitter": _number(lambda x: 0 <= x <= 1, "between 0 and 1"),
    "stable_after": _positive,
    "give_up_after": _integer(1),
    "start_timeout": _positive,
    "stop_signal": _signal,
    "stop_timeout": _positive,
    "log_file": _path,
    "log_max_bytes": _integer(1),
    "log_backups": _integer(0),
    "max_length": _integer(1),
    "settings": _settings,
    "workers": _integer(1, MAX_WORKERS),
    "min_workers": _integer(1, MAX_WORKERS),
    "max_workers": _integer(1, MAX_WORKERS),
    "idle_timeout": _positive,
    "drain_timeout": _positive,
    "tls": _tls,
}


def _camel(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(word.title() for word in rest)


class _Parser:
    """
    Validates one parsed TOML document, collecting every problem.
    """

    def __init__(self, path: str, environ: Mapping[str, str] | None) -> None:
        self.path = path
        self.absolutePath = os.path.abspath(path)
        self.configDir = os.path.dirname(self.absolutePath)
        self.environ = os.environ if environ is None else environ
        self.problems: list[ConfigProblem] = []

    def report(self, key: str, problem: str) -> None:
        self.problems.append(ConfigProblem(self.path, key, problem))

    def resolve(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.configDir, path))

    def table(self, parent: dict, key: str, where: str) -> dict:
        value = parent.get(key, {})
        if isinstance(value, dict):
            return value
        self.report(where, f"expected a table, got {_describe(value)}")
        return {}

    def check(self, table: dict, checkers: dict, where: str) -> dict:
        values = {}
        for key, value in table.items():
            if key not in checkers:
                self.report(where, _unknown("key", key, list(checkers)))
                continue
            try:
                values[key] = checkers[key](value)
            except _Invalid as e:
                for problem in e.problems:
                    self.report(f"{where}.{key}", problem)
        return values

    def parse(self, document: dict) -> DaeConfig:
        for key in document:
            if key not in ("dae", "defaults", "daemons"):
                self.report(key, _unknown("table", key, ["dae", "defaults", "daemons"]))
        dae = self.check(self.table(document, "dae", "dae"), _DAE_KEYS, "dae")
        stateDir = (self.resolve(dae["state_dir"]) if "state_dir" in dae
                    else self.defaultStateDir())
        listen = dae.get("listen") or self.defaultListen(stateDir)
        defaults = self.table(document, "defaults", "defaults")
        for key in _NO_DEFAULT:
            if key in defaults:
                self.report(f"defaults.{key}", "cannot have a default; set it on each daemon")
        defaults = self.check({k: v for k, v in defaults.items() if k not in _NO_DEFAULT},
                              _DAEMON_KEYS, "defaults")
        tables = self.table(document, "daemons", "daemons")
        daemons = [self.daemon(name, table, defaults, stateDir)
                   for name, table in tables.items()]
        daemons = [daemon for daemon in daemons if daemon is not None]
        self.checkRequires(daemons, list(tables))
        if self.problems:
            raise ConfigError(self.problems)
        return DaeConfig(path=self.absolutePath, listen=listen, stateDir=stateDir,
                         web=dae.get("web"),
                         shutdownTimeout=dae.get("shutdown_timeout", 30.0),
                         daemons=tuple(daemons),
                         launcher=dae.get("launcher", "spawn"))

    def defaultStateDir(self) -> str:
        base = self.environ.get("XDG_STATE_HOME", "")
        if not os.path.isabs(base):  # the XDG spec says to ignore relative ones
            home = self.environ.get("HOME") or os.path.expanduser("~")
            base = os.path.join(home, ".local", "state")
        stem = os.path.splitext(os.path.basename(self.absolutePath))[0]
        stem = re.sub(r"[^\w.-]", "_", stem)
        digest = hashlib.sha1(os.fsencode(self.absolutePath)).hexdigest()[:8]
        return os.path.join(base, "dae", f"{stem}-{digest}")

    def defaultListen(self, stateDir: str) -> str:
        socket = quoteStringArgument(os.path.join(stateDir, "dae.sock"))
        listen = f"unix:address={socket}:mode=600:lockfile=1"
        problem = serverEndpointProblem(listen)
        if problem:
            self.report("dae.listen", f"default {problem}")
        return listen

    def daemon(self, name: str, table: object, defaults: dict,
               stateDir: str) -> DaemonConfig | None:
        where = f"daemons.{name}"
        if not _NAME.match(name):
            self.report(where, f"invalid daemon name {name!r}: use up to 64 "
                        "letters, digits, '_', '.' and '-'")
        if not isinstance(table, dict):
            self.report(where, f"expected a table, got {_describe(table)}")
            return None
        if sum(key in table for key in ("daemon", "factory", "command")) != 1:
            self.report(where, "give exactly one of 'daemon', 'factory' and 'command'")
        values = {**defaults, **self.check(table, _DAEMON_KEYS, where)}
        attributes = {_camel(key): value for key, value in values.items() if key != "tls"}
        if "tls" in values:
            attributes["tlsCert"], attributes["tlsKey"] = map(self.resolve, values["tls"])
        attributes["cwd"] = self.resolve(values.get("cwd", "."))
        attributes["logFile"] = (self.resolve(values["log_file"]) if "log_file" in values
                                 else os.path.join(stateDir, "logs", f"{name}.log"))
        if "listen" not in values and "command" not in table:
            attributes["listen"] = DEFAULT_DAEMON_LISTEN
        daemon = DaemonConfig(name=name, **attributes)
        self.checkCombination(where, daemon, "drain_timeout" in values)
        return daemon

    def checkCombination(self, where: str, daemon: DaemonConfig, drainGiven: bool) -> None:
        if daemon.backoffInitial > daemon.backoffMax:
            self.report(f"{where}.backoff_initial",
                        f"must not exceed backoff_max ({daemon.backoffMax})")
        if daemon.command is not None:
            for key, value in [("workers", daemon.workers), ("min_workers", daemon.minWorkers),
                               ("max_workers", daemon.maxWorkers), ("tls", daemon.tlsCert)]:
                if value is not None:
                    self.report(f"{where}.{key}", "needs 'daemon' or 'factory', not 'command'")
        elif daemon.isPool and daemon.listen is not None:
            kind = daemon.listen.split(":", 1)[0].strip().lower()
            if kind not in _POOL_ENDPOINTS:
                self.report(f"{where}.listen",
                            f"a pool listens on 'tcp:' or 'tcp6:', not {kind + ':'!r}")
        if drainGiven and daemon.drainTimeout >= daemon.stopTimeout:
            self.report(f"{where}.drain_timeout",
                        f"must be less than stop_timeout ({daemon.stopTimeout})")
        if daemon.workers and (daemon.minWorkers or daemon.maxWorkers):
            self.report(f"{where}.workers",
                        "cannot be combined with min_workers or max_workers")
        if (daemon.minWorkers or 1) > (daemon.maxWorkers or math.inf):
            self.report(f"{where}.min_workers",
                        f"must not exceed max_workers ({daemon.maxWorkers})")
        for key, file in [("cert", daemon.tlsCert), ("key", daemon.tlsKey)]:
            if file is not None and not os.path.isfile(file):
                self.report(f"{where}.tls.{key}", f"no such file {file!r}")

    def checkRequires(self, daemons: list[DaemonConfig], known: list[str]) -> None:
        graph = {}
        for daemon in daemons:
            where = f"daemons.{daemon.name}.requires"
            graph[daemon.name] = []
            for required in daemon.requires:
                if required == daemon.name:
                    self.report(where, "a daemon cannot require itself")
                elif required not in known:
                    self.report(where, _unknown("daemon", required, known))
                else:
                    graph[daemon.name].append(required)
        for cycle in _cycles(graph):
            self.report(f"daemons.{cycle[0]}.requires",
                        "dependency cycle " + " -> ".join(cycle))


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """
    @return: One cycle per back edge met by a depth-first search in file
        order, each as a list of names that ends with its first.
    """
    done: set[str] = set()
    path: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        path.append(name)
        for required in graph.get(name, ()):
            if required in path:
                found.append(path[path.index(required):] + [required])
            elif required not in done:
                visit(required)
        path.pop()
        done.add(name)

    for name in graph:
        if name not in done:
            visit(name)
    return found


def _syntaxProblem(path: str, text: str, error: tomllib.TOMLDecodeError) -> ConfigProblem:
    message = str(error)
    where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if where:
        line, detail = where[1], f"{message[:where.start()]} (column {where[2]})"
    else:
        line = str(text.count("\n") + 1)
        detail = message.replace("(at end of document)", "(at end of file)")
    return ConfigProblem(path, f"line {line}", f"invalid TOML: {detail}")


def parseConfig(text: str, path: str = "<config>",
                environ: Mapping[str, str] | None = None) -> DaeConfig:
    """
    Parse and validate a config document.  No I/O except checking that the
    TLS files it names exist.

    @param text: The TOML document.
    @param path: The file it came from; relative paths in it are resolved
        against this file's directory, and problems name it.
    @param environ: The environment for the default state directory
        (C{XDG_STATE_HOME}, C{HOME}); L{os.environ} if L{None}.
    @raise ConfigError: Listing every problem, if there are any.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntaxProblem(path, text, e)]) from None
    return _Parser(path, environ).parse(document)


def loadConfig(path: str, environ: Mapping[str, str] | None = None) -> DaeConfig:
    """
    Read, parse and validate the config file at C{path}.

    @param environ: See L{parseConfig}.
    @raise ConfigError: If the file cannot be read, is not UTF-8, or is
        invalid; every problem is listed.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([ConfigProblem(path, "", f"cannot read: {e.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(path, f"line {line}", "not valid UTF-8")]) from None
    return parseConfig(text, path, environ)
