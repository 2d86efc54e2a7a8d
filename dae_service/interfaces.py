"""
The contracts between the pieces of dae_service, as zope interfaces.
"""

from zope.interface import Attribute, Interface

__all__ = [
    "ICommandRouter",
    "IConnection",
    "IDaemon",
    "IDaemonType",
    "IGuest",
    "IChildListener",
    "ILauncher",
]


class IConnection(Interface):
    """
    The daemon's side of one client connection.
    """

    peer = Attribute("The client's address (an IAddress).")
    closed = Attribute("True once the connection is gone.")

    def sendEvent(name, args):
        """
        Push an unsolicited packet (an event) to this client now.

        @param name: the event name; it must not be a command's reply name.
        @param args: a list of JSON-serialisable values.
        @raise ValueError: for a name that could be mistaken for a reply.
        """

    def whenClosed():
        """
        @return: a Deferred that fires (with None) when the connection is gone.
        """


class ICommandRouter(Interface):
    """
    Knows command names: turns one decoded packet into its reply.
    """

    def dispatch(connection, name, args):
        """
        Run command C{name}.

        @param connection: the L{IConnection} the packet came from.
        @param args: the decoded argument list.
        @return: the encoded reply packet (bytes), or a Deferred of it.
        @raise dae_service.errors.Fault: to answer with a fault instead.
        """

    def closesConnection(name):
        """
        @return: True when the reply to C{name} is the last one on its
            connection (the Node C{dae} command).
        """

    def isEventName(name):
        """
        @return: True when C{name} may be used for an event (it is no
            command's reply name).
        """


class IDaemon(Interface):
    """
    A named service listening on a Common TCP endpoint.
    """

    name = Attribute("The daemon's name.")
    listen = Attribute("The server endpoint string it listens on.")
    port = Attribute("The TCP port it listens on, or None (not yet, or not TCP).")
    created = Attribute("When it started, in ms since the epoch (Node's 'created').")

    def whenListening():
        """
        @return: a Deferred firing with the listening port object once it
            listens, or failing if it cannot.
        """

    def credential():
        """
        @return: the C{whois} entry: a dict with C{name}, C{pid}, C{port},
            C{created}.
        """


class IGuest(Interface):
    """
    A client of one daemon.
    """

    def call(name, *args, timeout=None):
        """
        Send command C{name} with C{args}; replies are matched by order.

        @return: a Deferred firing with the reply value (the first element of
            the reply's argument array; the whole array for built-ins), or
            failing with L{dae_service.errors.Fault},
            L{dae_service.errors.CallTimeout} or
            L{dae_service.errors.GuestConnectionLost}.
        """

    def addEventListener(name, listener):
        """
        Call C{listener(args)} for every event packet named C{name}
        (C{"*"}: every event, called as C{listener(name, args)}).
        """

    def close():
        """
        Disconnect; pending calls fail with GuestConnectionLost.

        @return: a Deferred that fires once disconnected.
        """


class IDaemonType(Interface):
    """
    A kind of daemon that configs can name (C{daemon = "name"}), offered by
    a Twisted plugin: put a L{dae_service.loader.DaemonType} in a module of
    your package's C{twisted/plugins/} directory.
    """

    name = Attribute("The name configs use; unique across installed plugins.")
    description = Attribute("One line for humans.")

    def load():
        """
        Import and return the L{dae_service.Daemon} subclass.
        """


class IChildListener(Interface):
    """
    What a launcher tells about one child process it started (implemented
    by the supervisor of that child).
    """

    def childStarted(process):
        """
        The child was spawned.

        @param process: its L{twisted.internet.interfaces.IProcessTransport}
            (C{process.pid} is the pid).
        """

    def childReported(message):
        """
        The child sent a report on its private channel.

        @param message: a dict; C{message["event"]} is C{"ready"} (with
            C{"pid"}, C{"port"}, C{"created"}) or C{"failed"} (with
            C{"error"}, a one-line reason), or another event a later
            version adds (ignore unknown ones).
        """

    def childOutput(stream, line):
        """
        One line the child wrote on C{stream} (C{"stdout"} or
        C{"stderr"}), decoded, without its line end, at most 64 KiB.
        """

    def childNotified(state):
        """
        A C{NOTIFY_SOCKET} message from a foreign child, as a dict of its
        C{KEY=VALUE} lines (e.g. C{{"READY": "1"}}).
        """

    def childExited(exitCode, signal):
        """
        The child is gone and reaped: exactly one of C{exitCode} (int) and
        C{signal} (signal number) is not None.
        """


class ILauncher(Interface):
    """
    Starts child processes.  Supervision, readiness and the registry depend
    only on this, so a faster launcher (a pre-imported fork server) can
    replace the default one.
    """

    def launch(spec, listener):
        """
        Start the child described by C{spec} (a
        L{dae_service.launcher.LaunchSpec}), in a process group of its own,
        reporting to C{listener} (an L{IChildListener}).

        @return: the L{twisted.internet.interfaces.IProcessTransport}.
        @raise OSError: if the process cannot be started at all.
        """

    def signal(process, signalName):
        """
        Send C{signalName} (e.g. C{"TERM"}, C{"KILL"}) to the child's whole
        process group (falling back to the process alone).  A child already
        gone is not an error.
        """
