"""
A foreign daemon in the style of the original Node.js C{dae}, for the
integration tests: a standalone program (standard library only, no
dae_service import) that the manager runs as a C{command}.

It listens on 127.0.0.1, on a port the kernel picks, and answers, Node
style (no delimiter after a packet, one packet per read):

    - C{dae} -> C{credential ["legacy",pid,port,null]}, then closes;
    - C{ping} -> C{ping ["pong"]};
    - anything else: no reply.

SIGTERM ends it (the default action), as it would a Node process.
"""

import json
import os
import socket


def main():
    name = os.environ.get("DAE") or "legacy"
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    while True:
        connection, _ = server.accept()
        with connection:
            connection.settimeout(5)
            try:
                data = connection.recv(65536)
            except OSError:
                continue
            command = data.split(b" ", 1)[0].strip()
            if command == b"dae":
                credential = [name, os.getpid(), port, None]
                reply = b"credential " + json.dumps(credential, separators=(",", ":")).encode()
            elif command == b"ping":
                reply = b'ping ["pong"]'
            else:
                continue
            try:
                connection.sendall(reply)
            except OSError:
                pass


if __name__ == "__main__":
    main()
