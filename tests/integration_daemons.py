"""
Daemon classes that the integration tests (L{tests.test_integration}) name
in the trees they start.  They run inside real child processes of a real
twistd manager, so they are ordinary L{Daemon}s: no test doubles here.
"""

import time

from twisted.internet.task import deferLater

from dae_service import Daemon, command


class Faulty(Daemon):
    """
    A daemon with a handler that raises, and one that works, to show that a
    handler's exception costs one C{internal} fault and nothing more.
    """

    @command
    def boom(self):
        """
        Always raises.
        """
        raise RuntimeError("kaboom on purpose")

    @command
    def ping(self):
        """
        Answers C{ping ["pong"]}.
        """
        return "pong"


class Crasher(Daemon):
    """
    Cannot start: its C{startService} raises, so the child reports the
    failure and exits 1, every time.  The manager sees a crash loop.
    """

    def startService(self):
        raise RuntimeError("crash on purpose")


class Probe(Daemon):
    """
    A daemon that tells what the manager gave it and when it was ready.

    Settings: C{stop_delay} (seconds, default 0) makes C{stopService} take
    that long, so that a wrong stop order would show; anything else is just
    reported back by C{settings}.
    """

    def startService(self):
        self.readyAt = None
        super().startService()

        def listening(port):
            # The child reports "ready" to the manager right after this.
            self.readyAt = int(time.time() * 1000)
            return port

        self.whenListening().addCallback(listening)

    def stopService(self):
        stopped = super().stopService()
        delay = float(self.settings.get("stop_delay", 0))
        if not delay:
            return stopped
        return stopped.addCallback(lambda _: deferLater(self.reactor, delay, lambda: None))

    @command(name="settings")
    def reportSettings(self):
        """
        This daemon's C{settings} table.
        """
        return self.settings

    @command(name="ready_at")
    def readyTime(self):
        """
        When this daemon started listening, in ms since the epoch.
        """
        return self.readyAt
