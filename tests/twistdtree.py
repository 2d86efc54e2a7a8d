"""
Starting real dae trees for the integration tests: a real C{twistd -n dae}
process with real child processes, reached over real sockets (a UNIX socket
for the manager by default, loopback TCP for the daemons).

A L{TwistdTree} belongs to one Trial test: it writes the TOML config into
the test's temporary directory (the state directory and the manager's UNIX
socket go to a short one under /tmp: socket paths are limited to 108
bytes), spawns twistd with C{reactor.spawnProcess},
learns the registry through the manager's own C{subscribe}/C{list} (so
waiting for a state is driven by the manager's C{changed} events, never by
sleeping), and tears everything down in C{addCleanup}: SIGTERM to the
manager, SIGKILL after a bound, then SIGKILL to any child it ever learned
of that is still alive, so a failing test never leaks processes.

L{RawClient} is a byte-level client for sending exactly the bytes a test
wants (coalesced, split, reset, half-closed) and seeing exactly the bytes
that come back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal as signalModule
import socket
import sys
import tempfile
from typing import Any, Callable, Iterable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure

from dae_service import Guest

__all__ = [
    "REPO_ROOT",
    "TwistdTree",
    "RawClient",
    "connectRaw",
    "freePort",
    "renderConfig",
    "processState",
    "waitForProcessesGone",
    "withTimeout",
    "until",
    "OneRequestClient",
]

#: The repository root: twistd runs there, so that C{tests.*} and the
#: C{twisted/plugins} drop-in are importable by the manager and its children.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Bytes of twistd's own stdout/stderr kept for failure messages.
_MAX_OUTPUT = 64 * 1024

#: Seconds the manager gets to stop after SIGTERM in the cleanup before
#: SIGKILL (its children's default stop timeout is 10 s; ours are quick).
_CLEANUP_TERM_TIMEOUT = 15.0
_CLEANUP_KILL_TIMEOUT = 5.0


def withTimeout(d: Deferred, seconds: float, reactor: Any, what: str) -> Deferred:
    """
    Bound C{d}: after C{seconds} it is cancelled and fails with an
    C{AssertionError} saying what was awaited.
    """

    def timedOut(result: Any, timeout: float) -> Any:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    return d.addTimeout(seconds, reactor, onTimeoutCancel=timedOut)


def until(predicate: Callable[[], bool], timeout: float = 5.0, reactor: Any = None) -> Deferred:
    """
    Poll C{predicate} every 10 ms, at most C{timeout} seconds: a bounded
    wait for something another process or socket does, not a race sleep.
    """
    if reactor is None:
        from twisted.internet import reactor
    d: Deferred = Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        if predicate():
            d.callback(None)
        elif reactor.seconds() > deadline:
            d.errback(AssertionError(f"{predicate} still false after {timeout} s"))
        else:
            reactor.callLater(0.01, check)

    check()
    return d


class OneRequestClient(Protocol):
    """
    Sends one request and collects the whole answer until the server
    closes; C{done} fires with it.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.data)


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
    closed).  Only for the few endpoints whose port a test must know before
    the process starts.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _tomlValue(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string without \u escapes of non-ASCII (TOML forbids
        # surrogates) is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))} = {_tomlValue(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def renderConfig(dae: dict, daemons: dict) -> str:
    """
    The TOML text of a config: the C{[dae]} table and one
    C{[daemons.NAME]} table per item of C{daemons} (in order).
    """
    lines = ["[dae]"]
    lines += [f"{key} = {_tomlValue(value)}" for key, value in dae.items()]
    for name, table in daemons.items():
        lines += ["", f"[daemons.{name}]"]
        lines += [f"{key} = {_tomlValue(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def processState(pid: int) -> Optional[str]:
    """
    The state letter of process C{pid} from C{/proc/<pid>/stat} (C{"Z"} for
    a zombie), or L{None} if there is no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses.
    return stat[stat.rindex(b")") + 2 :].split(b" ", 1)[0].decode("ascii")


def _sleep(reactor: Any, seconds: float) -> Deferred:
    d: Deferred = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@inlineCallbacks
def waitForProcessesGone(
    reactor: Any, pids: Iterable[int], timeout: float, zombieIsGone: bool = False
):
    """
    Poll C{/proc} every 50 ms, at most C{timeout} seconds, until none of
    C{pids} is running (bounded wait for processes that are not our
    children, so there is nothing to be told of).

    @param zombieIsGone: count a zombie (exited, not yet reaped by whoever
        its parent now is) as gone.
    @return: a Deferred firing with C{{pid: state}} of those still there
        when it gave up (empty if all went).
    """
    pids = list(pids)
    deadline = reactor.seconds() + timeout

    def remaining() -> dict:
        left = {}
        for pid in pids:
            state = processState(pid)
            if state is None or (zombieIsGone and state == "Z"):
                continue
            left[pid] = state
        return left

    left = remaining()
    while left and reactor.seconds() < deadline:
        yield _sleep(reactor, 0.05)
        left = remaining()
    return left


class _TwistdProtocol(ProcessProtocol):
    """
    Records twistd's output (bounded) and tells waiters how it ended.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Optional[tuple] = None
        self._exitWaiters: list[Deferred] = []
        self._exitHooks: list[Callable[[tuple], None]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output = (self.output + data)[-_MAX_OUTPUT:]

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        self.ended = (getattr(value, "exitCode", None), getattr(value, "signal", None))
        hooks, self._exitHooks = self._exitHooks, []
        for hook in hooks:
            hook(self.ended)
        waiters, self._exitWaiters = self._exitWaiters, []
        for d in waiters:
            d.callback(self.ended)

    def whenExited(self) -> Deferred:
        """
        @return: a Deferred firing with C{(exitCode, signal)}; cancelling it
            just stops waiting.
        """

        def cancel(d: Deferred) -> None:
            if d in self._exitWaiters:
                self._exitWaiters.remove(d)

        d: Deferred = Deferred(cancel)
        if self.ended is not None:
            d.callback(self.ended)
        else:
            self._exitWaiters.append(d)
        return d

    def onExit(self, hook: Callable[[tuple], None]) -> Callable[[], None]:
        """
        Call C{hook((exitCode, signal))} when twistd exits (at once if it
        has).  @return: a callable that unregisters it.
        """
        if self.ended is not None:
            hook(self.ended)
            return lambda: None
        self._exitHooks.append(hook)

        def unregister() -> None:
            if hook in self._exitHooks:
                self._exitHooks.remove(hook)

        return unregister


class RawClient(Protocol):
    """
    A byte-level client: sends what it is told, keeps every byte received.

    @ivar received: everything received so far.
    @ivar lostReason: the Failure the connection was lost with, or L{None}
        while it is open.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.received = b""
        self.lostReason: Any = None
        self._waiters: list[tuple[Callable[[bytes], bool], Deferred]] = []
        self._lostWaiters: list[Deferred] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in list(self._waiters):
            predicate, d = entry
            if predicate(self.received):
                self._waiters.remove(entry)
                d.callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:
        self.lostReason = reason
        waiters, self._waiters = self._waiters, []
        for predicate, d in waiters:
            if predicate(self.received):
                d.callback(self.received)
            else:
                d.errback(
                    AssertionError(
                        f"connection lost ({reason.getErrorMessage()}) after receiving "
                        f"{self.received[:500]!r}"
                    )
                )
        lost, self._lostWaiters = self._lostWaiters, []
        for d in lost:
            d.callback(reason.value)

    def send(self, data: bytes) -> None:
        """
        Write C{data} the Twisted way (it leaves on a later reactor turn).
        """
        self.transport.write(data)

    def sendNow(self, data: bytes) -> None:
        """
        Write C{data} to the socket at once, bypassing the transport's
        buffer, so that it has left this process when this returns.  Only
        for a little data with nothing else waiting to be written.
        """
        sent = self.transport.getHandle().send(data)
        if sent != len(data):
            raise AssertionError(f"only {sent} of {len(data)} bytes sent at once")

    def halfClose(self) -> None:
        """
        Send FIN: the daemon reads end-of-input, we can still read.
        """
        self.transport.loseWriteConnection()

    def reset(self) -> None:
        """
        Close with a TCP reset (SO_LINGER 0), not a FIN.
        """
        import struct

        self.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.transport.abortConnection()

    def waitFor(
        self, predicate: Callable[[bytes], bool], timeout: float = 10, what: str = ""
    ) -> Deferred:
        """
        @return: a Deferred firing with everything received once
            C{predicate(received)} holds; failing if the connection is lost
            first or after C{timeout} seconds.
        """
        if predicate(self.received):
            return defer.succeed(self.received)
        d: Deferred = Deferred()
        entry = (predicate, d)
        self._waiters.append(entry)

        def forget(result: Any) -> Any:
            if entry in self._waiters:
                self._waiters.remove(entry)
            return result

        d.addBoth(forget)
        description = what or "the expected reply"
        return withTimeout(
            d, timeout, self.reactor, f"{description}; received so far {self.received[:500]!r}"
        )

    def waitForLines(self, count: int, timeout: float = 10) -> Deferred:
        """
        @return: a Deferred firing with the first C{count} complete lines
            (without their line feeds), as a list of bytes.
        """
        d = self.waitFor(lambda data: data.count(b"\n") >= count, timeout, f"{count} lines")
        return d.addCallback(lambda data: data.split(b"\n")[:count])

    def whenLost(self, timeout: float = 10) -> Deferred:
        """
        @return: a Deferred firing with the reason (an exception, e.g.
            C{ConnectionDone}) once the connection is closed by either side;
            failing after C{timeout} seconds.
        """
        if self.lostReason is not None:
            return defer.succeed(self.lostReason.value)
        d: Deferred = Deferred()
        self._lostWaiters.append(d)

        def forget(result: Any) -> Any:
            if d in self._lostWaiters:
                self._lostWaiters.remove(d)
            return result

        d.addBoth(forget)
        what = f"the connection to close; received {self.received[:500]!r}"
        return withTimeout(d, timeout, self.reactor, what)


def connectRaw(reactor: Any, port: int, host: str = "127.0.0.1") -> Deferred:
    """
    Connect a L{RawClient} to C{host:port}.
    """
    client = RawClient(reactor)
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=10)
    return endpoint.connect(Factory.forProtocol(lambda: client))


def _signalNumber(sig: Any) -> int:
    if isinstance(sig, int):
        return sig
    name = str(sig).upper()
    return int(getattr(signalModule, name if name.startswith("SIG") else "SIG" + name))


def _twistdArgv() -> list:
    """
    How to run twistd with this interpreter: the C{twistd} script next to
    it, else through C{twisted.scripts.twistd.run} (C{python -m
    twisted.scripts.twistd} does nothing: that module has no C{__main__}).
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.isfile(script):
        return [sys.executable, script]
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
    ]


def _allReady(entries: dict) -> bool:
    return bool(entries) and all(e["state"] == "ready" for e in entries.values())


class TwistdTree:
    """
    One real C{twistd -n dae} tree, owned by one Trial test.

    @ivar directory: the test's directory (under C{_trial_temp}) holding the
        config, C{twistd.log} and, once the test is over, a copy of the
        state directory: kept for post-mortems.
    @ivar entries: the latest entry of every daemon, by name, as pushed by
        the manager's C{changed} events.
    @ivar events: every entry pushed by a C{changed} event, in order.
    @ivar childPids: every child pid the manager ever reported.
    """

    def __init__(
        self,
        testCase: Any,
        daemons: dict,
        *,
        managerTCP: bool = False,
        managerPort: Optional[int] = None,
        stateDir: Optional[str] = None,
        reactor: Any = None,
        dae: Optional[dict] = None,
    ) -> None:
        """
        @param daemons: C{{name: {key: value}}}, the C{[daemons.NAME]}
            tables in TOML terms (C{"daemon": "tests.integration_daemons:X"}).
        @param managerTCP: listen on loopback TCP (with C{auth}) instead of a
            UNIX socket.
        @param managerPort: the manager's TCP port (implies C{managerTCP});
            a free one by default.
        @param stateDir: the state directory; by default a short one under
            the system's temporary directory (the manager binds UNIX
            sockets in it, whose paths must stay under 108 bytes), copied
            next to the log when the test ends.
        @param dae: more C{[dae]} keys (C{{"launcher": "forkserver"}}).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.testCase = testCase
        self.directory = os.path.abspath(testCase.mktemp())
        os.makedirs(self.directory)
        # UNIX socket paths must be short (108 bytes): not under _trial_temp.
        self._shortDirectory = tempfile.mkdtemp(prefix="dae-it-")
        self.configPath = os.path.join(self.directory, "tree.toml")
        self.stateDir = stateDir or os.path.join(self._shortDirectory, "state")
        self.logPath = os.path.join(self.directory, "twistd.log")
        if managerTCP or managerPort is not None:
            self.managerPort: Optional[int] = managerPort or freePort()
            self.listen = f"tcp:{self.managerPort}:interface=127.0.0.1"
            self.managerEndpoint = f"tcp:host=127.0.0.1:port={self.managerPort}"
        else:
            self.managerPort = None
            socketPath = os.path.join(self._shortDirectory, "dae.sock")
            # As config.py's default: the lock file lets a new manager take
            # over a socket file that a killed one left behind.
            self.listen = f"unix:address={socketPath}:mode=600:lockfile=1"
            self.managerEndpoint = f"unix:path={socketPath}"
        self.daeKeys = dict(dae or {})
        self.entries: dict = {}
        self.events: list = []
        self.childPids: set = set()
        self._entryWaiters: list = []
        self._guests: list = []
        self._raw: list = []
        self._protocol: Optional[_TwistdProtocol] = None
        self._process: Any = None
        self._pid: Optional[int] = None
        self._managerPids: set = set()
        #: Substrings of critical log lines a test expects (see _cleanup).
        self.expectedCritical: list = []
        self._manager: Optional[Guest] = None
        self.writeConfig(daemons)
        testCase.addCleanup(self._cleanup)

    # Config

    def writeConfig(self, daemons: dict) -> None:
        """
        (Re)write the config file with C{daemons}.
        """
        dae = {"listen": self.listen, "state_dir": self.stateDir, **self.daeKeys}
        text = renderConfig(dae, daemons)
        tmp = self.configPath + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.configPath)

    # The manager process

    @property
    def pid(self) -> Optional[int]:
        """
        The manager's (twistd's) pid.
        """
        return self._pid

    def signal(self, sig: Any) -> None:
        """
        Send C{sig} (C{"TERM"}, C{"SIGHUP"}, a number) to the manager.
        """
        if self._protocol is not None and self._protocol.ended is not None:
            raise ProcessLookupError(f"twistd (pid {self._pid}) has exited already")
        os.kill(self._pid, _signalNumber(sig))

    def whenExited(self) -> Deferred:
        """
        @return: a Deferred firing with C{(exitCode, signal)} once twistd has
            exited (one of them is L{None}).
        """
        return self._protocol.whenExited()

    def log(self) -> str:
        """
        Everything in twistd's log file so far.
        """
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    @inlineCallbacks
    def waitForLog(self, needle: str, timeout: float = 10):
        """
        Read twistd's log every 50 ms, at most C{timeout} seconds, until it
        contains C{needle}: a bounded wait for what the manager writes, when
        there is no event to wait for.

        @return: a Deferred firing with the log.
        """
        deadline = self.reactor.seconds() + timeout
        while True:
            log = self.log()
            if needle in log:
                return log
            if self.reactor.seconds() > deadline:
                raise AssertionError(
                    f"{needle!r} not in the log after {timeout:g} s\n{self.describe()}"
                )
            yield _sleep(self.reactor, 0.05)

    def token(self) -> str:
        """
        The manager's auth token, from C{<state_dir>/token}.
        """
        with open(os.path.join(self.stateDir, "token"), encoding="ascii") as f:
            return f.read().strip()

    def describe(self) -> str:
        """
        What a failure message should show: the entries and the log's tail.
        """
        output = self._protocol.output.decode("utf-8", "replace") if self._protocol else ""
        return (
            f"entries: {json.dumps(self.entries, sort_keys=True)}\n"
            f"twistd output: {output[-2000:]}\n"
            f"twistd.log tail:\n{self.log()[-4000:]}"
        )

    def spawn(self) -> None:
        """
        Start twistd (again, once the previous one has exited), without
        waiting for anything.
        """
        if self._protocol is not None and self._protocol.ended is None:
            raise RuntimeError("twistd is running already")
        self._protocol = _TwistdProtocol()
        argv = _twistdArgv() + [
            "-n",
            "--pidfile=",
            f"--logfile={self.logPath}",
            "dae",
            "--config",
            self.configPath,
        ]
        env = {k: v for k, v in os.environ.items() if k != "DAE_SECRET"}
        self._process = self.reactor.spawnProcess(
            self._protocol, argv[0], argv, env=env, path=REPO_ROOT
        )
        # Kept: the transport forgets its pid once the process is reaped.
        self._pid = self._process.pid
        self._managerPids.add(self._pid)

    @inlineCallbacks
    def start(self, until: Optional[Callable[[dict], bool]] = None, timeout: float = 30):
        """
        Spawn twistd (L{spawn}) and wait until C{until(entries)} holds (by
        default: every daemon is ready).

        @return: a Deferred firing with the entries.
        """
        if self._manager is not None:
            # The connection to a previous twistd.
            self._guests.remove(self._manager)
            yield withTimeout(self._manager.close(), 5, self.reactor, "a guest to close")
        self.spawn()
        # Bounded retries while the manager starts: every 50 ms, for as long
        # as the whole start may take.
        self._manager = Guest(
            self.reactor,
            self.managerEndpoint,
            connectTimeout=timeout,
            retryPolicy=lambda attempt: 0.05,
        )
        self._guests.append(self._manager)
        self._manager.addEventListener("changed", self._changed)
        connected: Deferred = Deferred()

        def settle(result: Any) -> None:
            if connected.called:
                return
            if isinstance(result, Failure):
                connected.errback(result)
            else:
                connected.callback(result)

        self._manager.whenConnected().addBoth(settle)

        def exited(ended: tuple) -> None:
            why = f"twistd exited {ended} before listening\n{self.describe()}"
            settle(Failure(AssertionError(why)))

        self._protocol.onExit(exited)
        yield connected
        # Subscribe first, then list: a change between the two is in the
        # list, and every change after it comes as an event.
        yield self._manager.call("subscribe")
        entries = yield self._manager.call("list")
        self._replaceEntries(entries)
        result = yield self.waitUntil(until or _allReady, timeout, "the tree to start")
        return result

    # The registry, as the manager tells it

    def _remember(self, entry: dict) -> None:
        if entry.get("pid") is not None:
            self.childPids.add(entry["pid"])
        for worker in entry.get("workers") or ():
            # A pool's worker processes are children of the manager too.
            if worker.get("pid") is not None:
                self.childPids.add(worker["pid"])

    def _replaceEntries(self, entries: list) -> None:
        self.entries = {e["name"]: e for e in entries}
        for e in entries:
            self._remember(e)
        self._checkWaiters()

    def _changed(self, args: list) -> None:
        entry = args[0]
        self.events.append(entry)
        if entry.get("state") == "removed":
            self.entries.pop(entry["name"], None)
        else:
            self.entries[entry["name"]] = entry
        self._remember(entry)
        self._checkWaiters()

    def _checkWaiters(self) -> None:
        for waiter in list(self._entryWaiters):
            predicate, d = waiter
            if predicate(self.entries):
                self._entryWaiters.remove(waiter)
                d.callback(dict(self.entries))

    def waitUntil(
        self, predicate: Callable[[dict], bool], timeout: float = 20, what: str = ""
    ) -> Deferred:
        """
        @return: a Deferred firing with a copy of the entries as soon as
            C{predicate(entries)} holds (checked on every C{changed} event);
            failing after C{timeout} seconds, or if twistd exits first.
        """
        if predicate(self.entries):
            return defer.succeed(dict(self.entries))
        d: Deferred = Deferred()
        waiter = (predicate, d)
        self._entryWaiters.append(waiter)

        def exited(ended: Any) -> None:
            if waiter in self._entryWaiters:
                self._entryWaiters.remove(waiter)
                why = f"twistd exited {ended} while waiting for {what or predicate}"
                d.errback(AssertionError(why))

        stopWatching = self._protocol.onExit(exited)

        def forget(result: Any) -> Any:
            if waiter in self._entryWaiters:
                self._entryWaiters.remove(waiter)
            stopWatching()
            return result

        d.addBoth(forget)

        def timedOut(result: Any, seconds: float) -> Any:
            raise AssertionError(
                f"timed out after {seconds:g} s waiting for {what or predicate}\n{self.describe()}"
            )

        return d.addTimeout(timeout, self.reactor, onTimeoutCancel=timedOut)

    def waitForEntry(
        self, name: str, predicate: Callable[[dict], bool], timeout: float = 20, what: str = ""
    ) -> Deferred:
        """
        Like L{waitUntil}, for one daemon's entry; fires with that entry.
        """
        d = self.waitUntil(
            lambda entries: name in entries and predicate(entries[name]),
            timeout,
            what or f"{name} to change",
        )
        return d.addCallback(lambda entries: entries[name])

    # Clients

    def call(self, name: str, *args: Any, timeout: float = 20) -> Deferred:
        """
        Call a manager command on the tree's own (unauthenticated)
        connection.
        """
        return self._manager.call(name, *args, timeout=timeout)

    def managerGuest(self) -> Guest:
        """
        A new connection of its own to the manager (e.g. to C{auth} it).
        """
        guest = Guest(self.reactor, self.managerEndpoint, connectTimeout=10, timeout=20)
        self._guests.append(guest)
        return guest

    def daemonGuest(self, name: str) -> Guest:
        """
        A L{Guest} of daemon C{name}, finding its port through the manager's
        C{lookup} before every connection (so it follows restarts).
        """

        def resolve() -> Deferred:
            return self.call("lookup", name).addCallback(
                lambda entry: f"tcp:host=127.0.0.1:port={entry['port']}"
            )

        guest = Guest(self.reactor, resolve, connectTimeout=10, timeout=20)
        self._guests.append(guest)
        return guest

    @inlineCallbacks
    def connectRaw(self, name: Optional[str] = None, port: Optional[int] = None):
        """
        A L{RawClient} connected to daemon C{name} (its port from
        C{lookup}), or to C{port} on 127.0.0.1; closed when the test ends.
        """
        if port is None:
            entry = yield self.call("lookup", name)
            port = entry["port"]
        client = yield connectRaw(self.reactor, port)
        self._raw.append(client)
        return client

    # Teardown

    def _ours(self, pid: int) -> bool:
        """
        Is C{pid} still a child of this tree (and not some later process
        that reused the number)?
        """
        state = processState(pid)
        if state is None or state == "Z":
            return False
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            return False
        return any(f"DAE_PID={manager}".encode() in environ for manager in self._managerPids)

    @inlineCallbacks
    def _cleanup(self):
        # Whatever fails here, the processes must still go: problems are
        # raised at the end.
        problems = []
        for client in self._raw:
            if client.lostReason is None and client.transport is not None:
                client.transport.abortConnection()
                try:
                    yield client.whenLost(5)
                except AssertionError as e:
                    problems.append(str(e))
        for guest in self._guests:
            try:
                yield withTimeout(guest.close(), 5, self.reactor, "a guest to close")
            except AssertionError as e:
                problems.append(str(e))
        if self._protocol is not None and self._protocol.ended is None:
            exited = self._protocol.whenExited()
            try:
                self.signal("TERM")
            except ProcessLookupError:
                pass
            try:
                yield withTimeout(exited, _CLEANUP_TERM_TIMEOUT, self.reactor, "twistd to exit")
            except AssertionError:
                problems.append(f"twistd ignored SIGTERM for {_CLEANUP_TERM_TIMEOUT:g} s")
                exited = self._protocol.whenExited()
                try:
                    self.signal("KILL")
                except ProcessLookupError:
                    pass
                try:
                    yield withTimeout(exited, _CLEANUP_KILL_TIMEOUT, self.reactor, "twistd to die")
                except AssertionError as e:
                    problems.append(str(e))
        leftovers = [pid for pid in self.childPids if self._ours(pid)]
        for pid in leftovers:
            try:
                # Each child leads a process group of its own.
                os.killpg(pid, signalModule.SIGKILL)
            except OSError:
                try:
                    os.kill(pid, signalModule.SIGKILL)
                except OSError:
                    pass
        self._keepState()
        shutil.rmtree(self._shortDirectory, ignore_errors=True)
        if leftovers:
            problems.append(f"child processes outlived the manager: {leftovers}")
        bad = [
            line
            for line in self.log().splitlines()
            if ("Unhandled error in Deferred" in line or "#critical]" in line)
            and not any(expected in line for expected in self.expectedCritical)
        ]
        if bad:
            lines = "\n".join(bad[:10])
            problems.append(f"the manager logged critical errors:\n{lines}\n(see {self.logPath})")
        if problems:
            raise AssertionError("\n".join(problems))

    def _keepState(self) -> None:
        """
        Copy a state directory that is about to be removed next to the log,
        sockets left out, for post-mortems.
        """
        if not self.stateDir.startswith(self._shortDirectory) or not os.path.isdir(self.stateDir):
            return

        def sockets(directory: str, names: list) -> list:
            def special(name: str) -> bool:
                path = os.path.join(directory, name)
                return not (os.path.isdir(path) or os.path.isfile(path))

            return [name for name in names if special(name)]

        shutil.copytree(
            self.stateDir, os.path.join(self.directory, "state"), ignore=sockets, dirs_exist_ok=True
        )
