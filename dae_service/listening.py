"""
L{ListenOutcome}: what a service's listen came to, for those who wait on it
(C{whenListening}).  Shared by every service here that listens on an
endpoint: daemons, factory servers, the web dashboard.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

__all__ = ["ListenOutcome"]


class ListenOutcome:
    """
    The listening port once the listen succeeded, or why it failed; and the
    Deferreds of those waiting to know.

    @ivar port: the L{IListeningPort}, while listening.
    @ivar failure: why the last listen failed, if it did.
    """

    def __init__(self) -> None:
        self.port: Any = None
        self.failure: Optional[Failure] = None
        self._waiters: list[Deferred] = []

    def succeeded(self, port: Any) -> Any:
        """
        The listen succeeded: tell every waiter.  @return: C{port}.
        """
        self.port, self.failure = port, None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)
        return port

    def failed(self, failure: Failure) -> None:
        """
        The listen failed: tell every waiter.
        """
        self.failure = failure
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)

    def when(self) -> Deferred:
        """
        @return: a Deferred firing with the listening port, or failing with
            why the service could not listen.
        """
        if self.port is not None:
            return succeed(self.port)
        if self.failure is not None:
            return fail(self.failure)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def release(self) -> Any:
        """
        Forget the port (the service is stopping).  @return: the port it
        had, or L{None}.
        """
        port, self.port = self.port, None
        return port
