"""
Readiness of foreign programs (a C{command} in the config), which cannot
report over the private channel: ready is a listening socket of the child's
own that answers C{dae}, or C{READY=1} on its C{NOTIFY_SOCKET}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from . import wire

__all__ = ["CommandProbe", "probeDae"]

#: How long one C{dae} probe of a port may take.
PROBE_TIMEOUT = 2.0


class _DaeProbe(Protocol):
    """
    Sends C{dae []} and waits for a C{credential} packet.
    """

    def __init__(self) -> None:
        self.answered: Deferred = Deferred()
        self._parser = wire.PacketParser(64 * 1024)

    def connectionMade(self) -> None:
        self.transport.write(b"dae []\n")

    def dataReceived(self, data: bytes) -> None:
        for item in self._parser.feed(data):
            if isinstance(item, wire.Packet) and item.name == "credential":
                if not self.answered.called:
                    self.answered.callback(True)
                self.transport.loseConnection()
                return

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answered.called:
            self.answered.callback(False)


def probeDae(reactor: Any, host: str, port: int, timeout: float = PROBE_TIMEOUT) -> Deferred:
    """
    @return: a Deferred firing with True if C{host:port} answers C{dae} with
        a credential within C{timeout}, else False (never fails).
    """
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    probe = _DaeProbe()
    factory = Factory.forProtocol(lambda: probe)
    factory.noisy = False
    d = endpoint.connect(factory)
    timer = reactor.callLater(timeout, lambda: probe.transport and probe.transport.abortConnection())

    def connected(_: Any) -> Deferred:
        return probe.answered

    def done(result: Any) -> bool:
        if timer.active():
            timer.cancel()
        return result is True

    return d.addCallback(connected).addBoth(done)


class CommandProbe:
    """
    Watches a freshly spawned foreign child until it is ready: polls its own
    listening sockets (procfs; interval doubling from 20 ms to 500 ms) and
    asks each new port C{dae}; or takes C{READY=1} from its notify socket.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        supervisor: Any,
        pid: int,
        listeningPorts: Callable[[int], set],
        probe: Callable[[Any, str, int], Deferred] = probeDae,
    ) -> None:
        self._reactor = reactor
        self._supervisor = supervisor
        self._pid = pid
        self._listeningPorts = listeningPorts
        self._probe = probe
        self._interval = 0.02
        self._tried: set[int] = set()
        self._stopped = False
        self._call = reactor.callLater(0, self._poll)

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def notifiedReady(self) -> None:
        """
        The child said C{READY=1}: ready, on its first listening port if any.
        """
        if self._stopped:
            return
        ports = sorted(self._ports())
        self._done(ports[0] if ports else None)

    def _ports(self) -> set:
        try:
            return set(self._listeningPorts(self._pid))
        except OSError:
            return set()

    def _done(self, port: Optional[int]) -> None:
        if not self._stopped:
            self.stop()
            self._supervisor.childProbed(port)

    def _poll(self) -> None:
        self._call = None
        if self._stopped:
            return
        for port in sorted(self._ports() - self._tried):
            self._tried.add(port)
            self._probe(self._reactor, "127.0.0.1", port).addCallback(self._answered, port)
        self._interval = min(self._interval * 2, 0.5)
        self._call = self._reactor.callLater(self._interval, self._poll)

    def _answered(self, ok: bool, port: int) -> None:
        if ok:
            self._done(port)
        else:
            self.log.debug("port {port} of {pid} does not answer dae", port=port, pid=self._pid)
