"""
The example daemons, tested the way their authors would: in memory, with
L{dae_service.testing}.
"""

from twisted.trial.unittest import SynchronousTestCase

from dae_service import Fault
from dae_service.examples.echo import Echo
from dae_service.examples.store import Store
from dae_service.testing import callCommand, connectDaemon


class EchoTests(SynchronousTestCase):
    """
    L{Echo} answers C{echo [x]} with C{x}.
    """

    def test_echo(self):
        """
        Any JSON value comes back unchanged.
        """
        for value in ["hi", 1, None, [1, {"a": "\u2603"}]]:
            self.assertEqual(self.successResultOf(callCommand(Echo(), "echo", value)), value)

    def test_options(self):
        """
        C{options} reports C{echo} as taking one argument.
        """
        options = self.successResultOf(callCommand(Echo(), "options"))
        self.assertEqual(options, {"whois": 0, "options": 0, "dae": 0, "echo": 1})


class StoreTests(SynchronousTestCase):
    """
    L{Store}: the Node sample's set/get/all/reset, plus change events.
    """

    def setUp(self):
        self.connection = connectDaemon(Store(settings={"max_keys": 2}))

    def call(self, *args):
        return self.successResultOf(self.connection.call(*args))

    def test_setGetAllReset(self):
        """
        C{set} stores, C{get} reads (C{null} when absent), C{all} returns
        everything, C{reset} forgets everything and says how much it forgot.
        """
        self.assertIs(self.call("set", "a", 1), True)
        self.assertIs(self.call("set", "b", [2]), True)
        self.assertEqual(self.call("get", "a"), 1)
        self.assertIsNone(self.call("get", "zz"))
        self.assertEqual(self.call("all"), {"a": 1, "b": [2]})
        self.assertEqual(self.call("reset"), 2)
        self.assertEqual(self.call("all"), {})

    def test_keysMustBeStrings(self):
        """
        A key that is not a string is a C{bad_args} fault.
        """
        failure = self.failureResultOf(self.connection.call("get", 1), Fault)
        self.assertEqual(failure.value.code, "bad_args")

    def test_bounded(self):
        """
        The store holds at most C{max_keys} keys: one more is a C{full}
        fault, while overwriting an existing key still works.
        """
        self.call("set", "a", 1)
        self.call("set", "b", 1)
        failure = self.failureResultOf(self.connection.call("set", "c", 1), Fault)
        self.assertEqual(failure.value.code, "full")
        self.assertIs(self.call("set", "a", 2), True)

    def test_subscribe(self):
        """
        After C{subscribe}, every C{set} and C{reset} arrives as a
        C{changed} event on that connection, and not on others.
        """
        other = connectDaemon(self.connection.daemon)
        self.assertIs(self.call("subscribe"), True)
        self.call("set", "a", 1)
        self.call("reset")
        self.assertEqual(
            self.connection.events, [("changed", ["a", 1]), ("changed", [None, None])]
        )
        self.assertEqual(other.events, [])
