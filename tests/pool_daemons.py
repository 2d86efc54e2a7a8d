"""
Daemons that the pool integration tests (L{tests.test_pool_integration})
run as pools of real worker processes.
"""

import os

from twisted.internet.task import deferLater

from dae_service import Daemon, command


class Peer(Daemon):
    """
    Tells a client which worker serves it and from where it sees it.
    """

    @command(connection=True)
    def peer(self, connection):
        """
        C{[host, port, pid]}: the client's address as this worker sees it,
        and this worker's pid.
        """
        return [connection.peer.host, connection.peer.port, os.getpid()]

    @command
    def slow(self, ms):
        """
        Answers this worker's pid after C{ms} milliseconds (off the CPU):
        work in flight.
        """
        return deferLater(self.reactor, min(float(ms), 10_000) / 1000, os.getpid)
