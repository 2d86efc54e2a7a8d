"""
The real C{twistd dae} command line, for what happens before anything runs.
"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistd(*args):
    """
    Run C{twistd} (the script beside this Python) from the repository root.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    return getProcessOutputAndValue(
        sys.executable, (script, *args), env=dict(os.environ), path=ROOT, reactor=reactor
    )


class ConfigErrorTests(TestCase):
    """
    A bad config stops C{twistd -n dae} before anything listens.
    """

    timeout = 60

    @inlineCallbacks
    def test_badConfigExitsNonZero(self):
        """
        Every problem is reported with the file and the key, and twistd exits
        non-zero without starting anything.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[daemons.store]\ndaemon = "store"\nlisten = "tcp:x"\n')
            f.write('[daemons.b]\ndaemon = "store"\nrequires = ["zz"]\n')
        out, err, code = yield twistd("-n", "--pidfile=", "dae", "--config", path)
        self.assertNotEqual(code, 0)
        text = (out + err).decode()
        self.assertIn(f"{path}: daemons.store.listen: invalid endpoint string 'tcp:x'", text)
        self.assertIn(f"{path}: daemons.b.requires: unknown daemon 'zz'", text)

    @inlineCallbacks
    def test_unknownDaemonClass(self):
        """
        A daemon class that cannot be imported is reported with its key.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[daemons.store]\ndaemon = "no_such_module_here:Store"\n')
        out, err, code = yield twistd("-n", "--pidfile=", "dae", "--config", path)
        self.assertNotEqual(code, 0)
        self.assertIn(
            f"{path}: daemons.store.daemon: cannot import 'no_such_module_here'",
            (out + err).decode(),
        )

    @inlineCallbacks
    def test_pluginListed(self):
        """
        C{twistd --help} lists the C{dae} plugin.
        """
        out, err, code = yield twistd("--help")
        self.assertEqual(code, 0)
        self.assertIn(b"dae", out)
        self.assertIn(b"Run a tree of Common TCP daemons", out)
