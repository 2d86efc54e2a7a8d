"""
Tests for L{dae_service.tap} (C{twistd dae --config FILE}), the plugin
dropin, and the example configs in C{tap-configs/}.
"""

from __future__ import annotations

import glob
import os

from twisted.application.service import IService, IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

import dae_service
from dae_service import tap
from dae_service.config import DaeConfig, loadConfig
from dae_service.examples.echo import Echo
from dae_service.examples.store import Store
from dae_service.loader import resolveClasses
from dae_service.manager import Dae

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dae_service.__file__)))
TAP_CONFIGS = os.path.join(PROJECT_ROOT, "tap-configs")

GOOD = """\
[dae]
listen = "tcp:7000:interface=127.0.0.1"
state_dir = "state"

[daemons.echo]
daemon = "dae_service.examples.echo:Echo"

[daemons.store]
daemon = "store"
requires = ["echo"]
"""


class OptionsTests(SynchronousTestCase):
    """
    L{tap.Options} validates the whole config before anything starts.
    """

    def write(self, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "tree.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_good(self) -> None:
        """
        A good file gives the parsed config and every daemon class, by
        C{module:Class} reference or plugin name.
        """
        path = self.write(GOOD)
        for flag in ("--config", "-c"):
            options = self.parse(flag, path)
            self.assertIsInstance(options["tree"], DaeConfig)
            self.assertEqual(options["tree"].path, path)
            self.assertEqual(options["tree"].names, ("echo", "store"))
            self.assertEqual(options["classes"], {"echo": Echo, "store": Store})

    def test_noConfig(self) -> None:
        """
        C{--config} is required.
        """
        e = self.assertRaises(UsageError, self.parse)
        self.assertIn("--config", str(e))

    def test_missingFile(self) -> None:
        """
        A missing file is a usage error naming it.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "nope.toml")
        e = self.assertRaises(UsageError, self.parse, "--config", path)
        self.assertIn(path, str(e))
        self.assertIn("cannot read", str(e))

    def test_badToml(self) -> None:
        """
        A file that is not TOML is a usage error naming the file and line.
        """
        path = self.write(GOOD + "[daemons.broken\n")
        e = self.assertRaises(UsageError, self.parse, "--config", path)
        self.assertIn(f"{path}: line 11: invalid TOML", str(e))

    def test_badValue(self) -> None:
        """
        An invalid value is a usage error naming the file and the key; every
        problem is listed.
        """
        path = self.write(GOOD + 'stop_timeout = -1\nrestart = "sometimes"\n')
        e = self.assertRaises(UsageError, self.parse, "--config", path)
        self.assertIn(f"{path}: daemons.store.stop_timeout: ", str(e))
        self.assertIn(f"{path}: daemons.store.restart: ", str(e))

    def test_unresolvableClass(self) -> None:
        """
        A daemon class that cannot be imported, or a plugin name nobody
        offers, is a usage error naming the file and the key.
        """
        path = self.write(
            GOOD.replace("dae_service.examples.echo:Echo", "no_such_module:Thing").replace(
                '"store"', '"no-such-type"'
            )
        )
        e = self.assertRaises(UsageError, self.parse, "--config", path)
        self.assertIn(f"{path}: daemons.echo.daemon: cannot import 'no_such_module'", str(e))
        self.assertIn(f"{path}: daemons.store.daemon: no daemon type named 'no-such-type'", str(e))

    def test_notADaemon(self) -> None:
        """
        A reference to something that is not a Daemon subclass is a usage
        error naming the key.
        """
        path = self.write(GOOD.replace("dae_service.examples.echo:Echo", "os.path:join"))
        e = self.assertRaises(UsageError, self.parse, "--config", path)
        self.assertIn(f"{path}: daemons.echo.daemon: ", str(e))
        self.assertIn("not a dae_service.Daemon subclass", str(e))


class MakeServiceTests(SynchronousTestCase):
    """
    L{tap.makeService} and L{tap.buildTree}.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "tree.toml")
        with open(self.path, "w") as f:
            f.write(GOOD)
        self.options = tap.Options()
        self.options.parseOptions(["--config", self.path])

    def test_makeService(self) -> None:
        """
        C{makeService} returns the L{Dae} manager for the config, not
        started: nothing is created in the state directory.
        """
        service = tap.makeService(self.options)
        self.assertIsInstance(service, Dae)
        self.assertTrue(IService.providedBy(service))
        self.assertFalse(service.running)
        self.assertIs(service.config, self.options["tree"])
        self.assertEqual(service.classes, {"echo": Echo, "store": Store})
        self.assertFalse(os.path.exists(service.config.stateDir))

    def test_buildTree(self) -> None:
        """
        C{buildTree} uses the reactor it is given.
        """
        reactor = MemoryReactorClock()
        service = tap.buildTree(self.options["tree"], self.options["classes"], reactor)
        self.assertIsInstance(service, Dae)
        self.assertIs(service.reactor, reactor)
        self.assertEqual(reactor.tcpServers, [])


class PluginTests(SynchronousTestCase):
    """
    The twistd plugin dropin.
    """

    def test_serviceMaker(self) -> None:
        """
        C{twistd dae} is a service maker whose options and service come from
        L{dae_service.tap}.
        """
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "dae"]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, tap.Options)
        self.assertIs(makers[0].makeService, tap.makeService)

    def test_noPackageInit(self) -> None:
        """
        The repository's C{twisted/} and C{twisted/plugins/} are not packages
        (an C{__init__.py} there would hide the real Twisted).
        """
        for directory in ("twisted", os.path.join("twisted", "plugins")):
            self.assertFalse(os.path.exists(os.path.join(PROJECT_ROOT, directory, "__init__.py")))


class TapConfigsTests(SynchronousTestCase):
    """
    Every example in C{tap-configs/} is a valid config.
    """

    def test_allParseAndResolve(self) -> None:
        """
        Each C{tap-configs/*.toml} loads and all its daemon classes resolve
        (commands are only parsed, never run).
        """
        paths = sorted(glob.glob(os.path.join(TAP_CONFIGS, "*.toml")))
        self.assertTrue(paths, "no example configs found")
        for path in paths:
            config = loadConfig(path)
            classes = resolveClasses(config)
            self.assertEqual(
                set(classes), {d.name for d in config.daemons if d.command is None}, path
            )
            self.assertEqual(len(config.startOrder()), len(config.daemons), path)
