"""
Which TCP ports a process (and, by default, its descendants) listens on,
learnt from that process's own sockets in procfs: a foreign child's port,
when it does not say.

Only the process's own descriptors are looked at: its socket inodes come
from C{/proc/<pid>/fd}, and only listening rows of C{/proc/<pid>/net/tcp}
and C{tcp6} (the child's network-namespace view) whose inode is one of
them count.  A port some other process listens on is never reported.

Everything here reads procfs, which the kernel generates from memory: no
disk I/O and no blocking, so it is fine to call from the reactor thread
(it costs a few hundred microseconds per process).  Linux only.  The
functions take a C{procRoot} so tests can point them at a fake tree.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Iterable

__all__ = ["listeningAddresses", "listeningPorts", "socketInodes", "descendants"]

_TCP_LISTEN = "0A"
_SOCKET_PREFIX = "socket:["


def socketInodes(pid: int, procRoot: str = "/proc") -> set[int]:
    """
    The inodes of the sockets process C{pid} holds open.

    @raise ProcessLookupError: if there is no such process.
    @raise PermissionError: if its descriptors may not be read.
    """
    fdDirectory = os.path.join(procRoot, str(pid), "fd")
    try:
        names = os.listdir(fdDirectory)
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    inodes = set()
    for name in names:
        try:
            target = os.readlink(os.path.join(fdDirectory, name))
        except OSError:
            # Closed since we listed the directory.
            continue
        if target.startswith(_SOCKET_PREFIX) and target.endswith("]"):
            try:
                inodes.add(int(target[len(_SOCKET_PREFIX) : -1]))
            except ValueError:
                continue
    return inodes


def descendants(pid: int, procRoot: str = "/proc") -> list[int]:
    """
    The children of C{pid}, their children, and so on (from
    C{/proc/<pid>/task/<tid>/children}); processes that exit meanwhile are
    skipped.  Empty where the kernel lacks C{CONFIG_PROC_CHILDREN}.
    """
    found: list[int] = []
    seen = {pid}
    pending = [pid]
    while pending:
        parent = pending.pop()
        for child in _children(parent, procRoot):
            if child not in seen:
                seen.add(child)
                found.append(child)
                pending.append(child)
    return found


def _children(pid: int, procRoot: str) -> Iterable[int]:
    taskDirectory = os.path.join(procRoot, str(pid), "task")
    try:
        tasks = os.listdir(taskDirectory)
    except OSError:
        return []
    children = []
    for task in tasks:
        try:
            with open(os.path.join(taskDirectory, task, "children")) as f:
                children.extend(int(word) for word in f.read().split())
        except (OSError, ValueError):
            continue
    return children


def _decodeAddress(text: str) -> str:
    """
    An address as procfs prints it (each 32-bit word in host byte order, in
    hex) as a string.
    """
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def _listeningRows(path: str, inodes: set[int]) -> set[tuple[str, int]]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        # No IPv6 in this kernel, or the process is gone.
        return set()
    found = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        try:
            inode = int(fields[9])
            if inode not in inodes:
                continue
            host, _, port = fields[1].rpartition(":")
            found.add((_decodeAddress(host), int(port, 16)))
        except ValueError:
            continue
    return found


def _namespace(pid: int, procRoot: str) -> str:
    try:
        return os.readlink(os.path.join(procRoot, str(pid), "ns", "net"))
    except OSError:
        return f"pid:{pid}"


def listeningAddresses(
    pid: int, includeChildren: bool = True, procRoot: str = "/proc"
) -> set[tuple[str, int]]:
    """
    The C{(host, port)} pairs on which C{pid} (and its descendants, unless
    C{includeChildren} is false) has listening TCP sockets; C{host} is
    C{"0.0.0.0"}, C{"::"}, C{"127.0.0.1"}...

    @raise ProcessLookupError: if C{pid} does not exist.
    @raise PermissionError: if C{pid}'s descriptors may not be read (a
        descendant that may not be read is skipped).
    """
    inodesByNamespace: dict[str, set[int]] = {}
    readerByNamespace: dict[str, int] = {}
    pids = [pid] + (descendants(pid, procRoot) if includeChildren else [])
    for each in pids:
        try:
            inodes = socketInodes(each, procRoot)
        except (ProcessLookupError, PermissionError):
            if each == pid:
                raise
            continue
        if not inodes:
            continue
        namespace = _namespace(each, procRoot)
        inodesByNamespace.setdefault(namespace, set()).update(inodes)
        readerByNamespace.setdefault(namespace, each)
    found: set[tuple[str, int]] = set()
    for namespace, inodes in inodesByNamespace.items():
        netDirectory = os.path.join(procRoot, str(readerByNamespace[namespace]), "net")
        for table in ("tcp", "tcp6"):
            found |= _listeningRows(os.path.join(netDirectory, table), inodes)
    return found


def listeningPorts(pid: int, includeChildren: bool = True, procRoot: str = "/proc") -> set[int]:
    """
    The TCP ports C{pid} (and its descendants) listens on; see
    L{listeningAddresses}.
    """
    return {port for _, port in listeningAddresses(pid, includeChildren, procRoot)}
