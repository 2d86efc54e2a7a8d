"""
A foreign program that reports readiness the systemd way: it listens on a
loopback port, then sends READY=1 to $NOTIFY_SOCKET.  Standard library only.
"""

import os
import signal
import socket
import sys

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
path = os.environ.get("NOTIFY_SOCKET")
if path:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"READY=1\nSTATUS=listening on %d\n" % server.getsockname()[1], path)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    connection, _ = server.accept()
    connection.sendall(b"hello\n")
    connection.close()
