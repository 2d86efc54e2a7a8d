"""
An echo daemon: C{echo [value]} answers C{echo [value]}.
"""

from dae_service import Daemon, command


class Echo(Daemon):
    """
    Answers every C{echo} with its argument.
    """

    @command
    def echo(self, value):
        """
        Return C{value} unchanged.
        """
        return value
