"""
Tests for L{dae_service.commands}: the C{@command} decorator, argument-count
introspection and the command table of a daemon class.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from dae_service import Daemon, command
from dae_service.commands import RESERVED_NAMES, CommandSpec, arity, collectCommands


class ArityTests(SynchronousTestCase):
    """
    L{arity} counts the positional arguments a packet may fill.
    """

    def test_plain(self) -> None:
        """
        Every positional parameter without a default is required.
        """

        def f(self, a, b):
            pass

        self.assertEqual(arity(f, 1), (2, 2))

    def test_defaults(self) -> None:
        """
        Parameters with defaults count toward the maximum only.
        """

        def f(self, a, b=1, c=None):
            pass

        self.assertEqual(arity(f, 1), (1, 3))

    def test_positionalOnly(self) -> None:
        """
        Positional-only parameters count like the others.
        """

        def f(self, a, /, b, c=2):
            pass

        self.assertEqual(arity(f, 1), (2, 3))

    def test_varArgs(self) -> None:
        """
        C{*args} removes the maximum.
        """

        def f(self, a, *rest):
            pass

        def g(self, *rest):
            pass

        self.assertEqual(arity(f, 1), (1, None))
        self.assertEqual(arity(g, 1), (0, None))

    def test_keywordOnlyWithDefault(self) -> None:
        """
        Keyword-only parameters with a default and C{**kwargs} are ignored:
        packets carry positional arguments only.
        """

        def f(self, a, *, flag=False, **options):
            pass

        self.assertEqual(arity(f, 1), (1, 1))

    def test_keywordOnlyWithoutDefault(self) -> None:
        """
        A keyword-only parameter without a default, which no packet could
        fill, is a L{TypeError} naming it.
        """

        def f(self, a, *, needed):
            pass

        e = self.assertRaises(TypeError, arity, f, 1)
        self.assertIn("needed", str(e))

    def test_skip(self) -> None:
        """
        The first C{skip} parameters (C{self}, a connection) are not counted.
        """

        def f(self, connection, a, b=2):
            pass

        self.assertEqual(arity(f, 2), (1, 2))
        self.assertEqual(arity(f, 0), (3, 4))

    def test_nothing(self) -> None:
        """
        A method taking only C{self} takes no arguments.
        """

        def f(self):
            pass

        self.assertEqual(arity(f, 1), (0, 0))


class CommandDecoratorTests(SynchronousTestCase):
    """
    C{@command}, bare and with options, as seen by L{collectCommands}.
    """

    def test_bare(self) -> None:
        """
        Bare C{@command} declares a command named after the method, whose
        reply carries the same name, without the connection.
        """

        class D:
            @command
            def get(self, key, default=None):
                return key

            def helper(self):
                pass

        self.assertEqual(
            collectCommands(D), {"get": CommandSpec("get", "get", 1, 2, "get", False)}
        )

    def test_returnsFunction(self) -> None:
        """
        The decorator returns the method itself, still callable directly.
        """

        def f(self, x):
            return x * 2

        self.assertIs(command(f), f)
        self.assertIs(command(name="g")(f), f)
        self.assertEqual(f(None, 21), 42)

    def test_name(self) -> None:
        """
        C{name=} sets the wire name; the reply follows it.
        """

        class D:
            @command(name="get-all")
            def getAll(self):
                return []

        self.assertEqual(
            collectCommands(D), {"get-all": CommandSpec("get-all", "getAll", 0, 0, "get-all")}
        )

    def test_reply(self) -> None:
        """
        C{reply=} sets the reply packet's name.
        """

        class D:
            @command(reply="daemons")
            def list(self):
                return []

        self.assertEqual(collectCommands(D)["list"].reply, "daemons")

    def test_connection(self) -> None:
        """
        C{connection=True} marks a handler that takes the connection before
        the packet's arguments, which then does not count.
        """

        class D:
            @command(connection=True)
            def subscribe(self, connection, topic, *more):
                pass

        self.assertEqual(
            collectCommands(D)["subscribe"],
            CommandSpec("subscribe", "subscribe", 1, None, "subscribe", True),
        )

    def test_reservedNames(self) -> None:
        """
        The built-in commands and their reply names cannot be declared, nor
        C{error}, which crashes Node.js peers.
        """
        self.assertEqual(
            RESERVED_NAMES,
            {"dae", "whois", "options", "fault", "error", "credential", "commands"},
        )
        for name in sorted(RESERVED_NAMES):
            D = type("D", (), {"f": command(name=name)(lambda self: None)})
            e = self.assertRaises(TypeError, collectCommands, D)
            self.assertIn("reserved", str(e))

    def test_builtinsAllowed(self) -> None:
        """
        Names the class provides as built-ins may be declared by it.
        """

        class D:
            @command
            def whois(self):
                pass

        self.assertIn("whois", collectCommands(D, frozenset({"whois"})))

    def test_daemonRejectsReservedAtClassCreation(self) -> None:
        """
        A L{Daemon} subclass declaring a reserved reply name fails when the
        class is created.
        """

        def define():
            class Bad(Daemon):
                @command
                def fault(self):
                    pass

        self.assertRaises(TypeError, define)

    def test_invalidName(self) -> None:
        """
        A name that is not a valid packet name is a L{TypeError}.
        """
        for name in ("a b", "", "n" * 129, "x\n"):
            D = type("D", (), {"f": command(name=name)(lambda self: None)})
            self.assertRaises(TypeError, collectCommands, D)

    def test_invalidReplyName(self) -> None:
        """
        A reply name that is not a valid packet name is a L{TypeError}: the
        daemon could never send it.
        """
        D = type("D", (), {"f": command(reply="two words")(lambda self: None)})
        e = self.assertRaises(TypeError, collectCommands, D)
        self.assertIn("reply", str(e))

    def test_keywordOnlyRejected(self) -> None:
        """
        A command with a keyword-only parameter without a default is refused
        when the table is built.
        """

        class D:
            @command
            def f(self, *, k):
                pass

        self.assertRaises(TypeError, collectCommands, D)

    def test_subclassOverride(self) -> None:
        """
        A subclass inherits its bases' commands, overrides one by declaring
        the same name, and may add its own; the base is unchanged.
        """

        class Base(Daemon):
            @command
            def get(self, key):
                pass

            @command
            def put(self, key, value):
                pass

        class Sub(Base):
            @command
            def get(self, key, default=None):
                pass

            @command(name="put")
            def store(self, key, value, ttl=None):
                pass

            @command
            def drop(self, key):
                pass

        self.assertEqual(Base.commands["get"].maximum, 1)
        self.assertEqual(Base.commands["put"].attribute, "put")
        self.assertEqual(sorted(Sub.commands), ["drop", "get", "put"])
        self.assertEqual(Sub.commands["get"].maximum, 2)
        self.assertEqual(Sub.commands["put"], CommandSpec("put", "store", 2, 3, "put"))
        self.assertEqual(Daemon.commands, {})


class CountProblemTests(SynchronousTestCase):
    """
    L{CommandSpec.countProblem} explains a wrong number of arguments.
    """

    def spec(self, required: int, maximum: int | None) -> CommandSpec:
        """
        A C{get} command taking C{required} to C{maximum} arguments.
        """
        return CommandSpec("get", "get", required, maximum, "get")

    def test_fits(self) -> None:
        """
        A count within the range is no problem.
        """
        self.assertIsNone(self.spec(1, 1).countProblem(1))
        self.assertIsNone(self.spec(0, 2).countProblem(0))
        self.assertIsNone(self.spec(0, 2).countProblem(2))
        self.assertIsNone(self.spec(1, None).countProblem(1000))

    def test_exact(self) -> None:
        """
        A fixed count is stated once, singular or plural.
        """
        self.assertEqual(self.spec(1, 1).countProblem(0), "get takes 1 argument (0 given)")
        self.assertEqual(self.spec(2, 2).countProblem(3), "get takes 2 arguments (3 given)")
        self.assertEqual(self.spec(0, 0).countProblem(1), "get takes 0 arguments (1 given)")

    def test_range(self) -> None:
        """
        A range is stated as C{N to M}.
        """
        self.assertEqual(
            self.spec(1, 3).countProblem(4), "get takes 1 to 3 arguments (4 given)"
        )

    def test_atLeast(self) -> None:
        """
        Without a maximum, the minimum is stated as C{at least N}.
        """
        self.assertEqual(
            self.spec(2, None).countProblem(1), "get takes at least 2 arguments (1 given)"
        )
        self.assertEqual(
            self.spec(1, None).countProblem(0), "get takes at least 1 argument (0 given)"
        )


class ReservedErrorTests(SynchronousTestCase):
    """
    C{error} is reserved: a packet of that name crashes Node.js peers.
    """

    def test_errorCommandRejected(self):
        """
        Declaring a command named C{error} fails at class creation.
        """
        from dae_service import Daemon

        def declare():
            class Bad(Daemon):
                @command
                def error(self):
                    pass

        self.assertRaises(TypeError, declare)

    def test_nonAsciiCommandRejected(self):
        """
        Command names are ASCII, since their replies carry them.
        """
        from dae_service import Daemon

        def declare():
            class Bad(Daemon):
                @command(name="caf\u00e9")
                def cafe(self):
                    pass

        self.assertRaises(TypeError, declare)
