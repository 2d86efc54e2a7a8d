"""
A C{twisted.web} site to run as a pool (C{factory =
"dae_service.examples.web:makeSite"}), and the hello-world of the pool
benchmark (C{bench/pool.py}):

  - C{GET /} answers C{hello, world};
  - C{GET /burn} burns C{burn_ms} (setting, default 20) milliseconds of
    CPU before answering, a stand-in for CPU-bound work;
  - C{GET /peer} answers the client's address as this process sees it,
    C{HOST PORT PID}, to show that a pool worker sees the real client;
  - C{GET /slow?ms=N} answers after N ms (at most 60 000) without holding
    the CPU, to show that a draining worker finishes what is in flight.
"""

import os
import time

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

__all__ = ["Hello", "Burn", "Peer", "Slow", "QuietSite", "makeSite"]

#: The longest C{/slow} wait, in ms.
MAX_SLOW_MS = 60_000


class Hello(Resource):
    """
    C{hello, world}.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"hello, world\n"


class Burn(Resource):
    """
    Burns C{milliseconds} of CPU time, then answers C{burnt N ms}.
    """

    isLeaf = True

    def __init__(self, milliseconds):
        super().__init__()
        self.seconds = milliseconds / 1000

    def render_GET(self, request):
        end = time.process_time() + self.seconds
        while time.process_time() < end:
            pass
        request.setHeader(b"content-type", b"text/plain")
        return b"burnt %d ms\n" % round(self.seconds * 1000)


class Peer(Resource):
    """
    The client's address as this process sees it, and this process's pid.
    """

    isLeaf = True

    def render_GET(self, request):
        peer = request.getClientAddress()
        request.setHeader(b"content-type", b"text/plain")
        return f"{peer.host} {peer.port} {os.getpid()}\n".encode("ascii")


class Slow(Resource):
    """
    Answers C{slept N ms} after C{?ms=N}, off the CPU.
    """

    isLeaf = True

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def render_GET(self, request):
        try:
            ms = min(max(int(request.args.get(b"ms", [b"100"])[0]), 0), MAX_SLOW_MS)
        except ValueError:
            ms = 100
        request.setHeader(b"content-type", b"text/plain")
        call = self.clock.callLater(ms / 1000, self._answer, request, ms)
        request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        return NOT_DONE_YET

    def _answer(self, request, ms):
        request.write(b"slept %d ms\n" % ms)
        request.finish()


class QuietSite(Site):
    """
    A L{Site} without an access log: under a manager each log line would
    cross a pipe to it, which puts the manager on the data path of every
    request.  (Give a C{logPath} to keep an access log in a file instead.)
    """

    def log(self, request):
        pass


def makeSite(settings, reactor=None):
    """
    The example site.  C{settings}: C{burn_ms} (default 20).

    @param reactor: for timeouts and C{/slow}; the global one by default
        (this is called at the edge, in the process that serves).
    """
    if reactor is None:
        from twisted.internet import reactor
    root = Resource()
    root.putChild(b"", Hello())
    root.putChild(b"burn", Burn(float(settings.get("burn_ms", 20))))
    root.putChild(b"peer", Peer())
    root.putChild(b"slow", Slow(reactor))
    return QuietSite(root, reactor=reactor)
