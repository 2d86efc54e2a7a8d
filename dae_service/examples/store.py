"""
A key-value daemon with the commands of the Node.js ``dae`` sample:
C{set}, C{get}, C{all} and C{reset}; plus C{subscribe}, after which the
connection receives a C{changed [key, value]} event for every C{set} (and
C{changed [null, null]} on C{reset}).
"""

from dae_service import Daemon, Fault, command


class Store(Daemon):
    """
    Keeps string keys and JSON values in memory.

    Settings: C{max_keys} (default 100000) bounds the store; a C{set} of a
    new key beyond it is a C{full} fault.
    """

    def startService(self):
        self.data = {}
        self.subscribers = set()
        self.maxKeys = int(self.settings.get("max_keys", 100000))
        super().startService()

    def _check(self, key):
        if not isinstance(key, str):
            raise Fault("bad_args", "key must be a string")

    @command
    def set(self, key, value):
        """
        Store C{value} under C{key}; answers C{true}.
        """
        self._check(key)
        if key not in self.data and len(self.data) >= self.maxKeys:
            raise Fault("full", f"the store holds {self.maxKeys} keys already")
        self.data[key] = value
        self._notify(key, value)
        return True

    @command
    def get(self, key):
        """
        The value under C{key}, or C{null}.
        """
        self._check(key)
        return self.data.get(key)

    @command
    def all(self):
        """
        Every key and value, as one object.
        """
        return dict(self.data)

    @command
    def reset(self):
        """
        Forget every key; answers how many there were.
        """
        count = len(self.data)
        self.data.clear()
        self._notify(None, None)
        return count

    @command(connection=True)
    def subscribe(self, connection):
        """
        Send this connection a C{changed} event for every change.
        """
        if connection not in self.subscribers:
            self.subscribers.add(connection)
            connection.whenClosed().addCallback(lambda _: self.subscribers.discard(connection))
        return True

    def _notify(self, key, value):
        for connection in list(self.subscribers):
            connection.sendEvent("changed", [key, value])
