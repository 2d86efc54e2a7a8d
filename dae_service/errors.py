"""
Exceptions shared by daemons and guests.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["DaeError", "Fault", "CallTimeout", "GuestConnectionLost", "TooManyPending"]


class DaeError(Exception):
    """
    Base class of every dae_service error.
    """


class Fault(DaeError):
    """
    A Common TCP fault: raised by a command handler to answer with a
    C{fault} packet of the given code, and raised by a guest when a daemon
    answers a call with one.

    @ivar code: the fault code, e.g. C{"not_found"} or C{"bad_args"}.
    @ivar message: a short explanation, safe to show to the peer.
    @ivar command: the command the fault answers, or L{None}.
    """

    def __init__(self, code: str, message: str = "", command: Optional[str] = None):
        super().__init__(code, message, command)
        self.code = code
        self.message = message
        self.command = command

    def __str__(self) -> str:
        where = f" ({self.command})" if self.command else ""
        return f"{self.code}{where}: {self.message}"

    def toDict(self) -> dict:
        """
        The fault as the object carried by a C{fault} packet.
        """
        return {"command": self.command, "code": self.code, "message": self.message}


class CallTimeout(DaeError):
    """
    A guest's call got no reply within its timeout.
    """


class GuestConnectionLost(DaeError):
    """
    The connection to the daemon was lost (or could not be made) before the
    call was answered.
    """


class TooManyPending(DaeError):
    """
    A guest already has its maximum number of unanswered calls.
    """
