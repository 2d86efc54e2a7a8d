"""
Tests for L{dae_service.cli}, the C{dae} command.

Most run L{run} against a real manager (L{Dae} with its L{ControlDaemon})
driven in memory: a L{FakeLauncher} plays the children, a
L{MemoryReactorClock} is the time, and the CLI's C{connect} seam hands out
L{dae_service.testing.connectDaemon} connections (to the control daemon, or
to an in-memory L{Store} for C{call}).  A few integration tests at the end
start a real C{twistd -n dae} tree and run the installed C{dae} console
script against it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Optional

from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dae_service import cli
from dae_service.cli import (
    EXIT_FAILED,
    EXIT_UNKNOWN,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    Options,
    formatBytes,
    formatDuration,
    formatStatus,
    managerEndpointFor,
    readProcessUsage,
)
from dae_service.config import loadConfig
from dae_service.examples.store import Store
from dae_service.launcher import FakeLauncher
from dae_service.loader import resolveClasses
from dae_service.manager import Dae
from dae_service.testing import connectDaemon

#: A pid no process has: above the largest pid_max Linux allows (2**22).
NO_SUCH_PID = 2**22 + 1

#: What the fake /proc reader says of the fake children.
USAGE = {1000: {"cpu": 1.5, "rss": 3 * 1024 * 1024}, 1001: {"cpu": 75.0, "rss": 512 * 1024}}


def writeConfig(testCase: Any, dae: str = "", extra: str = "") -> str:
    """
    Write a tree of C{store} and C{echo} (which requires it) into a new
    directory; its state directory is C{state} beside it.

    @param dae: more lines for the C{[dae]} table.
    @return: the config file's path.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "tree.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            f'[dae]\nstate_dir = "state"\n{dae}\n'
            '[daemons.store]\ndaemon = "dae_service.examples.store:Store"\n'
            '[daemons.echo]\ndaemon = "dae_service.examples.echo:Echo"\nrequires = ["store"]\n'
            f"{extra}"
        )
    return path


class Tree:
    """
    A manager of C{store} and C{echo}, in memory, both ready (store on
    port 7011 with pid 1000, echo on 7012 with pid 1001), and a C{connect}
    for the CLI reaching it.

    @ivar connections: every in-memory connection handed out.
    @ivar stores: the in-memory L{Store} behind each daemon port.
    """

    def __init__(self, testCase: Any, dae: str = "") -> None:
        self.path = writeConfig(testCase, dae)
        self.config = loadConfig(self.path)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(time.time())
        self.launcher = FakeLauncher()
        self.manager = Dae(
            self.config,
            resolveClasses(self.config),
            self.reactor,
            launcher=self.launcher,
            listeningPorts=lambda pid: [],
            environ={},
        )
        self.manager.startService()
        testCase.addCleanup(self.stop)
        self.launcher.ready(0, 7011)
        self.launcher.ready(1, 7012)
        self.stores = {7011: Store(), 7012: Store()}
        self.connections: list = []
        self.refuse = False
        self.managerEndpoint = managerEndpointFor(self.config)

    def connect(self, endpoint: str) -> defer.Deferred:
        """
        The CLI's C{connect}: the manager at its endpoint, a store at
        C{tcp:host=127.0.0.1:port=N}; anything else is refused.
        """
        if self.refuse:
            return defer.fail(error.ConnectionRefusedError())
        if endpoint == self.managerEndpoint:
            target = self.manager.control
        else:
            prefix = "tcp:host=127.0.0.1:port="
            port = int(endpoint[len(prefix) :]) if endpoint.startswith(prefix) else None
            if port not in self.stores:
                return defer.fail(error.ConnectionRefusedError())
            target = self.stores[port]
        connection = connectDaemon(target, self.reactor)
        self.connections.append(connection)
        return defer.succeed(connection)

    def stop(self) -> None:
        """
        Stop the manager, playing the children's exits.
        """
        self.manager.stopService()
        for i, p in enumerate(self.launcher.processes):
            if not p.exited:
                self.launcher.exit(i, signal=signal.SIGTERM)
        self.reactor.advance(60)


class Run:
    """
    One run of the CLI: what it wrote and how it ended.
    """

    def __init__(self, testCase: Any, reactor: Any, argv: list, connect: Any = None, environ: Optional[dict] = None, processUsage: Any = None) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.deferred = defer.ensureDeferred(
            cli.run(
                reactor,
                argv,
                connect=connect,
                out=self.out.append,
                err=self.err.append,
                environ={} if environ is None else environ,
                processUsage=processUsage or USAGE.get,
            )
        )
        self.testCase = testCase

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def code(self) -> int:
        """
        The exit code; the run must have ended.
        """
        results: list = []
        self.deferred.addBoth(results.append)
        self.testCase.assertTrue(results, "the command has not finished")
        result = results[0]
        self.deferred = defer.succeed(None)
        if isinstance(result, Failure):
            result.trap(SystemExit)
            return result.value.code
        return 0


class CommandTestsMixin:
    """
    Helpers for running the CLI against a L{Tree}.
    """

    def setUp(self) -> None:
        self.tree = Tree(self)

    def runCli(self, *argv: str, environ: Optional[dict] = None) -> Run:
        return Run(self, self.tree.reactor, ["--config", self.tree.path, *argv], self.tree.connect, environ)

    def runToEnd(self, *argv: str) -> tuple[int, str, str]:
        r = self.runCli(*argv)
        return r.code(), r.stdout, r.stderr


class OptionsTests(SynchronousTestCase):
    """
    The command line.
    """

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_globalOptions(self) -> None:
        """
        C{--config}, C{--manager}, C{--json} and C{--timeout} come before the
        command; C{--timeout} defaults to 30 seconds.
        """
        options = self.parse("-c", "t.toml", "--json", "status")
        self.assertEqual(options.subCommand, "status")
        self.assertEqual(options.setting("config"), "t.toml")
        self.assertTrue(options.setting("json"))
        self.assertEqual(options.setting("timeout"), 30.0)
        self.assertIsNone(options.setting("manager"))

    def test_globalOptionsAfterTheCommand(self) -> None:
        """
        The global options may follow the command too, and win there.
        """
        options = self.parse("-t", "5", "restart", "store", "--json", "--timeout", "90", "--manager", "unix:path=/x")
        self.assertEqual(options.subOptions["name"], "store")
        self.assertTrue(options.setting("json"))
        self.assertEqual(options.setting("timeout"), 90.0)
        self.assertEqual(options.setting("manager"), "unix:path=/x")

    def test_optionsAfterArguments(self) -> None:
        """
        C{dae logs store -f -n 5}: options after the name.
        """
        options = self.parse("logs", "store", "-f", "-n", "5")
        self.assertEqual(options.subOptions["name"], "store")
        self.assertTrue(options.subOptions["follow"])
        self.assertEqual(options.subOptions["lines"], 5)

    def test_doubleDashEndsOptions(self) -> None:
        """
        After C{--}, arguments that look like options are arguments.
        """
        options = self.parse("call", "--", "store", "-x", "[]")
        self.assertEqual(options.subOptions["command"], "-x")

    def test_callArguments(self) -> None:
        """
        C{call NAME COMMAND JSON-ARGS} parses the JSON array; it defaults to
        C{[]}.
        """
        options = self.parse("call", "store", "set", '["k", {"a": 1}]')
        self.assertEqual(options.subOptions["arguments"], ["k", {"a": 1}])
        self.assertEqual(self.parse("call", "store", "all").subOptions["arguments"], [])

    def test_callArgumentsMustBeAnArray(self) -> None:
        """
        JSON-ARGS that is not a JSON array is a usage error saying so.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "call", "store", "get", '"k"')
        self.assertIn("must be a JSON array", str(e))
        e = self.assertRaises(usage.UsageError, self.parse, "call", "store", "get", "[k]")
        self.assertIn("not valid JSON", str(e))

    def test_badTimeout(self) -> None:
        """
        The timeout must be a positive number.
        """
        for value in ("0", "-1", "nan", "x"):
            self.assertRaises(usage.UsageError, self.parse, "--timeout", value, "status")
        self.assertRaises(usage.UsageError, self.parse, "status", "--timeout", "0")

    def test_wrongArgumentCounts(self) -> None:
        """
        A missing or extra argument is a usage error.
        """
        self.assertRaises(usage.UsageError, self.parse, "restart")
        self.assertRaises(usage.UsageError, self.parse, "restart", "a", "b")
        self.assertRaises(usage.UsageError, self.parse, "call", "store")
        self.assertRaises(usage.UsageError, self.parse, "logs", "store", "-n", "-1")

    def test_noCommand(self) -> None:
        """
        A command is required.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "-c", "x")
        self.assertIn("no command", str(e))


class RunUsageTests(SynchronousTestCase):
    """
    How L{cli.run} reports usage errors, help and configs it cannot use.
    """

    def runCli(self, *argv: str, environ: Optional[dict] = None, connect: Any = None) -> Run:
        return Run(self, MemoryReactorClock(), list(argv), connect, environ)

    def test_usageErrorExits2(self) -> None:
        """
        A usage error prints C{dae: <problem>} and a hint on stderr and exits
        2.
        """
        r = self.runCli("frobnicate")
        self.assertEqual(r.code(), EXIT_USAGE)
        self.assertEqual(r.stderr, "dae: Unknown command: frobnicate\n(dae --help for usage)\n")
        self.assertEqual(r.stdout, "")

    def test_badJSONArgsExits2(self) -> None:
        """
        C{call} with JSON-ARGS that is not an array exits 2 before connecting.
        """
        r = self.runCli("--manager", "unix:path=/nowhere", "call", "store", "get", "{}")
        self.assertEqual(r.code(), EXIT_USAGE)
        self.assertIn("JSON-ARGS must be a JSON array", r.stderr)

    def test_help(self) -> None:
        """
        C{--help} prints the usage, listing every command and the exit codes,
        on stdout and exits 0.
        """
        r = self.runCli("--help")
        self.assertEqual(r.code(), 0)
        text = r.stdout
        self.assertTrue(text.startswith("Usage: dae "))
        for command in ("status", "start", "stop", "restart", "reload", "call", "logs"):
            self.assertIn(command, text)
        self.assertIn("4 no daemon of that name", " ".join(text.split()))

    def test_commandHelp(self) -> None:
        """
        C{dae call --help} describes C{call}.
        """
        r = self.runCli("call", "--help")
        self.assertEqual(r.code(), 0)
        self.assertTrue(r.stdout.startswith("Usage: dae [options] call NAME COMMAND [JSON-ARGS]\n"))

    def test_version(self) -> None:
        """
        C{--version} prints the package's version.
        """
        r = self.runCli("--version")
        self.assertEqual(r.code(), 0)
        self.assertTrue(r.stdout.startswith("dae (dae_service) "))

    def test_noManagerGiven(self) -> None:
        """
        Without C{--config}, C{--manager} or C{$DAE_MANAGER}: exit 2.
        """
        r = self.runCli("status")
        self.assertEqual(r.code(), EXIT_USAGE)
        self.assertEqual(r.stderr, "dae: give --config FILE or --manager ENDPOINT (dae --help)\n")

    def test_daeManagerFromEnvironment(self) -> None:
        """
        C{$DAE_MANAGER} (set in every daemon the manager starts) names the
        manager when nothing else does.
        """
        asked = []

        def connect(endpoint: str) -> defer.Deferred:
            asked.append(endpoint)
            return defer.fail(error.ConnectionRefusedError())

        r = self.runCli("status", environ={"DAE_MANAGER": "unix:path=/run/x.sock"}, connect=connect)
        self.assertEqual(r.code(), EXIT_UNREACHABLE)
        self.assertEqual(asked, ["unix:path=/run/x.sock"])

    def test_invalidConfig(self) -> None:
        """
        A config that does not load exits 2 with the config's own message.
        """
        path = writeConfig(self, extra="[daemons.bad]\nrestart = 3\n")
        r = self.runCli("--config", path, "status")
        self.assertEqual(r.code(), EXIT_USAGE)
        self.assertTrue(r.stderr.startswith(f"dae: {path}: "), r.stderr)

    def test_missingConfig(self) -> None:
        """
        A config file that does not exist exits 2, naming it.
        """
        r = self.runCli("--config", "/nonexistent/tree.toml", "status")
        self.assertEqual(r.code(), EXIT_USAGE)
        self.assertEqual(r.stderr, "dae: /nonexistent/tree.toml: cannot read: No such file or directory\n")

    def test_invalidManagerEndpoint(self) -> None:
        """
        A C{--manager} that is no client endpoint string exits 2.
        """
        r = self.runCli("--manager", "bogus:x", "status")
        self.assertEqual(r.code(), EXIT_USAGE)
        self.assertIn("invalid endpoint 'bogus:x'", r.stderr)

    def test_unexpectedErrorExits1WithTraceback(self) -> None:
        """
        A bug shows as an internal error with its traceback, exit 1.
        """

        def connect(endpoint: str) -> defer.Deferred:
            raise ZeroDivisionError("oops")

        r = self.runCli("--manager", "unix:path=/x", "status", connect=connect)
        self.assertEqual(r.code(), EXIT_FAILED)
        self.assertIn("dae: internal error:", r.stderr)
        self.assertIn("ZeroDivisionError: oops", r.stderr)


class ManagerEndpointTests(SynchronousTestCase):
    """
    L{managerEndpointFor}: where the manager of a config listens.
    """

    def config(self, dae: str) -> Any:
        return loadConfig(writeConfig(self, dae))

    def test_unixSocket(self) -> None:
        """
        The default: the UNIX socket in the state directory.
        """
        config = self.config("")
        self.assertEqual(
            managerEndpointFor(config), "unix:path=" + os.path.join(config.stateDir, "dae.sock")
        )

    def test_fixedPort(self) -> None:
        """
        A fixed TCP port, in any spelling, on loopback.
        """
        for listen in ("tcp:7000:interface=127.0.0.1", "tcp:port=7000:interface=127.0.0.1", "tcp:interface=127.0.0.1:port=7000"):
            config = self.config(f'listen = "{listen}"')
            self.assertEqual(managerEndpointFor(config), "tcp:host=127.0.0.1:port=7000", listen)

    def writeState(self, config: Any, manager: dict) -> None:
        os.makedirs(config.stateDir, exist_ok=True)
        with open(os.path.join(config.stateDir, "state.json"), "w") as f:
            json.dump({"manager": manager, "daemons": []}, f)

    def test_portZeroFromTheStateFile(self) -> None:
        """
        Port 0: the running manager's C{state.json} says where it is.
        """
        config = self.config('listen = "tcp:0:interface=127.0.0.1"')
        self.writeState(config, {"pid": os.getpid(), "endpoint": "tcp:host=127.0.0.1:port=45678"})
        self.assertEqual(managerEndpointFor(config), "tcp:host=127.0.0.1:port=45678")

    def test_portZeroWithoutStateFile(self) -> None:
        """
        Port 0 and no state file: the manager is not running (exit 3).
        """
        config = self.config('listen = "tcp:0:interface=127.0.0.1"')
        e = self.assertRaises(CommandError, managerEndpointFor, config, " (hint)")
        self.assertEqual(e.code, EXIT_UNREACHABLE)
        self.assertIn("the manager is not running", e.message)
        self.assertTrue(e.message.endswith(" (hint)"))

    def test_portZeroStaleStateFile(self) -> None:
        """
        Port 0 and a state file whose manager pid is gone: not running.
        """
        config = self.config('listen = "tcp:0:interface=127.0.0.1"')
        self.writeState(config, {"pid": NO_SUCH_PID, "endpoint": "tcp:host=127.0.0.1:port=45678"})
        e = self.assertRaises(CommandError, managerEndpointFor, config)
        self.assertEqual(e.code, EXIT_UNREACHABLE)
        self.assertIn(f"pid {NO_SUCH_PID} is gone", e.message)

    def test_portZeroNoEndpointYet(self) -> None:
        """
        A state file without an endpoint (the manager not listening yet):
        not reachable.
        """
        config = self.config('listen = "tcp:0:interface=127.0.0.1"')
        self.writeState(config, {"pid": os.getpid(), "endpoint": None})
        self.assertEqual(self.assertRaises(CommandError, managerEndpointFor, config).code, EXIT_UNREACHABLE)


class FormattingTests(SynchronousTestCase):
    """
    The pure formatting helpers.
    """

    def test_formatDuration(self) -> None:
        """
        Seconds, minutes, hours, days: two units at most.
        """
        self.assertEqual(
            [formatDuration(s) for s in (-5, 0, 59.9, 60, 427, 3600, 11100, 86400, 187200)],
            ["0s", "0s", "59s", "1m00s", "7m07s", "1h00m", "3h05m", "1d00h", "2d04h"],
        )

    def test_formatBytes(self) -> None:
        """
        K below a megabyte, then M and G with one decimal; C{-} for unknown.
        """
        self.assertEqual(
            [formatBytes(n) for n in (None, 0, 2048, 3 * 2**20, int(1.25 * 2**30))],
            ["-", "0K", "2K", "3.0M", "1.2G"],
        )

    def test_statusTable(self) -> None:
        """
        One row per daemon: uptime only while ready or starting, C{-} for
        what is unknown; columns aligned.
        """
        now = 1_700_000_100.0
        entries = [
            {"name": "store", "state": "ready", "pid": 10, "port": 7011, "restarts": 2, "started": 1_700_000_000_000, "cpu": 1.5, "rss": 3 * 2**20},
            {"name": "legacy-node", "state": "backoff", "pid": None, "port": None, "restarts": 7, "started": 1_700_000_000_000, "cpu": None, "rss": None},
        ]
        self.assertEqual(
            formatStatus(entries, now),
            "NAME         STATE    PID  PORT  UPTIME  RESTARTS  CPU    RSS\n"
            "store        ready    10   7011  1m40s   2         1.50s  3.0M\n"
            "legacy-node  backoff  -    -     -       7         -      -\n",
        )

    def test_poolWorkers(self) -> None:
        """
        A pool's workers are listed under it, indented, by their index in
        the pool (as in C{list} and C{/metrics}), with their connections;
        the pool row sums them.
        """
        entries = [
            {"name": "web", "state": "ready", "pid": 10, "port": 8080, "restarts": 0, "started": None, "cpu": None, "rss": None,
             "workers": [
                 {"index": 0, "pid": 11, "state": "ready", "connections": 3, "cpu": 2.0, "rss": 2**20},
                 {"index": 1, "pid": 12, "state": "starting", "connections": 0},
             ]},
            {"name": "db", "state": "stopped"},
        ]
        self.assertEqual(
            formatStatus(entries, 0).splitlines(),
            [
                "NAME        STATE     PID  PORT  UPTIME  RESTARTS  CPU    RSS   CONNS",
                "web         ready     10   8080  -       0         -      -     3",
                "  worker 0  ready     11   -     -       -         2.00s  1.0M  3",
                "  worker 1  starting  12   -     -       -         -      -     0",
                "db          stopped   -    -     -       -         -      -     -",
            ],
        )


class ReadProcessUsageTests(SynchronousTestCase):
    """
    L{readProcessUsage} reads C{/proc/<pid>/stat} and C{status}.
    """

    def test_fakeProc(self) -> None:
        """
        CPU is utime + stime in clock ticks; RSS is C{VmRSS} in bytes; a
        command name with spaces and parentheses does not confuse it.
        """
        root = self.mktemp()
        os.makedirs(os.path.join(root, "42"))
        ticks = os.sysconf("SC_CLK_TCK")
        fields = ["S", "1"] + ["0"] * 9 + [str(3 * ticks), str(ticks)] + ["0"] * 30
        with open(os.path.join(root, "42", "stat"), "w") as f:
            f.write("42 (a b) (c) " + " ".join(fields) + "\n")
        with open(os.path.join(root, "42", "status"), "w") as f:
            f.write("Name:\ta b\nVmPeak:\t 9 kB\nVmRSS:\t    2048 kB\n")
        self.assertEqual(readProcessUsage(42, root), {"cpu": 4.0, "rss": 2 * 2**20})

    def test_noRSS(self) -> None:
        """
        Without C{VmRSS} (a zombie), RSS is unknown.
        """
        root = self.mktemp()
        os.makedirs(os.path.join(root, "42"))
        with open(os.path.join(root, "42", "stat"), "w") as f:
            f.write("42 (z) Z " + " ".join(["0"] * 40) + "\n")
        with open(os.path.join(root, "42", "status"), "w") as f:
            f.write("Name:\tz\n")
        self.assertEqual(readProcessUsage(42, root), {"cpu": 0.0, "rss": None})

    def test_gone(self) -> None:
        """
        A process that does not exist (or cannot be read): L{None}.
        """
        self.assertIsNone(readProcessUsage(NO_SUCH_PID))
        self.assertIsNone(readProcessUsage(1, self.mktemp()))

    def test_thisProcess(self) -> None:
        """
        The real C{/proc} entry of this process reads.
        """
        usage = readProcessUsage(os.getpid())
        self.assertGreaterEqual(usage["cpu"], 0)
        self.assertGreater(usage["rss"], 0)


class StatusCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dae status} against an in-memory manager.
    """

    def test_table(self) -> None:
        """
        The table lists every daemon with its state, pid, port, uptime,
        restarts, CPU and RSS; exit 0.
        """
        started = self.tree.manager.registry.get("store").started
        self.tree.reactor.advance(started / 1000 + 65.5 - self.tree.reactor.seconds())
        code, out, err = self.runToEnd("status")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), list(cli.STATUS_COLUMNS))
        self.assertEqual(lines[1].split(), ["store", "ready", "1000", "7011", "1m05s", "0", "1.50s", "3.0M"])
        self.assertEqual(lines[2].split()[:4], ["echo", "ready", "1001", "7012"])
        self.assertEqual(lines[2].split()[5:], ["0", "1m15s", "512K"])
        self.assertEqual(len(lines), 3)

    def test_json(self) -> None:
        """
        C{--json}: the manager's status report, each entry with C{cpu} and
        C{rss} added, on one line.
        """
        code, out, err = self.runToEnd("--json", "status")
        self.assertEqual(code, 0)
        self.assertEqual(out.count("\n"), 1)
        report = json.loads(out)
        self.assertEqual(report["manager"]["config"], self.tree.path)
        store, echo = report["daemons"]
        self.assertEqual((store["name"], store["state"], store["port"]), ("store", "ready", 7011))
        self.assertEqual((store["cpu"], store["rss"]), (1.5, 3 * 2**20))
        self.assertEqual(echo["requires"], ["store"])

    def test_stoppedDaemonsStillExit0(self) -> None:
        """
        Failed or stopped daemons do not make C{status} fail.
        """
        self.tree.manager.supervisors["echo"].stop()
        self.tree.launcher.exit(1, signal=signal.SIGTERM)
        code, out, err = self.runToEnd("status")
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[2].split()[:3], ["echo", "stopped", "-"])

    def test_oneDaemon(self) -> None:
        """
        C{status NAME}: that daemon's details, one per line.
        """
        code, out, err = self.runToEnd("status", "store")
        self.assertEqual(code, 0)
        self.assertIn("log_file:", out)
        self.assertIn("quick_failures:", out)
        self.assertEqual(out.splitlines()[0].split(), ["name:", "store"])

    def test_unknownDaemon(self) -> None:
        """
        C{status nope}: exit 4 and one line.
        """
        self.assertEqual(self.runToEnd("status", "nope"), (EXIT_UNKNOWN, "", "dae: no daemon named 'nope'\n"))

    def test_managerNotRunning(self) -> None:
        """
        Nothing listens: exit 3 with one line naming the endpoint and how to
        start the manager.
        """
        self.tree.refuse = True
        code, out, err = self.runToEnd("status")
        self.assertEqual(code, EXIT_UNREACHABLE)
        self.assertEqual(
            err,
            f"dae: cannot reach the manager at {self.tree.managerEndpoint}: is it running? "
            f"(twistd -n dae --config {self.tree.path})\n",
        )

    def test_remoteManagerNoProcessUsage(self) -> None:
        """
        Pids of a manager on another host mean nothing here: no CPU or RSS.
        """
        remote = "tcp:host=192.0.2.1:port=7000"
        connect = lambda endpoint: self.tree.connect(self.tree.managerEndpoint if endpoint == remote else endpoint)
        r = Run(self, self.tree.reactor, ["--manager", remote, "--json", "status"], connect)
        self.assertEqual(r.code(), 0)
        store = json.loads(r.stdout)["daemons"][0]
        self.assertEqual((store["pid"], store["cpu"], store["rss"]), (1000, None, None))

    def test_isLocal(self) -> None:
        """
        UNIX sockets and loopback addresses are this host.
        """
        for endpoint in ("unix:path=/x", "tcp:host=127.0.0.1:port=1", "tcp:localhost:1", "tcp6:host=\\:\\:1:port=1"):
            self.assertTrue(cli._isLocal(endpoint), endpoint)
        for endpoint in ("tcp:host=192.0.2.1:port=1", "tcp:example.com:1", "systemd:x"):
            self.assertFalse(cli._isLocal(endpoint), endpoint)

    def test_outputClosed(self) -> None:
        """
        When the reader of stdout goes away, the command ends quietly with
        exit 1.
        """

        def closed(text: str) -> None:
            raise cli._OutputClosed()

        err: list = []
        d = defer.ensureDeferred(
            cli.run(self.tree.reactor, ["--config", self.tree.path, "status"], connect=self.tree.connect, out=closed, err=err.append, environ={})
        )
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, EXIT_FAILED)
        self.assertEqual(err, [])

    def test_closesItsConnections(self) -> None:
        """
        Every connection it made is closed when it is done.
        """
        self.runToEnd("status")
        self.assertEqual([c.closed for c in self.tree.connections], [True])


class ConnectOnceTests(SynchronousTestCase):
    """
    The default C{connect}: one attempt, no retries.
    """

    def test_refusedIsUnreachable(self) -> None:
        """
        A refused connection exits 3 at once.
        """
        reactor = MemoryReactorClock()
        r = Run(self, reactor, ["--manager", "tcp:host=127.0.0.1:port=7000", "status"])
        [(host, port, factory, timeout, bind)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 7000))
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.assertEqual(r.code(), EXIT_UNREACHABLE)
        self.assertIn("cannot reach the manager at tcp:host=127.0.0.1:port=7000", r.stderr)

    def test_connectTimeout(self) -> None:
        """
        A connection that does not complete within C{--timeout} exits 3.
        """
        reactor = MemoryReactorClock()
        r = Run(self, reactor, ["--manager", "unix:path=/x.sock", "--timeout", "2", "status"])
        self.assertEqual(len(reactor.unixClients), 1)
        self.assertNoResult(r.deferred)
        reactor.advance(2)
        self.assertEqual(r.code(), EXIT_UNREACHABLE)


class CallCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dae call NAME COMMAND JSON-ARGS}.
    """

    def test_setThenGet(self) -> None:
        """
        The command goes to the daemon found through the manager; the reply
        value is printed as compact JSON.
        """
        self.assertEqual(self.runToEnd("call", "store", "set", '["k", {"a": [1, 2]}]'), (0, "true\n", ""))
        self.assertEqual(self.runToEnd("call", "store", "get", '["k"]'), (0, '{"a":[1,2]}\n', ""))
        self.assertEqual(self.tree.stores[7011].data, {"k": {"a": [1, 2]}})

    def test_fault(self) -> None:
        """
        A fault: C{dae: <command> failed: <code>: <message>} on stderr, exit
        1.
        """
        self.assertEqual(
            self.runToEnd("call", "store", "get", "[1]"),
            (EXIT_FAILED, "", "dae: get failed: bad_args: key must be a string\n"),
        )

    def test_unknownCommand(self) -> None:
        """
        An unknown command is the daemon's fault, exit 1.
        """
        code, out, err = self.runToEnd("call", "store", "nope")
        self.assertEqual(code, EXIT_FAILED)
        self.assertTrue(err.startswith("dae: nope failed: unknown_command: "), err)

    def test_unknownDaemon(self) -> None:
        """
        No daemon of that name: exit 4.
        """
        self.assertEqual(self.runToEnd("call", "nope", "get", '["k"]'), (EXIT_UNKNOWN, "", "dae: no daemon named 'nope'\n"))

    def test_theManagerItself(self) -> None:
        """
        NAME C{dae} is the manager.
        """
        code, out, err = self.runToEnd("call", "dae", "lookup", '["echo"]')
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["port"], 7012)
        code, out, err = self.runToEnd("call", "dae", "list")
        self.assertEqual([e["name"] for e in json.loads(out)], ["store", "echo"])

    def test_notReady(self) -> None:
        """
        A daemon that is not ready has no port to call: exit 1 saying its
        state.
        """
        self.tree.manager.supervisors["echo"].stop()
        self.tree.launcher.exit(1, signal=signal.SIGTERM)
        code, out, err = self.runToEnd("call", "echo", "echo", '["x"]')
        self.assertEqual(code, EXIT_FAILED)
        self.assertTrue(err.startswith("dae: echo is not ready (state stopped"), err)

    def test_daemonUnreachable(self) -> None:
        """
        The daemon's port refuses: exit 1 (the manager was reachable).
        """
        del self.tree.stores[7011]
        code, out, err = self.runToEnd("call", "store", "all")
        self.assertEqual(code, EXIT_FAILED)
        self.assertTrue(err.startswith("dae: cannot reach store at tcp:host=127.0.0.1:port=7011"), err)

    def test_timeout(self) -> None:
        """
        No reply within C{--timeout}: exit 1 saying so.
        """
        r = self.runCli("--timeout", "5", "call", "dae", "restart", '["store"]')
        self.assertNoResult(r.deferred)
        self.tree.reactor.advance(5)
        self.assertEqual(r.code(), EXIT_FAILED)
        self.assertEqual(r.stderr, "dae: no reply to restart within 5 s (--timeout)\n")


class ActionCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dae start|stop|restart NAME|all} and C{dae reload}.
    """

    def test_restart(self) -> None:
        """
        C{restart store} answers once it is ready again and prints its new
        state; exit 0.
        """
        r = self.runCli("restart", "store")
        self.assertNoResult(r.deferred)
        self.tree.launcher.exit(0, signal=signal.SIGTERM)
        self.tree.reactor.advance(1)
        self.tree.launcher.ready(-1, 7013)
        self.assertEqual(r.code(), 0)
        self.assertEqual(r.stdout, "store: ready (pid 1002, port 7013)\n")

    def test_stopPrintsDependentsToo(self) -> None:
        """
        C{stop store} stops echo first: both are printed.
        """
        r = self.runCli("stop", "store")
        self.tree.launcher.exit(1, signal=signal.SIGTERM)
        self.tree.launcher.exit(0, signal=signal.SIGTERM)
        self.assertEqual(r.code(), 0)
        self.assertEqual(r.stdout, "store: stopped\necho: stopped\n")

    def test_stopAllJSON(self) -> None:
        """
        C{--json stop all}: every entry, as one JSON array.
        """
        r = self.runCli("--json", "stop", "all")
        self.tree.launcher.exit(1, signal=signal.SIGTERM)
        self.tree.launcher.exit(0, signal=signal.SIGTERM)
        self.assertEqual(r.code(), 0)
        entries = json.loads(r.stdout)
        self.assertEqual([(e["name"], e["state"]) for e in entries], [("store", "stopped"), ("echo", "stopped")])

    def test_startFailureExits1(self) -> None:
        """
        A daemon that does not come up: the manager's fault, exit 1.
        """
        r = self.runCli("stop", "echo")
        self.tree.launcher.exit(1, signal=signal.SIGTERM)
        self.assertEqual(r.code(), 0)
        self.tree.launcher.launchError = FileNotFoundError(2, "No such file or directory")
        code, out, err = self.runToEnd("start", "echo")
        self.assertEqual(code, EXIT_FAILED)
        self.assertTrue(err.startswith("dae: start failed: start_failed: echo: cannot spawn: "), err)
        self.flushLoggedErrors(FileNotFoundError)

    def test_unknownDaemon(self) -> None:
        """
        C{stop nope}: exit 4, one line.
        """
        self.assertEqual(self.runToEnd("stop", "nope"), (EXIT_UNKNOWN, "", "dae: no daemon named 'nope'\n"))

    def test_reloadNothingChanged(self) -> None:
        """
        C{reload} of an unchanged file says so.
        """
        self.assertEqual(self.runToEnd("reload"), (0, "reloaded: nothing changed\n", ""))

    def test_reloadAdded(self) -> None:
        """
        C{reload} lists what changed.
        """
        with open(self.tree.path, "a") as f:
            f.write('[daemons.extra]\ndaemon = "dae_service.examples.store:Store"\n')
        r = self.runCli("reload")
        self.tree.launcher.ready(-1, 7014)
        self.assertEqual(r.code(), 0)
        self.assertEqual(r.stdout, "added: extra\n")

    def test_reloadInvalid(self) -> None:
        """
        A reload the manager rejects exits 1 with its reason.
        """
        with open(self.tree.path, "a") as f:
            f.write("[daemons.bad]\nrestart = 3\n")
        code, out, err = self.runToEnd("--manager", self.tree.managerEndpoint, "reload")
        self.assertEqual(code, EXIT_FAILED)
        self.assertTrue(err.startswith("dae: reload failed: bad_config: "), err)

    def test_managerLostDuringAction(self) -> None:
        """
        The manager going away before it answers: exit 3.
        """
        r = self.runCli("restart", "store")
        self.tree.connections[0].close()
        self.assertEqual(r.code(), EXIT_UNREACHABLE)
        self.assertIn("lost the connection to the manager", r.stderr)


class AuthTests(SynchronousTestCase):
    """
    A manager on TCP needs C{auth [token]} before C{start}, C{stop},
    C{restart} and C{reload}; the CLI reads the token from the state
    directory and never shows it.
    """

    def setUp(self) -> None:
        self.tree = Tree(self, dae='listen = "tcp:7000:interface=127.0.0.1"')
        self.token = self.tree.manager.token

    def test_endpoint(self) -> None:
        """
        The fixed port of the config is where the CLI goes.
        """
        self.assertEqual(self.tree.managerEndpoint, "tcp:host=127.0.0.1:port=7000")

    def test_restartAuthenticates(self) -> None:
        """
        C{restart} sends the token first and succeeds.
        """
        r = Run(self, self.tree.reactor, ["--config", self.tree.path, "restart", "store"], self.tree.connect)
        self.tree.launcher.exit(0, signal=signal.SIGTERM)
        self.tree.reactor.advance(1)
        self.tree.launcher.ready(-1, 7013)
        self.assertEqual(r.code(), 0, r.stderr)
        self.assertEqual(r.stdout, "store: ready (pid 1002, port 7013)\n")
        self.assertNotIn(self.token, r.stdout + r.stderr)

    def test_statusNeedsNoToken(self) -> None:
        """
        Reading commands work without the token file.
        """
        os.unlink(os.path.join(self.tree.config.stateDir, "token"))
        r = Run(self, self.tree.reactor, ["--config", self.tree.path, "status"], self.tree.connect)
        self.assertEqual(r.code(), 0)

    def test_tokenUnreadable(self) -> None:
        """
        No token file: exit 1 naming it.
        """
        path = os.path.join(self.tree.config.stateDir, "token")
        os.unlink(path)
        r = Run(self, self.tree.reactor, ["--config", self.tree.path, "stop", "echo"], self.tree.connect)
        self.assertEqual(r.code(), EXIT_FAILED)
        self.assertEqual(r.stderr, f"dae: cannot read the manager's token from {path}: No such file or directory\n")

    def test_wrongToken(self) -> None:
        """
        A stale token: the manager's refusal, exit 1, and the wrong token is
        not shown either.
        """
        path = os.path.join(self.tree.config.stateDir, "token")
        with open(path, "w") as f:
            f.write("x" * 43 + "\n")
        r = Run(self, self.tree.reactor, ["--config", self.tree.path, "stop", "echo"], self.tree.connect)
        self.assertEqual(r.code(), EXIT_FAILED)
        self.assertEqual(r.stderr, "dae: auth failed: unauthorized: wrong token\n")

    def test_noConfigNoToken(self) -> None:
        """
        With only C{--manager}, the token is unknown: the manager's refusal
        is explained.
        """
        r = Run(self, self.tree.reactor, ["--manager", self.tree.managerEndpoint, "stop", "echo"], self.tree.connect)
        self.assertEqual(r.code(), EXIT_FAILED)
        self.assertEqual(
            r.stderr,
            "dae: stop needs the manager's token: give --config FILE (the token is in its state directory)\n",
        )

    def test_callManagerAuthenticates(self) -> None:
        """
        C{call dae stop ...} authenticates too.
        """
        r = Run(self, self.tree.reactor, ["--config", self.tree.path, "call", "dae", "stop", '["echo"]'], self.tree.connect)
        self.tree.launcher.exit(1, signal=signal.SIGTERM)
        self.assertEqual(r.code(), 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["state"], "stopped")


class LogsCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dae logs NAME [-n N] [-f]}.
    """

    def stamp(self, when: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"

    def test_lastLines(self) -> None:
        """
        The last N lines, each with its time and stream.
        """
        for i in range(5):
            self.tree.launcher.output(0, f"line {i}")
        self.tree.launcher.output(0, "oops", "stderr")
        code, out, err = self.runToEnd("logs", "store", "-n", "2")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].endswith(" stdout line 4"), lines)
        self.assertTrue(lines[1].endswith(" stderr oops"), lines)
        records = list(self.tree.manager.childLogs["store"].recent)[-2:]
        self.assertTrue(lines[0].startswith(self.stamp(records[0][0]) + " "))

    def test_json(self) -> None:
        """
        C{--json}: one C{[time, stream, line]} array per line.
        """
        self.tree.launcher.output(0, "hello")
        code, out, err = self.runToEnd("logs", "store", "--json", "-n", "1")
        self.assertEqual(code, 0)
        [when, stream, line] = json.loads(out)
        self.assertEqual((stream, line), ("stdout", "hello"))

    def test_unknownDaemon(self) -> None:
        """
        C{logs nope}: exit 4.
        """
        self.assertEqual(self.runToEnd("logs", "nope"), (EXIT_UNKNOWN, "", "dae: no daemon named 'nope'\n"))

    def test_follow(self) -> None:
        """
        C{-f} prints the recent lines, then every new line as the manager
        pushes it (the clock never moves here: no polling), until the
        manager goes away (exit 3).
        """
        self.tree.launcher.output(0, "before")
        r = self.runCli("logs", "store", "-f", "-n", "1")
        self.assertEqual(r.stdout.count("\n"), 1)
        self.assertTrue(r.stdout.endswith(" stdout before\n"))
        self.tree.launcher.output(0, "first")
        self.tree.launcher.output(0, "second", stream="stderr")
        lines = r.stdout.splitlines()
        self.assertEqual([line.split(" ", 3)[3] for line in lines], ["before", "first", "second"])
        self.assertEqual(lines[2].split(None, 3)[2], "stderr")
        self.assertNoResult(r.deferred)
        self.tree.connections[0].close()
        self.assertEqual(r.code(), EXIT_UNREACHABLE)

    def test_followSlowReader(self) -> None:
        """
        While the follower's connection cannot take more, lines for it are
        dropped (never buffered without bound), and the next line that gets
        through is preceded by a note saying how many were lost.
        """
        r = self.runCli("logs", "store", "-f", "-n", "0")
        server = self.tree.connections[0].server
        server._pauseReading("writes")
        for i in range(3):
            self.tree.launcher.output(0, f"lost {i}")
        server._resumeReading("writes")
        self.tree.launcher.output(0, "kept")
        lines = [line.split(None, 3)[2:] for line in r.stdout.splitlines()]
        self.assertEqual(
            lines,
            [["dae", "3 lines dropped: the reader did not keep up"], ["stdout", "kept"]],
        )
        self.tree.connections[0].close()
        self.assertEqual(r.code(), EXIT_UNREACHABLE)


class LogPrinterTests(SynchronousTestCase):
    """
    L{cli._LogPrinter}: which records a poll prints.
    """

    def test_sameTimestamp(self) -> None:
        """
        Lines with the time of the last printed one are printed once each.
        """
        out: list = []
        printer = cli._LogPrinter(out.append, True)
        printer.show([[1.0, "stdout", "a"], [2.0, "stdout", "b"]])
        printer.show([[1.0, "stdout", "a"], [2.0, "stdout", "b"], [2.0, "stdout", "c"], [3.0, "stderr", "d"]], onlyNew=True)
        printer.show([[2.0, "stdout", "c"], [3.0, "stderr", "d"]], onlyNew=True)
        self.assertEqual(
            "\n".join(out).splitlines(),
            ['[1.0,"stdout","a"]', '[2.0,"stdout","b"]', '[2.0,"stdout","c"]', '[3.0,"stderr","d"]'],
        )


# Integration: the real console script against a real tree.


def _daeScript() -> str:
    return os.path.join(os.path.dirname(sys.executable), "dae")


class ConsoleScriptTests(TestCase):
    """
    The installed C{dae} console script, run as a process, against a real
    C{twistd -n dae} tree.
    """

    timeout = 60

    def setUp(self) -> None:
        if not os.path.exists(_daeScript()):
            raise self.skipTest(f"no dae console script at {_daeScript()} (run tools/setup-venv.sh)")
        from twisted.internet import reactor

        self.reactor = reactor

    def dae(self, *args: str) -> defer.Deferred:
        """
        Run C{dae ARGS}: a Deferred of C{(exit code, stdout, stderr)} as text.
        """
        from tests.twistdtree import withTimeout

        env = {k: v for k, v in os.environ.items() if k != "DAE_MANAGER"}
        d = getProcessOutputAndValue(_daeScript(), args, env=env, reactor=self.reactor)
        d.addCallback(lambda r: (r[2], r[0].decode("utf-8"), r[1].decode("utf-8")))
        return withTimeout(d, 30, self.reactor, f"dae {' '.join(args)}")

    def startTree(self, **kwargs: Any) -> Any:
        from tests.twistdtree import TwistdTree

        tree = TwistdTree(self, {"store": {"daemon": "dae_service.examples.store:Store"}}, reactor=self.reactor, **kwargs)
        return tree

    @defer.inlineCallbacks
    def test_statusCallRestart(self):
        """
        C{status}, C{call}, C{restart} and an unknown name, on a manager on
        a UNIX socket.
        """
        tree = self.startTree()
        entries = yield tree.start()
        oldPid = entries["store"]["pid"]
        config = tree.configPath

        code, out, err = yield self.dae("--config", config, "status")
        self.assertEqual((code, err), (0, ""), out)
        header, row = out.splitlines()
        self.assertEqual(header.split(), list(cli.STATUS_COLUMNS))
        cells = row.split()
        self.assertEqual(cells[:4], ["store", "ready", str(oldPid), str(entries["store"]["port"])])
        self.assertTrue(cells[7].endswith(("K", "M")), row)  # RSS read from /proc

        self.assertEqual((yield self.dae("--config", config, "call", "store", "set", '["k",1]')), (0, "true\n", ""))
        self.assertEqual((yield self.dae("--config", config, "call", "store", "get", '["k"]')), (0, "1\n", ""))

        code, out, err = yield self.dae("--config", config, "restart", "store")
        self.assertEqual((code, err), (0, ""))
        newPid = (yield tree.call("lookup", "store"))["pid"]
        self.assertNotEqual(newPid, oldPid)
        self.assertTrue(out.startswith(f"store: ready (pid {newPid}, port "), out)

        self.assertEqual(
            (yield self.dae("--config", config, "stop", "nope")),
            (EXIT_UNKNOWN, "", "dae: no daemon named 'nope'\n"),
        )
        code, out, err = yield self.dae("--config", config, "logs", "store")
        self.assertEqual(code, 0)
        self.assertIn(f"spawned, pid {newPid}", out)

    @defer.inlineCallbacks
    def test_tcpManagerWithToken(self):
        """
        On TCP, C{restart} authenticates with the token from the state
        directory (never printing it); C{--json status} parses.
        """
        tree = self.startTree(managerTCP=True)
        yield tree.start()
        code, out, err = yield self.dae("--config", tree.configPath, "restart", "store")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("store: ready"), out)
        self.assertNotIn(tree.token(), out)
        code, out, err = yield self.dae("--config", tree.configPath, "--json", "status")
        self.assertEqual(code, 0, err)
        [store] = json.loads(out)["daemons"]
        self.assertEqual(store["state"], "ready")
        self.assertIsInstance(store["rss"], int)

    @defer.inlineCallbacks
    def test_managerNotRunning(self):
        """
        No manager: exit 3 and one line saying how to start it.
        """
        # A UNIX socket path must be short: not under _trial_temp.
        directory = tempfile.mkdtemp(prefix="dae-cli-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "tree.toml")
        shutil.copy(writeConfig(self), path)
        code, out, err = yield self.dae("--config", path, "status")
        socket = os.path.join(os.path.dirname(path), "state", "dae.sock")
        self.assertEqual(
            (code, out, err),
            (
                EXIT_UNREACHABLE,
                "",
                f"dae: cannot reach the manager at unix:path={socket}: is it running? "
                f"(twistd -n dae --config {path})\n",
            ),
        )


class UnixPathTests(SynchronousTestCase):
    """
    A UNIX socket path longer than a socket address allows.
    """

    def test_tooLong(self) -> None:
        """
        It fails at once with exit 3 and the reason (Twisted's connector
        would only time out).
        """
        path = "/tmp/" + "x" * 120 + ".sock"
        reactor = MemoryReactorClock()
        r = Run(self, reactor, ["--manager", f"unix:path={path}", "status"])
        self.assertEqual(r.code(), EXIT_UNREACHABLE)
        self.assertEqual(
            r.stderr,
            f"dae: cannot connect to unix:path={path}: the socket path is 130 bytes, "
            "longer than a UNIX socket allows (107)\n",
        )
        self.assertEqual(reactor.unixClients, [])

    def test_shortEnough(self) -> None:
        """
        107 bytes is fine.
        """
        self.assertIsNone(cli._unixPathProblem("unix:path=/" + "x" * 106))
        self.assertIsNotNone(cli._unixPathProblem("unix:/" + "x" * 107))
        self.assertIsNone(cli._unixPathProblem("tcp:host=127.0.0.1:port=1"))
