"""
Declaring commands: the L{command} decorator, argument-count introspection,
and the table of a daemon class's commands.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, overload

from .wire import validName

__all__ = ["command", "CommandSpec", "collectCommands", "arity", "RESERVED_NAMES"]

_MARK = "__dae_command__"

#: Names a user command may not take: the built-ins and the reply names a
#: guest must be able to tell apart from every command's own.
#: C{error} too: a packet of that name makes a Node.js peer throw and exit.
RESERVED_NAMES = frozenset(
    {"dae", "whois", "options", "fault", "error", "credential", "commands"}
)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommandSpec:
    """
    One declared command.

    @ivar name: the command name on the wire.
    @ivar attribute: the name of the method implementing it.
    @ivar required: how many arguments it requires (what C{options} reports).
    @ivar maximum: how many it accepts at most, L{None} for no limit.
    @ivar reply: the name of its reply packet (the command's own name except
        for Node-compatible built-ins such as the manager's C{list}).
    @ivar connection: whether the handler is passed the connection it is
        called on, before the packet's arguments.
    """

    name: str
    attribute: str
    required: int
    maximum: Optional[int]
    reply: str
    connection: bool = False

    def countProblem(self, count: int) -> Optional[str]:
        """
        Explain why C{count} arguments do not fit, or return L{None}.
        """
        if count >= self.required and (self.maximum is None or count <= self.maximum):
            return None
        if self.maximum is None:
            expected = f"at least {self.required}"
        elif self.maximum == self.required:
            expected = str(self.required)
        else:
            expected = f"{self.required} to {self.maximum}"
        plural = "" if expected in ("1", "at least 1") else "s"
        return f"{self.name} takes {expected} argument{plural} ({count} given)"


@dataclass(frozen=True)
class _Mark:
    name: Optional[str]
    reply: Optional[str]
    connection: bool


@overload
def command(func: F) -> F: ...


@overload
def command(
    *, name: Optional[str] = None, reply: Optional[str] = None, connection: bool = False
) -> Callable[[F], F]: ...


def command(func=None, *, name=None, reply=None, connection=False):
    """
    Declare a method of a L{dae_service.Daemon} subclass as a command.

    Use it bare (C{@command}) or with options (C{@command(name="get-all")}).
    The handler receives the packet's arguments positionally and returns the
    reply value, a L{twisted.internet.defer.Deferred} of it, or a coroutine;
    it may raise L{dae_service.Fault} to answer with a fault.

    @param name: the command name on the wire; the method's name by default.
    @param reply: the reply packet's name; the command's name by default.
        Only Node-compatible built-ins should need it.
    @param connection: when true, the handler is called with the connection
        (an L{dae_service.interfaces.IConnection}) before the arguments, e.g.
        to send it events later.
    """

    def mark(f):
        setattr(f, _MARK, _Mark(name, reply, connection))
        return f

    if func is not None:
        return mark(func)
    return mark


def arity(func: Callable[..., Any], skip: int = 0) -> tuple[int, Optional[int]]:
    """
    The (required, maximum) number of positional arguments of C{func}, after
    skipping its first C{skip} parameters (C{self}, a connection).

    @raise TypeError: if C{func} has keyword-only parameters without a
        default, which no packet could fill.
    """
    required = 0
    maximum: Optional[int] = 0
    params = list(inspect.signature(func).parameters.values())[skip:]
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if maximum is not None:
                maximum += 1
            if p.default is p.empty:
                required += 1
        elif p.kind is p.VAR_POSITIONAL:
            maximum = None
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise TypeError(
                f"{func.__qualname__}: keyword-only parameter {p.name!r} "
                "needs a default; packets carry positional arguments only"
            )
    return required, maximum


def collectCommands(cls: type, builtins: frozenset = frozenset()) -> dict[str, CommandSpec]:
    """
    Gather the commands declared on C{cls} and its bases (subclasses
    override by command name).

    @param builtins: names the class itself provides as built-ins, which
        marked methods may therefore use.
    @raise TypeError: for an invalid or reserved name, or an uncallable
        signature.
    """
    specs: dict[str, CommandSpec] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            mark = getattr(value, _MARK, None)
            if not isinstance(mark, _Mark):
                continue
            name = attribute if mark.name is None else mark.name
            if not (validName(name) and name.isascii()):
                raise TypeError(f"{cls.__qualname__}.{attribute}: invalid command name {name!r}")
            if mark.reply is not None and not (validName(mark.reply) and mark.reply.isascii()):
                raise TypeError(
                    f"{cls.__qualname__}.{attribute}: invalid reply name {mark.reply!r}"
                )
            if name in RESERVED_NAMES and name not in builtins:
                raise TypeError(
                    f"{cls.__qualname__}.{attribute}: {name!r} is reserved by the protocol"
                )
            required, maximum = arity(value, 2 if mark.connection else 1)
            specs[name] = CommandSpec(
                name, attribute, required, maximum, mark.reply or name, mark.connection
            )
    return specs
