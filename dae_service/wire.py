"""
Common TCP wire codec: bytes to packets and packets to bytes.

Pure: no Twisted imports, no I/O.  See PROTOCOL.md, Part 2.  A packet ends at
a line feed (optionally preceded by a carriage return), or, for Node.js peers
that send no delimiter, where the JSON array following ``NAME `` closes,
whichever comes first.  The parser never raises on peer input: every problem
becomes a L{WireError} placed in the packet stream where the bad packet was,
so a protocol can answer it in order and keep going.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, NamedTuple, Optional, Union

__all__ = [
    "Packet",
    "WireError",
    "PacketParser",
    "encode",
    "encodeFault",
    "validName",
    "DEFAULT_MAX_LENGTH",
    "MAX_NAME_LENGTH",
    "BAD_PACKET",
    "BAD_JSON",
    "BAD_ARGS",
    "UNKNOWN_COMMAND",
    "TOO_LONG",
    "INTERNAL",
    "UNAUTHORIZED",
    "NOT_FOUND",
]

#: Default limit on one packet, in bytes (PROTOCOL.md: 1 MiB).
DEFAULT_MAX_LENGTH = 1024 * 1024

#: A command name is 1 to this many characters.
MAX_NAME_LENGTH = 128

# Fault codes (PROTOCOL.md, Part 2).
BAD_PACKET = "bad_packet"
BAD_JSON = "bad_json"
BAD_ARGS = "bad_args"
UNKNOWN_COMMAND = "unknown_command"
TOO_LONG = "too_long"
INTERNAL = "internal"
UNAUTHORIZED = "unauthorized"
NOT_FOUND = "not_found"


class Packet(NamedTuple):
    """
    One decoded packet.

    @ivar name: the command (or reply, or event) name.
    @ivar args: the decoded JSON array, as a list.
    """

    name: str
    args: list


class WireError(NamedTuple):
    """
    A packet that could not be decoded, in the place the packet stood.

    @ivar code: a fault code: L{BAD_PACKET}, L{BAD_JSON}, L{BAD_ARGS} or
        L{TOO_LONG}.
    @ivar command: the packet's name when it was a valid name, else L{None}.
    @ivar message: a short human-readable explanation.
    """

    code: str
    command: Optional[str]
    message: str


def _rejectConstant(name: str) -> Any:
    # NaN and Infinity are not JSON (PROTOCOL.md); Python accepts them by
    # default, so refuse them here.
    raise ValueError(f"{name} is not valid JSON")


def _finiteFloat(text: str) -> float:
    # "1e400" is valid JSON but overflows to infinity, which could never be
    # sent back: refuse it as the syntax error NaN would be.
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_decode = json.JSONDecoder(parse_constant=_rejectConstant, parse_float=_finiteFloat)
_loads = _decode.decode
_rawDecode = _decode.raw_decode
_dumps = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, allow_nan=False
).encode

# An ASCII name with no white space or control characters: the fast path.
_ASCII_NAME = re.compile(rb"[!-~]{1,128}").fullmatch
_WHITESPACE = b" \t\r\n\x0b\x0c"
# Characters that matter when finding where a JSON array closes.
_ARRAY_TOKENS = re.compile(rb'[\[\]"\\\n]')
_NOT_WHITESPACE = re.compile(rb"[^ \t\r\n\x0b\x0c]")
_WHITESPACE_RUN = re.compile(rb"[ \t\r\n\x0b\x0c]")


def validName(name: object) -> bool:
    """
    Is C{name} a valid packet name: a L{str} of 1 to 128 characters, none of
    them white space or control characters?
    """
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return False
    for ch in name:
        if ch.isspace() or not ch.isprintable():
            return False
    return True


def encode(name: str, args: Iterable[Any] = ()) -> bytes:
    """
    Encode one packet: C{NAME SP JSON-array LF}, compact ASCII JSON.

    @raise ValueError: if C{name} is not a valid name, or C{args} holds NaN or
        Infinity.
    @raise TypeError: if C{args} holds something JSON cannot represent.
    """
    if not validName(name) or not name.isascii():
        raise ValueError(f"invalid packet name {name!r} (ASCII, no spaces or controls)")
    if not isinstance(args, list):
        args = list(args)
    return b"%s %s\n" % (name.encode("utf-8"), _dumps(args).encode("ascii"))


def encodeFault(command: Optional[str], code: str, message: str) -> bytes:
    """
    Encode a C{fault} packet.
    """
    return b"fault %s\n" % (
        _dumps([{"command": command, "code": code, "message": message}]).encode(
            "ascii"
        ),
    )


class _ArrayScan:
    """
    Incremental search for the close of a JSON array that starts at a given
    offset of a growing buffer, so a large packet arriving in many reads is
    scanned once, not once per read.
    """

    __slots__ = ("start", "pos", "depth", "inString")

    def __init__(self, start: int) -> None:
        self.start = start
        self.pos = start
        self.depth = 0
        self.inString = False

    def run(self, buf: bytes) -> tuple[int, int]:
        """
        Scan C{buf} from where the last call stopped.

        @return: C{(end, kind)}: C{kind} is C{1} when the array closes at
            C{buf[end]}, C{2} when a line feed at C{end} comes first, and
            C{0} when neither was found yet (C{end} is then C{-1}).
        """
        pos = self.pos
        depth = self.depth
        inString = self.inString
        search = _ARRAY_TOKENS.search
        while True:
            m = search(buf, pos)
            if m is None:
                self.pos = len(buf)
                self.depth = depth
                self.inString = inString
                return -1, 0
            i = m.start()
            c = buf[i]
            pos = i + 1
            if c == 0x0A:  # \n
                return i, 2
            if inString:
                if c == 0x22:  # "
                    inString = False
                elif c == 0x5C:  # backslash: skip the escaped byte
                    if pos >= len(buf):
                        self.pos = i
                        self.depth = depth
                        self.inString = inString
                        return -1, 0
                    if buf[pos] == 0x0A:
                        return pos, 2
                    pos += 1
            elif c == 0x22:
                inString = True
            elif c == 0x5B:  # [
                depth += 1
            elif c == 0x5D:  # ]
                depth -= 1
                if depth == 0:
                    return i, 1
            # A backslash outside a string is a JSON syntax error, which the
            # decoder reports once the packet is delimited.


Parsed = Union[Packet, WireError]


class PacketParser:
    """
    Incremental parser: feed it bytes as they arrive, get packets back.

    After a L{TOO_LONG} error the parser is finished: the protocol is
    expected to close the connection, and further input is ignored.

    @ivar maxLength: the longest packet accepted, in bytes.
    """

    def __init__(self, maxLength: int = DEFAULT_MAX_LENGTH) -> None:
        self.maxLength = maxLength
        self._buffer = b""
        self._scan: Optional[_ArrayScan] = None
        self.failed = False

    def feed(self, data: bytes) -> list[Parsed]:
        """
        Add C{data} and return every packet (or error) that is now complete,
        in order.
        """
        out: list[Parsed] = []
        if self.failed:
            return out
        if self._buffer:
            buf = self._buffer + data
        else:
            buf = data
        start = 0
        find = buf.find
        line = self._line
        maxLength = self.maxLength
        while True:
            nl = find(b"\n", start)
            if nl == -1:
                break
            if nl - start > maxLength:
                # The line may still hold several Node-style packets, each
                # within the limit: the slow path measures each packet.
                self._slowLine(buf[start:nl], out)
                if self.failed:
                    return out
            else:
                line(buf[start:nl], out)
            start = nl + 1
        if start:
            self._scan = None
            buf = buf[start:]
        self._buffer = buf
        if buf:
            self._tail(out)
        return out

    def finish(self) -> list[Parsed]:
        """
        The peer will send nothing more: whatever is buffered is the last
        packet.
        """
        if self.failed or not self._buffer:
            return []
        out: list[Parsed] = []
        self._line(self._buffer, out)
        self._buffer = b""
        self._scan = None
        return out

    def _tooLong(self, out: list[Parsed]) -> list[Parsed]:
        self.failed = True
        self._buffer = b""
        self._scan = None
        out.append(
            WireError(
                TOO_LONG,
                None,
                f"packet longer than {self.maxLength} bytes; closing the connection",
            )
        )
        return out

    def _tail(self, out: list[Parsed]) -> None:
        """
        Look for Node-style packets, delimited only by the close of their JSON
        array, in the unterminated tail of the buffer.
        """
        buf = self._buffer
        while True:
            m = _NOT_WHITESPACE.search(buf)
            if m is None:
                # Only white space: nothing to keep.
                self._buffer = b""
                self._scan = None
                return
            if m.start():
                buf = buf[m.start() :]
                self._buffer = buf
                self._scan = None
            scan = self._scan
            if scan is None:
                sp = _WHITESPACE_RUN.search(buf)
                if sp is None:
                    break
                argStart = _NOT_WHITESPACE.search(buf, sp.start())
                if argStart is None:
                    break
                if buf[argStart.start()] != 0x5B:  # not '[': ends at LF only
                    break
                scan = self._scan = _ArrayScan(argStart.start())
            end, kind = scan.run(buf)
            if kind != 1:
                break
            if end >= self.maxLength:
                # A whole over-long packet arrived in one read.
                self._tooLong(out)
                return
            self._line(buf[: end + 1], out)
            buf = buf[end + 1 :]
            self._buffer = buf
            self._scan = None
        if len(self._buffer) > self.maxLength:
            self._tooLong(out)

    def _line(self, line: bytes, out: list[Parsed]) -> None:
        """
        Parse one line (no line feed), which may hold several Node-style
        packets, into C{out}.
        """
        # Fast path: NAME SP [json] with an ASCII name and a single array.
        sp = line.find(b" ")
        if sp > 0 and line[sp + 1 : sp + 2] == b"[" and _ASCII_NAME(line, 0, sp):
            try:
                args = _loads(line[sp + 1 :].decode("utf-8"))
            except (ValueError, RecursionError):
                pass
            else:
                out.append(Packet(line[:sp].decode("ascii"), args))
                return
        self._slowLine(line, out)

    def _slowLine(self, line: bytes, out: list[Parsed]) -> None:
        pos = 0
        length = len(line)
        maxLength = self.maxLength
        while pos < length:
            m = _NOT_WHITESPACE.search(line, pos)
            if m is None:
                return
            nameStart = m.start()
            m = _WHITESPACE_RUN.search(line, nameStart)
            nameEnd = m.start() if m else length
            m = _NOT_WHITESPACE.search(line, nameEnd)
            if m is None:
                # A name alone: a packet with no arguments.
                argStart = argEnd = length
            else:
                argStart = m.start()
                if line[argStart] == 0x5B:  # '['
                    end, kind = _ArrayScan(argStart).run(line)
                    argEnd = end + 1 if kind == 1 else length
                else:
                    argEnd = length
            # The limit is per packet, measured as the unterminated tail
            # measures it, so the result never depends on read boundaries.
            if argEnd - nameStart > maxLength:
                self._tooLong(out)
                return
            name = self._name(line[nameStart:nameEnd], out)
            if name is not None:
                if m is None:
                    out.append(Packet(name, []))
                else:
                    out.append(self._args(name, line[argStart:argEnd]))
            pos = argEnd

    @staticmethod
    def _name(rawName: bytes, out: list[Parsed]) -> Optional[str]:
        """
        Decode and check a name; on failure append a L{BAD_PACKET} error and
        return L{None}.
        """
        try:
            name = rawName.decode("utf-8")
        except UnicodeDecodeError:
            out.append(WireError(BAD_PACKET, None, "packet name is not valid UTF-8"))
            return None
        if not validName(name):
            if len(name) > MAX_NAME_LENGTH:
                why = f"packet name longer than {MAX_NAME_LENGTH} characters"
            else:
                why = "packet name contains control characters"
            out.append(WireError(BAD_PACKET, None, why))
            return None
        return name

    @staticmethod
    def _args(name: str, raw: bytes) -> Parsed:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return WireError(BAD_JSON, name, "arguments are not valid UTF-8")
        try:
            args = _loads(text)
        except RecursionError:
            return WireError(BAD_JSON, name, "arguments are nested too deeply")
        except ValueError as e:
            return WireError(BAD_JSON, name, f"invalid JSON: {e}")
        if not isinstance(args, list):
            return WireError(
                BAD_ARGS,
                name,
                f"arguments must be a JSON array, not {_jsonType(args)}",
            )
        return Packet(name, args)


def _jsonType(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
