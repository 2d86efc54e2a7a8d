"""
Tests for L{dae_service.config}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from hypothesis import given, strategies as st

from twisted.trial.unittest import SynchronousTestCase

from dae_service.config import (
    DEFAULT_DAEMON_LISTEN,
    ConfigError,
    ConfigProblem,
    DaeConfig,
    DaemonConfig,
    loadConfig,
    parseConfig,
    serverEndpointProblem,
)

PATH = "/srv/dae/tree.toml"
ENVIRON = {"HOME": "/home/user"}

MINIMAL = """\
[daemons.store]
daemon = "mypackage.mymodule:Store"
listen = "tcp:7011:interface=127.0.0.1"
"""

MANAGER = """\
[dae]
listen = "tcp:7000:interface=127.0.0.1"
[daemons.alpha]
daemon = "mypackage.mymodule:Store"
listen = "tcp:0:interface=127.0.0.1"
[daemons.beta]
daemon = "mypackage.mymodule:Store"
requires = ["alpha"]
[daemons.gamma]
command = ["node", "legacy-daemon.js"]
"""


def parse(text: str, path: str = PATH, environ: dict | None = None) -> DaeConfig:
    """
    Parse C{text} as if it were read from C{path}, with a fixed environment.
    """
    return parseConfig(text, path, ENVIRON if environ is None else environ)


def daemonConfig(body: str, name: str = "store") -> DaemonConfig:
    """
    Parse one C{[daemons.NAME]} table with the given body.
    """
    return parse(f"[daemons.{name}]\n{body}").daemon(name)


class ProblemsMixin:
    """
    Helpers for asserting on the problems a document has.
    """

    def problems(self, text: str, path: str = "tree.toml") -> list[str]:
        """
        @return: Each problem C{text} has, as a string.
        """
        error = self.assertRaises(ConfigError, parseConfig, text, path, ENVIRON)
        return [str(problem) for problem in error.errors]

    def assertProblem(self, text: str, expected: str) -> None:
        """
        Assert that C{text} has exactly the one problem C{expected}.
        """
        self.assertEqual(self.problems(text), [expected])

    def assertDaemonProblem(self, body: str, key: str, problem: str) -> None:
        """
        Assert that a store daemon with C{body} as its table has the one
        problem C{problem} at C{daemons.store.KEY}.
        """
        where = f"daemons.store.{key}" if key else "daemons.store"
        self.assertProblem(
            f'[daemons.store]\ndaemon = "m:C"\n{body}', f"tree.toml: {where}: {problem}"
        )


class ValidConfigTests(SynchronousTestCase):
    """
    Valid documents become frozen config values with the documented defaults.
    """

    def test_minimal(self) -> None:
        """
        A daemon with only C{daemon} and C{listen} gets every other default.
        """
        config = parse(MINIMAL)
        stateDir = config.stateDir
        self.assertEqual(config.names, ("store",))
        self.assertEqual(
            config.daemon("store"),
            DaemonConfig(
                name="store",
                daemon="mypackage.mymodule:Store",
                listen="tcp:7011:interface=127.0.0.1",
                cwd="/srv/dae",
                logFile=f"{stateDir}/logs/store.log",
            ),
        )
        store = config.daemon("store")
        self.assertEqual(
            (store.command, store.requires, store.env, store.inheritEnv, store.restart),
            (None, (), (), True, "always"),
        )
        self.assertEqual(
            (store.backoffInitial, store.backoffMax, store.backoffFactor, store.jitter),
            (0.1, 30.0, 2.0, 0.1),
        )
        self.assertEqual(
            (store.stableAfter, store.giveUpAfter, store.startTimeout),
            (2.0, 5, 30.0),
        )
        self.assertEqual((store.stopSignal, store.stopTimeout), ("TERM", 10.0))
        self.assertEqual((store.logMaxBytes, store.logBackups), (10 * 1024 * 1024, 5))
        self.assertEqual((store.maxLength, store.settingsDict()), (1048576, {}))
        self.assertEqual(
            (store.workers, store.minWorkers, store.maxWorkers, store.idleTimeout),
            (None, None, None, 60.0),
        )
        self.assertEqual((store.tlsCert, store.tlsKey), (None, None))

    def test_managerDefaults(self) -> None:
        """
        Without a C{[dae]} table the manager listens on a mode 600 UNIX
        socket in a state directory under C{~/.local/state/dae}, named after
        the config file's stem and a hash of its absolute path.
        """
        config = parse(MINIMAL)
        digest = hashlib.sha1(PATH.encode()).hexdigest()[:8]
        stateDir = f"/home/user/.local/state/dae/tree-{digest}"
        self.assertEqual(config.path, PATH)
        self.assertEqual(config.stateDir, stateDir)
        self.assertEqual(
            config.listen, f"unix:address={stateDir}/dae.sock:mode=600:lockfile=1"
        )
        self.assertIsNone(serverEndpointProblem(config.listen))
        self.assertEqual((config.web, config.shutdownTimeout), (None, 30.0))
        self.assertEqual(config.launcher, "spawn")

    def test_launcher(self) -> None:
        """
        C{[dae] launcher} chooses how python daemons are started.
        """
        for launcher in ("spawn", "forkserver"):
            config = parse(f'[dae]\nlauncher = "{launcher}"\n' + MINIMAL)
            self.assertEqual(config.launcher, launcher)

    def test_xdgStateHome(self) -> None:
        """
        An absolute C{XDG_STATE_HOME} replaces C{~/.local/state}; a relative
        one is ignored, as the XDG specification says.
        """
        absolute = parse("", environ={"XDG_STATE_HOME": "/var/xdg", "HOME": "/h"})
        relative = parse("", environ={"XDG_STATE_HOME": "xdg", "HOME": "/h"})
        self.assertTrue(absolute.stateDir.startswith("/var/xdg/dae/tree-"))
        self.assertTrue(relative.stateDir.startswith("/h/.local/state/dae/tree-"))

    def test_defaultListenQuotesPath(self) -> None:
        """
        A state directory with a colon in it still gives a valid default
        manager endpoint, with the colon escaped.
        """
        config = parse('[dae]\nstate_dir = "/var/a:b"\n')
        self.assertEqual(
            config.listen, r"unix:address=/var/a\:b/dae.sock:mode=600:lockfile=1"
        )
        self.assertIsNone(serverEndpointProblem(config.listen))

    def test_managerExample(self) -> None:
        """
        The manager example parses: a daemon without C{listen} gets the
        loopback port-0 default, a command gets no C{listen}, and
        requirements start first.
        """
        config = parse(MANAGER)
        self.assertEqual(config.listen, "tcp:7000:interface=127.0.0.1")
        self.assertEqual(config.names, ("alpha", "beta", "gamma"))
        self.assertEqual(config.startOrder(), ("alpha", "beta", "gamma"))
        self.assertEqual(config.daemon("beta").listen, DEFAULT_DAEMON_LISTEN)
        self.assertEqual(config.daemon("beta").requires, ("alpha",))
        gamma = config.daemon("gamma")
        self.assertEqual((gamma.daemon, gamma.listen), (None, None))
        self.assertEqual(gamma.command, ("node", "legacy-daemon.js"))

    def test_startOrderStable(self) -> None:
        """
        C{startOrder} keeps file order except where a requirement forces a
        daemon later: each step takes the first daemon whose requirements
        have started.
        """
        config = parse(
            '[daemons.a]\ndaemon = "m:C"\nrequires = ["c"]\n'
            '[daemons.b]\ndaemon = "m:C"\n'
            '[daemons.c]\ndaemon = "m:C"\nrequires = ["d"]\n'
            '[daemons.d]\ndaemon = "m:C"\n'
        )
        self.assertEqual(config.startOrder(), ("b", "d", "c", "a"))

    def test_startOrderCycle(self) -> None:
        """
        C{startOrder} on a hand-built config with a cycle raises
        L{ValueError} instead of looping.
        """
        config = DaeConfig(
            path="/t.toml",
            listen="tcp:0",
            stateDir="/s",
            daemons=(
                DaemonConfig(name="a", daemon="m:C", requires=("b",)),
                DaemonConfig(name="b", daemon="m:C", requires=("a",)),
            ),
        )
        self.assertRaises(ValueError, config.startOrder)

    def test_daemonMissing(self) -> None:
        """
        C{daemon(name)} raises L{KeyError} for a name not in the file.
        """
        self.assertRaises(KeyError, parse(MANAGER).daemon, "delta")

    def test_empty(self) -> None:
        """
        An empty file, or one without C{[daemons]}, is valid and has no
        daemons.
        """
        self.assertEqual(parse("").daemons, ())
        config = parse('[dae]\nweb = "tcp:8080:interface=127.0.0.1"\n')
        self.assertEqual(config.daemons, ())
        self.assertEqual(config.web, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.startOrder(), ())

    def test_everyKey(self) -> None:
        """
        Every per-daemon key is read into its camelCase attribute, with ints
        accepted as floats and the signal name normalised.
        """
        store = daemonConfig(
            'daemon = "dae-plugin.name"\n'
            'listen = "tcp6:7011:interface=\\\\:\\\\:1"\n'
            'env = {B = "2", A = "1"}\ninherit_env = false\n'
            'restart = "on-failure"\nbackoff_initial = 1\nbackoff_max = 60\n'
            "backoff_factor = 1.5\njitter = 0\nstable_after = 5\n"
            'give_up_after = 3\nstart_timeout = 4\nstop_signal = "SIGhup"\n'
            "stop_timeout = 2.5\nlog_max_bytes = 1000\nlog_backups = 0\n"
            "max_length = 4096\nmin_workers = 1\nmax_workers = 4\nidle_timeout = 9\n"
        )
        self.assertEqual(store.daemon, "dae-plugin.name")
        self.assertEqual(store.env, (("A", "1"), ("B", "2")))
        self.assertEqual(store.envDict(), {"A": "1", "B": "2"})
        self.assertEqual((store.inheritEnv, store.restart), (False, "on-failure"))
        self.assertEqual(
            (store.backoffInitial, store.backoffMax, store.backoffFactor, store.jitter),
            (1.0, 60.0, 1.5, 0.0),
        )
        self.assertIsInstance(store.backoffInitial, float)
        self.assertEqual(
            (store.stableAfter, store.giveUpAfter, store.startTimeout),
            (5.0, 3, 4.0),
        )
        self.assertEqual((store.stopSignal, store.stopTimeout), ("HUP", 2.5))
        self.assertEqual(
            (store.logMaxBytes, store.logBackups, store.maxLength), (1000, 0, 4096)
        )
        self.assertEqual(
            (store.workers, store.minWorkers, store.maxWorkers, store.idleTimeout),
            (None, 1, 4, 9.0),
        )

    def test_settings(self) -> None:
        """
        C{settings} is frozen and hashable; C{settingsDict} gives back the
        same tables and arrays as a fresh copy each time.
        """
        store = daemonConfig(
            'daemon = "m:C"\n'
            '[daemons.store.settings]\nz = 1\na = [1, {b = "x"}]\nt = {u = [2]}\n'
        )
        expected = {"a": [1, {"b": "x"}], "t": {"u": [2]}, "z": 1}
        self.assertEqual(store.settingsDict(), expected)
        self.assertEqual([key for key, _ in store.settings], ["a", "t", "z"])
        store.settingsDict()["a"][1]["b"] = "changed"
        self.assertEqual(store.settingsDict(), expected)
        hash(store)

    def test_settingsTableIsNotArray(self) -> None:
        """
        A table in C{settings} is not equal to an array of pairs with the
        same contents, so changing one into the other is a change.
        """
        table = daemonConfig('daemon = "m:C"\nsettings = {x = {a = 1}}\n')
        array = daemonConfig('daemon = "m:C"\nsettings = {x = [["a", 1]]}\n')
        self.assertNotEqual(table, array)
        self.assertEqual(array.settingsDict(), {"x": [["a", 1]]})

    def test_relativePaths(self) -> None:
        """
        C{cwd}, C{log_file}, C{state_dir} and the C{tls} files are resolved
        against the config file's directory; absolute ones are kept.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "certs"))
        for name in ("cert.pem", "key.pem"):
            with open(os.path.join(directory, "certs", name), "w"):
                pass
        config = parse(
            '[dae]\nstate_dir = "state"\n'
            '[daemons.store]\ndaemon = "m:C"\ncwd = "../work"\n'
            'log_file = "/var/log/store.log"\n'
            'tls = {cert = "certs/cert.pem", key = "./certs/key.pem"}\n'
            '[daemons.other]\ndaemon = "m:C"\nlog_file = "logs/other.log"\n',
            path=os.path.join(directory, "tree.toml"),
        )
        store, other = config.daemons
        parent = os.path.dirname(directory)
        self.assertEqual(config.stateDir, os.path.join(directory, "state"))
        self.assertEqual(store.cwd, os.path.join(parent, "work"))
        self.assertEqual(store.logFile, "/var/log/store.log")
        self.assertEqual(store.tlsCert, os.path.join(directory, "certs", "cert.pem"))
        self.assertEqual(store.tlsKey, os.path.join(directory, "certs", "key.pem"))
        self.assertEqual(other.cwd, directory)
        self.assertEqual(other.logFile, os.path.join(directory, "logs", "other.log"))

    def test_defaultsTable(self) -> None:
        """
        C{[defaults]} gives every daemon a key unless the daemon sets it.
        """
        config = parse(
            '[defaults]\nrestart = "never"\nstop_timeout = 3\n'
            'env = {MODE = "prod"}\n'
            '[daemons.a]\ndaemon = "m:C"\n'
            '[daemons.b]\ndaemon = "m:C"\nrestart = "always"\n'
        )
        a, b = config.daemons
        self.assertEqual((a.restart, b.restart), ("never", "always"))
        self.assertEqual((a.stopTimeout, b.stopTimeout), (3.0, 3.0))
        self.assertEqual(b.envDict(), {"MODE": "prod"})

    def test_frozen(self) -> None:
        """
        Config values cannot be changed after parsing.
        """
        config = parse(MINIMAL)
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, config, "listen", "x")
        self.assertRaises(
            dataclasses.FrozenInstanceError, setattr, config.daemons[0], "listen", "x"
        )

    def test_unchangedDaemonsEqual(self) -> None:
        """
        Parsing the same text twice gives equal, equally hashed configs.
        """
        first, second = parse(MANAGER), parse(MANAGER)
        self.assertEqual(first, second)
        self.assertEqual(hash(first), hash(second))
        self.assertEqual(set(first.daemons), set(second.daemons))

    def test_changedDaemonNotEqual(self) -> None:
        """
        Changing one key of one daemon makes only that daemon unequal, so a
        reload can tell which daemons to restart.
        """
        before = parse(MANAGER)
        after = parse(MANAGER.replace('"legacy-daemon.js"', '"legacy-daemon.js", "-v"'))
        changed = [
            b.name for b, a in zip(before.daemons, after.daemons, strict=True) if b != a
        ]
        self.assertEqual(changed, ["gamma"])
        self.assertNotEqual(before, after)


class LoadConfigTests(SynchronousTestCase):
    """
    L{loadConfig} reads a file and reports what keeps it from being read.
    """

    def test_load(self) -> None:
        """
        A readable file is parsed, and the config records its absolute path.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(MINIMAL)
        config = loadConfig(path, ENVIRON)
        self.assertEqual(config.path, os.path.abspath(path))
        self.assertEqual(config.names, ("store",))

    def test_missing(self) -> None:
        """
        A missing file is a L{ConfigError} naming the file.
        """
        error = self.assertRaises(ConfigError, loadConfig, "nope.toml", ENVIRON)
        self.assertEqual(str(error), "nope.toml: cannot read: No such file or directory")

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is a L{ConfigError} naming the line.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"# ok\n# \xff\n")
        error = self.assertRaises(ConfigError, loadConfig, path, ENVIRON)
        self.assertEqual(str(error), f"{path}: line 2: not valid UTF-8")


class ProblemTests(ProblemsMixin, SynchronousTestCase):
    """
    Invalid documents raise one L{ConfigError} naming file, key and problem.
    """

    def test_problemFormat(self) -> None:
        """
        A problem reads C{path: key: problem}; an error joins its problems
        with newlines.
        """
        problem = ConfigProblem("tree.toml", "daemons.a", "bad")
        self.assertEqual(str(problem), "tree.toml: daemons.a: bad")
        error = ConfigError([problem, ConfigProblem("t", "k", "p")])
        self.assertEqual(str(error), "tree.toml: daemons.a: bad\nt: k: p")
        self.assertEqual(error.errors, [problem, ConfigProblem("t", "k", "p")])

    def test_syntaxError(self) -> None:
        """
        A TOML syntax error names the file and line, and is the only problem.
        """
        problems = self.problems('[daemons.store]\ndaemon = "m:C"\nlisten = tcp:7011\n')
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("tree.toml: line 3: invalid TOML: "))

    def test_syntaxErrorAtEnd(self) -> None:
        """
        A syntax error found at the end of the document names the last line.
        """
        problems = self.problems('\n\nx = "unterminated')
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("tree.toml: line 3: invalid TOML: "))

    def test_unknownKey(self) -> None:
        """
        An unknown key is a problem that suggests the closest known key.
        """
        self.assertDaemonProblem(
            'lissten = "tcp:0"', "", "unknown key 'lissten'; did you mean 'listen'?"
        )

    def test_unknownKeyNoSuggestion(self) -> None:
        """
        An unknown key like no known key gets no suggestion.
        """
        self.assertProblem('[dae]\nzzz = 1\n', "tree.toml: dae: unknown key 'zzz'")

    def test_unknownTable(self) -> None:
        """
        An unknown top-level table is a problem with a suggestion.
        """
        self.assertProblem(
            '[deamons.a]\ndaemon = "m:C"\n',
            "tree.toml: deamons: unknown table 'deamons'; did you mean 'daemons'?",
        )

    def test_badEndpoint(self) -> None:
        """
        An endpoint string that Twisted cannot parse is a problem quoting it.
        """
        problems = self.problems('[daemons.store]\ndaemon = "m:C"\nlisten = "tcp:x"\n')
        self.assertEqual(len(problems), 1)
        self.assertTrue(
            problems[0].startswith(
                "tree.toml: daemons.store.listen: invalid endpoint string 'tcp:x': "
            )
        )

    def test_badManagerEndpoints(self) -> None:
        """
        C{dae.listen} and C{dae.web} are checked like daemon endpoints.
        """
        problems = self.problems('[dae]\nlisten = "bogus:1"\nweb = "tcp"\n')
        self.assertEqual(
            [p.split(": invalid endpoint")[0] for p in problems],
            ["tree.toml: dae.listen", "tree.toml: dae.web"],
        )

    def test_serverEndpointProblem(self) -> None:
        """
        L{serverEndpointProblem} returns L{None} for a valid endpoint string
        and a message naming an invalid one.
        """
        self.assertIsNone(serverEndpointProblem("tcp:7011:interface=127.0.0.1"))
        self.assertIsNone(serverEndpointProblem("unix:address=/tmp/x:mode=600"))
        self.assertIn("'nonsense:1'", serverEndpointProblem("nonsense:1"))
        self.assertIn("'tcp:1:bad=2'", serverEndpointProblem("tcp:1:bad=2"))

    def test_daemonAndCommand(self) -> None:
        """
        A daemon with both C{daemon} and C{command} is a problem.
        """
        self.assertDaemonProblem(
            'command = ["x"]', "", "give exactly one of 'daemon', 'factory' and 'command'"
        )

    def test_neitherDaemonNorCommand(self) -> None:
        """
        A daemon with neither C{daemon} nor C{command} is a problem.
        """
        self.assertProblem(
            '[daemons.store]\nrestart = "never"\n',
            "tree.toml: daemons.store: give exactly one of 'daemon', 'factory' and 'command'",
        )

    def test_badDaemonReference(self) -> None:
        """
        C{daemon} must be C{package.module:Class} or a plugin name.
        """
        for bad in ["mod:", "a b", "mod:Class:x", "1mod:C", ":C"]:
            self.assertEqual(
                self.problems(f'[daemons.store]\ndaemon = "{bad}"\n'),
                [
                    "tree.toml: daemons.store.daemon: expected 'package.module:Class'"
                    f" or a plugin name, got {bad!r}"
                ],
            )

    def test_badCommand(self) -> None:
        """
        C{command} must be a non-empty array of strings.
        """
        self.assertEqual(
            self.problems(
                '[daemons.a]\ncommand = []\n[daemons.b]\ncommand = ["x", 1]\n'
                '[daemons.c]\ncommand = "node x.js"\n'
            ),
            [
                "tree.toml: daemons.a.command: expected a program and its arguments,"
                " got an empty command",
                "tree.toml: daemons.b.command: expected strings, got integer 1",
                "tree.toml: daemons.c.command: expected an array of strings,"
                " got string 'node x.js'",
            ],
        )

    def test_badName(self) -> None:
        """
        A daemon name outside C{[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}} is a problem.
        """
        for name in ["a b", "-a", "x" * 65]:
            self.assertEqual(
                len(self.problems(f'[daemons."{name}"]\ndaemon = "m:C"\n')), 1
            )
        parse(f'[daemons."{"x" * 64}"]\ndaemon = "m:C"\n')

    def test_unknownRequires(self) -> None:
        """
        Requiring a daemon that does not exist is a problem with a
        suggestion.
        """
        self.assertProblem(
            '[daemons.alpha]\ndaemon = "m:C"\n'
            '[daemons.beta]\ndaemon = "m:C"\nrequires = ["alpah"]\n',
            "tree.toml: daemons.beta.requires: unknown daemon 'alpah';"
            " did you mean 'alpha'?",
        )

    def test_requiresSelf(self) -> None:
        """
        A daemon requiring itself is a problem.
        """
        self.assertDaemonProblem(
            'requires = ["store"]', "requires", "a daemon cannot require itself"
        )

    def test_cycle(self) -> None:
        """
        A dependency cycle is a problem that spells out the cycle.
        """
        self.assertProblem(
            '[daemons.a]\ndaemon = "m:C"\nrequires = ["b"]\n'
            '[daemons.b]\ndaemon = "m:C"\nrequires = ["a"]\n',
            "tree.toml: daemons.a.requires: dependency cycle a -> b -> a",
        )

    def test_longCycle(self) -> None:
        """
        A longer cycle is reported once, from the daemon where it was met,
        and daemons outside it are not blamed.
        """
        self.assertProblem(
            '[daemons.x]\ndaemon = "m:C"\nrequires = ["a"]\n'
            '[daemons.a]\ndaemon = "m:C"\nrequires = ["b"]\n'
            '[daemons.b]\ndaemon = "m:C"\nrequires = ["c"]\n'
            '[daemons.c]\ndaemon = "m:C"\nrequires = ["a"]\n',
            "tree.toml: daemons.a.requires: dependency cycle a -> b -> c -> a",
        )

    def test_badTypes(self) -> None:
        """
        Each key of the wrong type is a problem saying what was expected and
        what was found.
        """
        cases = [
            ("listen = 7011", "listen", "expected a string, got integer 7011"),
            ("inherit_env = 1", "inherit_env", "expected a boolean, got integer 1"),
            ("requires = 'a'", "requires", "expected an array of daemon names,"
             " got string 'a'"),
            ("env = {PORT = 7011}", "env", "'PORT' must be a string, got integer 7011"),
            ("env = 'A=1'", "env", "expected a table, got string 'A=1'"),
            ("settings = [1]", "settings", "expected a table, got array"),
            ("cwd = ''", "cwd", "expected a path, got an empty string"),
            ("stop_timeout = true", "stop_timeout", "expected a number, got boolean True"),
            ("stop_timeout = 'ten'", "stop_timeout", "expected a number, got string 'ten'"),
            ("stop_timeout = 0", "stop_timeout", "must be greater than 0, got 0"),
            ("stop_timeout = nan", "stop_timeout", "must be greater than 0, got nan"),
            ("backoff_factor = 1", "backoff_factor", "must be greater than 1, got 1"),
            ("jitter = 1.5", "jitter", "must be between 0 and 1, got 1.5"),
            ("give_up_after = 2.0", "give_up_after", "expected an integer, got float 2.0"),
            ("give_up_after = 0", "give_up_after", "must be at least 1, got 0"),
            ("log_backups = -1", "log_backups", "must be at least 0, got -1"),
            ("max_length = 0", "max_length", "must be at least 1, got 0"),
            ("workers = 0", "workers", "must be at least 1, got 0"),
            ("restart = 'sometimes'", "restart",
             "expected one of always, on-failure, never; got 'sometimes'"),
            ("tls = 'x.pem'", "tls", "expected a table with 'cert' and 'key',"
             " got string 'x.pem'"),
        ]
        for body, key, problem in cases:
            self.assertDaemonProblem(body, key, problem)

    def test_badSignal(self) -> None:
        """
        A stop signal outside the supported set is a problem.
        """
        self.assertDaemonProblem(
            'stop_signal = "SIGSTOP"',
            "stop_signal",
            "expected one of TERM, INT, HUP, QUIT, USR1, USR2, KILL; got 'SIGSTOP'",
        )

    def test_crossKeyProblems(self) -> None:
        """
        Keys that contradict each other are problems: C{workers} with
        C{min_workers}, C{min_workers} above C{max_workers}, and an initial
        backoff above the maximum.
        """
        self.assertDaemonProblem(
            "workers = 2\nmin_workers = 1",
            "workers",
            "cannot be combined with min_workers or max_workers",
        )
        self.assertDaemonProblem(
            "min_workers = 3\nmax_workers = 2",
            "min_workers",
            "must not exceed max_workers (2)",
        )
        self.assertDaemonProblem(
            "backoff_initial = 5\nbackoff_max = 1",
            "backoff_initial",
            "must not exceed backoff_max (1.0)",
        )

    def test_tlsProblems(self) -> None:
        """
        A C{tls} table needs both C{cert} and C{key}, and files that exist.
        """
        self.assertEqual(
            self.problems('[daemons.s]\ndaemon = "m:C"\ntls = {cert = "c.pem", crt = 1}\n'),
            [
                "tree.toml: daemons.s.tls: unknown key 'crt'; did you mean 'cert'?",
                "tree.toml: daemons.s.tls: missing 'key'",
            ],
        )
        self.assertEqual(
            self.problems(
                '[daemons.s]\ndaemon = "m:C"\ntls = {cert = "c.pem", key = "k.pem"}\n',
                path="/nonexistent/tree.toml",
            ),
            [
                "/nonexistent/tree.toml: daemons.s.tls.cert:"
                " no such file '/nonexistent/c.pem'",
                "/nonexistent/tree.toml: daemons.s.tls.key:"
                " no such file '/nonexistent/k.pem'",
            ],
        )

    def test_defaultsProblems(self) -> None:
        """
        C{daemon}, C{command} and C{requires} cannot have defaults, and a bad
        default is reported once, under C{defaults}, not for every daemon.
        """
        self.assertEqual(
            self.problems(
                '[defaults]\ndaemon = "m:C"\nrequires = []\njitter = 2\n'
                '[daemons.a]\ndaemon = "m:C"\n[daemons.b]\ndaemon = "m:C"\n'
            ),
            [
                "tree.toml: defaults.daemon: cannot have a default;"
                " set it on each daemon",
                "tree.toml: defaults.requires: cannot have a default;"
                " set it on each daemon",
                "tree.toml: defaults.jitter: must be between 0 and 1, got 2",
            ],
        )

    def test_badLauncher(self) -> None:
        """
        C{[dae] launcher} is C{"spawn"} or C{"forkserver"}.
        """
        self.assertProblem(
            '[dae]\nlauncher = "fork"\n',
            "tree.toml: dae.launcher: expected one of spawn, forkserver; got 'fork'",
        )
        self.assertProblem(
            "[dae]\nlauncher = 1\n",
            "tree.toml: dae.launcher: expected a string, got integer 1",
        )

    def test_notTables(self) -> None:
        """
        C{dae}, C{defaults}, C{daemons} and each daemon must be tables.
        """
        self.assertEqual(
            self.problems("dae = 1\ndefaults = 2\ndaemons = 3\n"),
            [
                "tree.toml: dae: expected a table, got integer 1",
                "tree.toml: defaults: expected a table, got integer 2",
                "tree.toml: daemons: expected a table, got integer 3",
            ],
        )
        self.assertProblem(
            "[daemons]\nstore = 'x'\n",
            "tree.toml: daemons.store: expected a table, got string 'x'",
        )

    def test_severalProblems(self) -> None:
        """
        Every problem in the document is reported together, in file order.
        """
        problems = self.problems(
            '[dae]\nlisten = "tcp:x"\nshutdown_timeout = -1\n'
            '[daemons.a]\ndaemon = "m:C"\nlissten = "tcp:0"\nrequires = ["b", "zz"]\n'
            '[daemons.b]\ncommand = ["x"]\nrequires = ["a"]\nstop_signal = "STOP"\n'
            "env = {N = 1}\n"
        )
        self.assertEqual(
            [problem.split(": ")[1] for problem in problems],
            [
                "dae.listen",
                "dae.shutdown_timeout",
                "daemons.a",
                "daemons.b.stop_signal",
                "daemons.b.env",
                "daemons.a.requires",
                "daemons.a.requires",
            ],
        )
        self.assertEqual(problems[-1], "tree.toml: daemons.a.requires:"
                         " dependency cycle a -> b -> a")

    def test_dependentKeysStillChecked(self) -> None:
        """
        A daemon whose other keys are invalid still has its requirements
        checked, and requiring an invalid daemon is not a second problem.
        """
        self.assertEqual(
            self.problems(
                '[daemons.a]\ndaemon = "m:C"\njitter = 5\nrequires = ["b", "c"]\n'
                '[daemons.b]\n'
            ),
            [
                "tree.toml: daemons.a.jitter: must be between 0 and 1, got 5",
                "tree.toml: daemons.b: give exactly one of 'daemon', 'factory' and 'command'",
                "tree.toml: daemons.a.requires: unknown daemon 'c'",
            ],
        )

    @given(st.text(max_size=200))
    def test_anyTextValidOrConfigError(self, text: str) -> None:
        """
        Any text either parses or raises L{ConfigError}; nothing else escapes.
        """
        try:
            parse(text)
        except ConfigError as e:
            self.assertTrue(e.errors)


class PoolConfigTests(ProblemsMixin, SynchronousTestCase):
    """
    The keys of pools and of plain factories: C{factory}, C{workers},
    C{min_workers}, C{max_workers}, C{drain_timeout}, C{tls}.
    """

    def test_acceptanceForm(self) -> None:
        """
        C{daemon}, C{listen} and C{workers} are all a pool needs.
        """
        pool = daemonConfig(
            'daemon = "mypackage.mymodule:Store"\n'
            'listen = "tcp:7201:interface=127.0.0.1"\n'
            "workers = 2\n",
            name="pool",
        )
        self.assertTrue(pool.isPool)
        self.assertEqual((pool.workers, pool.drainTimeout), (2, 5.0))
        self.assertEqual(pool.workerRange(8), (2, 2))

    def test_factory(self) -> None:
        """
        C{factory} names a protocol factory (or a callable making one)
        instead of a daemon class; it gets the default endpoint too.
        """
        web = daemonConfig('factory = "dae_service.examples.web:makeSite"\ndrain_timeout = 2\n')
        self.assertEqual((web.factory, web.daemon, web.command), (
            "dae_service.examples.web:makeSite", None, None))
        self.assertEqual((web.listen, web.drainTimeout), (DEFAULT_DAEMON_LISTEN, 2.0))
        self.assertFalse(web.isPool)

    def test_factoryProblems(self) -> None:
        """
        A C{factory} must be a C{module:name} reference, and is exclusive
        with C{daemon} and C{command}.
        """
        self.assertProblem(
            '[daemons.s]\nfactory = "site"\n',
            "tree.toml: daemons.s.factory: expected 'package.module:name', got 'site'",
        )
        self.assertProblem(
            '[daemons.s]\nfactory = "m:f"\ndaemon = "m:C"\n',
            "tree.toml: daemons.s: give exactly one of 'daemon', 'factory' and 'command'",
        )
        self.assertProblem(
            '[defaults]\nfactory = "m:f"\n[daemons.s]\ndaemon = "m:C"\n',
            "tree.toml: defaults.factory: cannot have a default; set it on each daemon",
        )

    def test_poolListensOnTCP(self) -> None:
        """
        A pool's endpoint must be C{tcp:} or C{tcp6:}: the manager binds it
        and the workers adopt it.
        """
        self.assertDaemonProblem(
            'listen = "unix:address=/tmp/s.sock"\nworkers = 2',
            "listen",
            "a pool listens on 'tcp:' or 'tcp6:', not 'unix:'",
        )

    def test_commandsCannotPool(self) -> None:
        """
        A foreign command can be neither a pool nor serve TLS.
        """
        problems = self.problems(
            '[daemons.c]\ncommand = ["x"]\nworkers = 2\n'
            'tls = {cert = "c.pem", key = "k.pem"}\n'
        )
        self.assertEqual(
            problems[:2],
            [
                "tree.toml: daemons.c.workers: needs 'daemon' or 'factory', not 'command'",
                "tree.toml: daemons.c.tls: needs 'daemon' or 'factory', not 'command'",
            ],
        )

    def test_bounds(self) -> None:
        """
        Worker counts are bounded; the drain must end before the stop
        timeout's SIGKILL.
        """
        self.assertDaemonProblem("workers = 1000", "workers", "must be at most 256, got 1000")
        self.assertDaemonProblem(
            "max_workers = 257", "max_workers", "must be at most 256, got 257"
        )
        self.assertDaemonProblem(
            "drain_timeout = 10", "drain_timeout", "must be less than stop_timeout (10.0)"
        )
        self.assertDaemonProblem("drain_timeout = 0", "drain_timeout",
                                 "must be greater than 0, got 0")
        store = daemonConfig('daemon = "m:C"\nstop_timeout = 30\ndrain_timeout = 20\n')
        self.assertEqual(store.drainTimeout, 20.0)


class SystemdEndpointTests(SynchronousTestCase):
    """
    C{systemd:} endpoints (socket activation) in a config.
    """

    def test_managerMayUseSystemd(self):
        """
        The manager's C{listen} and C{web} may be C{systemd:} sockets, and
        the config is valid even outside systemd (only syntax is checked).
        """
        config = parseConfig(
            '[dae]\nlisten = "systemd:domain=INET:index=0"\n'
            'web = "systemd:domain=INET:index=1"\n',
            "tree.toml",
            {"HOME": "/home/x"},
        )
        self.assertEqual(config.listen, "systemd:domain=INET:index=0")
        self.assertEqual(config.web, "systemd:domain=INET:index=1")

    def test_badSystemdSyntax(self):
        """
        A malformed C{systemd:} endpoint is still a config error.
        """
        e = self.assertRaises(
            ConfigError, parseConfig, '[dae]\nlisten = "systemd:domain=NOPE:index=0"\n', "t.toml", {"HOME": "/h"}
        )
        self.assertIn("dae.listen", str(e))

    def test_daemonMayNotUseSystemd(self):
        """
        A daemon cannot listen on an inherited systemd socket: its child
        process never gets it.
        """
        e = self.assertRaises(
            ConfigError,
            parseConfig,
            '[daemons.s]\ndaemon = "store"\nlisten = "systemd:domain=INET:index=0"\n',
            "t.toml",
            {"HOME": "/h"},
        )
        self.assertIn("daemons.s.listen: systemd: endpoints", str(e))
