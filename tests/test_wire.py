"""
Tests for L{dae_service.wire}: framing (PROTOCOL.md, Part 2, "what we
accept"), encoding ("what we send"), and properties that hold for any input.
"""

from __future__ import annotations

import json
from typing import Sequence

from hypothesis import given, settings, strategies as st

from twisted.trial.unittest import SynchronousTestCase

from dae_service import wire
from dae_service.wire import (
    BAD_ARGS,
    BAD_JSON,
    BAD_PACKET,
    DEFAULT_MAX_LENGTH,
    TOO_LONG,
    Packet,
    PacketParser,
    WireError,
    encode,
    encodeFault,
    validName,
)

PROPERTY = settings(max_examples=200, deadline=None)


def chunks(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """
    Split C{data} at the offsets C{cuts} (in any order, repeats allowed).
    """
    points = sorted({0, len(data), *(c for c in cuts if 0 <= c <= len(data))})
    return [data[a:b] for a, b in zip(points, points[1:])]


def parse(
    *reads: bytes, finish: bool = True, maxLength: int = DEFAULT_MAX_LENGTH
) -> list:
    """
    Feed C{reads} one by one to a new parser, then (by default) end the
    input, and return everything it produced.
    """
    parser = PacketParser(maxLength)
    out = []
    for data in reads:
        out.extend(parser.feed(data))
    if finish:
        out.extend(parser.finish())
    return out


def codes(results: list) -> list:
    """
    Packets as themselves, errors as C{(code, command)}: what the contract
    fixes about an error (its message is free text).
    """
    return [
        (r.code, r.command) if isinstance(r, WireError) else r for r in results
    ]


class FramingTests(SynchronousTestCase):
    """
    Where packets begin and end.
    """

    def test_lineFeed(self) -> None:
        """
        A packet ends at a line feed.
        """
        self.assertEqual(
            parse(b'get ["k"]\n', finish=False), [Packet("get", ["k"])]
        )

    def test_carriageReturnLineFeed(self) -> None:
        """
        A carriage return before the line feed is part of the delimiter.
        """
        self.assertEqual(
            parse(b'get ["k"]\r\nput ["k",1]\r\n', finish=False),
            [Packet("get", ["k"]), Packet("put", ["k", 1])],
        )

    def test_nothingUntilDelimited(self) -> None:
        """
        An incomplete packet produces nothing until the rest arrives.
        """
        parser = PacketParser()
        self.assertEqual(parser.feed(b'get ["k'), [])
        self.assertEqual(parser.feed(b'"'), [])
        self.assertEqual(parser.feed(b"]"), [Packet("get", ["k"])])

    def test_nodeStyleCoalesced(self) -> None:
        """
        C{a []b [1]\\n} is two packets: the first ends where its array closes.
        """
        self.assertEqual(
            parse(b"a []b [1]\n", finish=False), [Packet("a", []), Packet("b", [1])]
        )

    def test_nodeStyleWithoutAnyDelimiter(self) -> None:
        """
        Node peers send no delimiter: each packet is complete as soon as its
        array closes, with nothing after it.
        """
        parser = PacketParser()
        self.assertEqual(parser.feed(b'a ["x"]'), [Packet("a", ["x"])])
        self.assertEqual(
            parser.feed(b"b [1]c [[2],{}]"), [Packet("b", [1]), Packet("c", [[2], {}])]
        )
        self.assertEqual(parser.finish(), [])

    def test_nodeStyleSplitOverReads(self) -> None:
        """
        C{set ["k",} then C{1]} in a later read is one packet.
        """
        parser = PacketParser()
        self.assertEqual(parser.feed(b'set ["k",'), [])
        self.assertEqual(parser.feed(b"1]"), [Packet("set", ["k", 1])])

    def test_lineFeedInsideArray(self) -> None:
        """
        C{set ["m",\\n1]} is two bad packets, C{set ["m",} (bad JSON) and
        C{1]} (a name alone, which no daemon knows), whatever the read
        boundaries.
        """
        expected = [(BAD_JSON, "set"), Packet("1]", [])]
        data = b'set ["m",\n1]'
        self.assertEqual(codes(parse(data)), expected)
        self.assertEqual(codes(parse(*chunks(data, range(len(data))))), expected)
        self.assertEqual(codes(parse(data + b"\n", finish=False)), expected)

    def test_junkAfterArray(self) -> None:
        """
        C{get ["a"] junk\\n} is two packets: C{get} and a name-only C{junk}.
        """
        self.assertEqual(
            parse(b'get ["a"] junk\n', finish=False),
            [Packet("get", ["a"]), Packet("junk", [])],
        )

    def test_nameOnly(self) -> None:
        """
        A name alone on a line (LF or CRLF) is a packet with no arguments.
        """
        self.assertEqual(
            parse(b"dae\ndae\r\nwhois  \t\r\n", finish=False),
            [Packet("dae", []), Packet("dae", []), Packet("whois", [])],
        )

    def test_nameOnlyWaitsForDelimiter(self) -> None:
        """
        A bare name without a line feed may still be followed by arguments,
        so it is not a packet until the line ends (or the input does).
        """
        parser = PacketParser()
        self.assertEqual(parser.feed(b"dae"), [])
        self.assertEqual(parser.feed(b" "), [])
        self.assertEqual(parser.feed(b"[1]"), [Packet("dae", [1])])

    def test_whiteSpaceBetweenPackets(self) -> None:
        """
        White space and blank lines between packets are skipped.
        """
        self.assertEqual(
            parse(b"\n\r\n  \t\na [1]   \n\n \x0b\x0c b [2] \r\n  c\n", finish=False),
            [Packet("a", [1]), Packet("b", [2]), Packet("c", [])],
        )
        self.assertEqual(parse(b" \n\t\r\n   "), [])

    def test_whiteSpaceBetweenNameAndArgs(self) -> None:
        """
        Any run of white space separates the name from its arguments.
        """
        self.assertEqual(
            parse(b"a\t [1]\n", b"b \t\x0b[2]"),
            [Packet("a", [1]), Packet("b", [2])],
        )

    def test_finishEndsTrailingPacket(self) -> None:
        """
        L{PacketParser.finish} ends a trailing unterminated packet, and then
        there is nothing left.
        """
        parser = PacketParser()
        self.assertEqual(parser.feed(b'a [1]\nwhois'), [Packet("a", [1])])
        self.assertEqual(parser.finish(), [Packet("whois", [])])
        self.assertEqual(parser.finish(), [])

    def test_finishTrailingBadPacket(self) -> None:
        """
        A trailing unterminated packet that is not valid is reported by
        L{PacketParser.finish}.
        """
        self.assertEqual(codes(parse(b'get ["k",')), [(BAD_JSON, "get")])
        self.assertEqual(codes(parse(b'get "k"')), [(BAD_ARGS, "get")])

    def test_nonArrayArgsEndAtLineFeed(self) -> None:
        """
        Arguments that do not start with C{[} can only end at a line feed.
        """
        parser = PacketParser()
        self.assertEqual(parser.feed(b"x {}"), [])
        self.assertEqual(codes(parser.feed(b"\n")), [(BAD_ARGS, "x")])

    def test_hundredKilobytePacket(self) -> None:
        """
        A 100 kB packet arrives whole however it is split: in 1-byte, 7-byte
        and 4096-byte reads, with or without a line feed.
        """
        value = "0123456789abcdef" * 6400
        expected = [Packet("put", ["big", value])]
        for data in (encode("put", ["big", value]), encode("put", ["big", value])[:-1]):
            self.assertGreater(len(data), 100_000)
            for size in (1, 7, 4096):
                reads = [data[i : i + size] for i in range(0, len(data), size)]
                parser = PacketParser()
                out = []
                for read in reads:
                    out.extend(parser.feed(read))
                self.assertEqual(out, expected, size)
                self.assertEqual(parser.finish(), [])

    def test_stringsWithBracketsAtSplitBoundaries(self) -> None:
        """
        Brackets, quotes and backslashes inside strings never end a Node-style
        packet, even when a read ends between a backslash and the character it
        escapes.
        """
        cases = [
            ([b'y ["\\\\"', b"]"], ["\\"]),
            ([b'y ["\\"', b']"]'], ['"]']),
            ([b'y ["\\', b'"]', b'"]'], ['"]']),
            ([b'y ["]', b'["', b"]"], ["]["]),
            ([b'y ["a\\\\', b'\\"]"', b"]"], ['a\\"]']),
            ([b'y [["]"],', b'"[",["\\\\]"]]'], [["]"], "[", ["\\]"]]),
            ([b'y ["\\u005d"', b"]"], ["]"]),
        ]
        for reads, args in cases:
            parser = PacketParser()
            out = []
            for read in reads:
                out.extend(parser.feed(read))
            self.assertEqual(out, [Packet("y", args)], reads)
            self.assertEqual(parser.finish(), [])

    def test_backslashAtEndOfEveryRead(self) -> None:
        """
        A packet full of escapes fed one byte at a time is found exactly once,
        where its array closes.
        """
        data = encode("y", ['\\"]', ["[\\", "\\\\"], '"', "]]"])[:-1] + b'z ["\\""]'
        out = parse(*chunks(data, range(len(data))), finish=False)
        self.assertEqual(
            out,
            [Packet("y", ['\\"]', ["[\\", "\\\\"], '"', "]]"]), Packet("z", ['"'])],
        )


class NameTests(SynchronousTestCase):
    """
    What a packet name may be.
    """

    def test_longestName(self) -> None:
        """
        A name of 128 characters is valid.
        """
        name = "n" * 128
        self.assertEqual(parse(name.encode() + b" []\n"), [Packet(name, [])])

    def test_nameTooLong(self) -> None:
        """
        A name of 129 characters is a C{bad_packet} with no command, and the
        next packet is still read.
        """
        out = parse(b"n" * 129 + b" []\nok []\n")
        self.assertEqual(codes(out), [(BAD_PACKET, None), Packet("ok", [])])
        self.assertIn("128", out[0].message)

    def test_nonAsciiNameLength(self) -> None:
        """
        The limit is in characters, not bytes: 128 two-byte characters pass.
        """
        name = "\u00e9" * 128
        self.assertEqual(parse(name.encode() + b" [1]\n"), [Packet(name, [1])])
        self.assertEqual(
            codes(parse(("\u00e9" * 129).encode() + b" [1]\n")), [(BAD_PACKET, None)]
        )

    def test_nameInvalidUtf8(self) -> None:
        """
        A name that is not valid UTF-8 is a C{bad_packet} with no command.
        """
        self.assertEqual(
            codes(parse(b"\xff\xfe [1]\n", b"a\xc3 []\n", b"\xe2\x82")),
            [(BAD_PACKET, None)] * 3,
        )

    def test_nameControlCharacters(self) -> None:
        """
        A name with a control character is a C{bad_packet} with no command,
        on either path (name-only, or with arguments).
        """
        for data in (b"a\x00b []\n", b"\x01\n", b"a\x7f [1]\n", b"\x1b[31m []\n"):
            self.assertEqual(codes(parse(data)), [(BAD_PACKET, None)], data)

    def test_nameUnicodeSpace(self) -> None:
        """
        Unicode white space in a name makes it invalid.
        """
        self.assertEqual(
            codes(parse("a\u00a0b []\n".encode())), [(BAD_PACKET, None)]
        )

    def test_punctuationNames(self) -> None:
        """
        Any printable non-space character may be in a name.
        """
        self.assertEqual(
            parse(b'get-all ["x"]\nns:cmd/2 []\na[1] [2]\n'),
            [Packet("get-all", ["x"]), Packet("ns:cmd/2", []), Packet("a[1]", [2])],
        )

    def test_validName(self) -> None:
        """
        L{validName} accepts 1-128 printable, non-space characters only.
        """
        for good in ("a", "get-all", "n" * 128, "\u00e9t\u00e9", "\U0001f600"):
            self.assertTrue(validName(good), good)
        for bad in ("", "n" * 129, "a b", "a\tb", "a\n", "\x00", "a\u2028", None, b"a", 1):
            self.assertFalse(validName(bad), bad)


class ArgumentTests(SynchronousTestCase):
    """
    The arguments: JSON syntax first, then the shape.
    """

    def test_badJsonBeforeShape(self) -> None:
        """
        Syntax is checked before shape: C{x [1,} is C{bad_json}.
        """
        self.assertEqual(codes(parse(b"x [1,\n")), [(BAD_JSON, "x")])

    def test_notAnArray(self) -> None:
        """
        Valid JSON that is not an array is C{bad_args}: C{x null}, C{x {}},
        a number, a string, a boolean.
        """
        for data in (b"x null\n", b"x {}\n", b"x 1\n", b'x "s"\n', b"x true\n"):
            out = parse(data)
            self.assertEqual(codes(out), [(BAD_ARGS, "x")], data)
        self.assertIn("null", parse(b"x null\n")[0].message)

    def test_nanAndInfinity(self) -> None:
        """
        NaN, Infinity and -Infinity are JSON syntax errors.
        """
        for data in (b"x [NaN]\n", b"x [Infinity]\n", b"x [-Infinity]\n", b"x [1,{\"a\":NaN}]"):
            self.assertEqual(codes(parse(data)), [(BAD_JSON, "x")], data)

    def test_invalidJson(self) -> None:
        """
        Malformed JSON is C{bad_json}, and the message says why.
        """
        for data in (b"x [1,]\n", b"x ['a']\n", b"x [}\n", b"x [\\]\n"):
            out = parse(data)
            self.assertEqual(out[0].code, BAD_JSON, data)
            self.assertEqual(out[0].command, "x")

    def test_deepNesting(self) -> None:
        """
        Arguments nested 100000 deep are C{bad_json}; no RecursionError
        escapes, with or without a line feed, arrays or objects.
        """
        deep = b"x " + b"[" * 100_000
        self.assertEqual(codes(parse(deep + b"\n")), [(BAD_JSON, "x")])
        self.assertEqual(codes(parse(deep)), [(BAD_JSON, "x")])
        closed = b"x " + b"[" * 100_000 + b"]" * 100_000
        self.assertEqual(codes(parse(closed, finish=False)), [(BAD_JSON, "x")])
        objects = b'x [' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]\n"
        self.assertEqual(codes(parse(objects)), [(BAD_JSON, "x")])

    def test_hugeIntegers(self) -> None:
        """
        Big integers are decoded exactly; one too long for Python to convert
        is C{bad_json}, not an exception.
        """
        big = 2**200 + 1
        self.assertEqual(parse(b"x [%d]\n" % (big,)), [Packet("x", [big])])
        self.assertEqual(codes(parse(b"x [" + b"9" * 5000 + b"]\n")), [(BAD_JSON, "x")])

    def test_invalidUtf8InArgs(self) -> None:
        """
        Arguments that are not valid UTF-8 are C{bad_json}, with the command.
        """
        for data in (b'x ["\xff"]\n', b'x ["\xc3"]', b'x ["\xed\xa0\x80"]\n'):
            self.assertEqual(codes(parse(data)), [(BAD_JSON, "x")], data)

    def test_nonAsciiText(self) -> None:
        """
        Non-ASCII text arrives intact, raw UTF-8 or C{\\u} escaped (including
        surrogate pairs).
        """
        text = "h\u00e9llo \u2603 \U0001f600 \u4e2d"
        raw = b'x ["' + text.encode("utf-8") + b'"]\n'
        escaped = encode("x", [text])
        self.assertEqual(parse(raw), [Packet("x", [text])])
        self.assertEqual(parse(escaped), [Packet("x", [text])])
        self.assertEqual(parse(b'x ["\\ud83d\\ude00"]'), [Packet("x", ["\U0001f600"])])

    def test_errorKeepsGoing(self) -> None:
        """
        A bad packet does not disturb the packets around it.
        """
        self.assertEqual(
            codes(parse(b"a [1]\nx [1,\nb [2]\nx null\nc [3]")),
            [Packet("a", [1]), (BAD_JSON, "x"), Packet("b", [2]), (BAD_ARGS, "x"), Packet("c", [3])],
        )


class TooLongTests(SynchronousTestCase):
    """
    Bounded buffering: a packet longer than the limit is C{too_long}, after
    which the parser produces nothing.
    """

    def test_defaultLimit(self) -> None:
        """
        The default limit is 1 MiB.
        """
        self.assertEqual(DEFAULT_MAX_LENGTH, 1024 * 1024)
        self.assertEqual(PacketParser().maxLength, DEFAULT_MAX_LENGTH)

    def test_lineAtLimit(self) -> None:
        """
        A line of exactly the limit is accepted.
        """
        data = encode("x", ["a" * 90])[:-1]
        self.assertEqual(parse(data + b"\n", maxLength=len(data)), [Packet("x", ["a" * 90])])

    def test_lineOverLimit(self) -> None:
        """
        A line one byte over the limit is C{too_long} with no command; the
        packets before it are still delivered, nothing after it.
        """
        data = encode("x", ["a" * 90])
        parser = PacketParser(len(data) - 2)
        out = parser.feed(b"ok []\n" + data + b"ok []\n")
        self.assertEqual(codes(out), [Packet("ok", []), (TOO_LONG, None)])
        self.assertTrue(parser.failed)
        self.assertEqual(parser.feed(b"ok []\n"), [])
        self.assertEqual(parser.finish(), [])

    def test_unterminatedTailOverLimit(self) -> None:
        """
        An unterminated packet is C{too_long} as soon as the buffered part
        exceeds the limit, before any delimiter arrives.
        """
        parser = PacketParser(100)
        self.assertEqual(parser.feed(b'x ["' + b"a" * 50), [])
        out = parser.feed(b"a" * 50)
        self.assertEqual(codes(out), [(TOO_LONG, None)])
        self.assertIn("100", out[0].message)
        self.assertEqual(parser.feed(b'"]\nok []\n'), [])
        self.assertEqual(parser.finish(), [])

    def test_unterminatedNameOverLimit(self) -> None:
        """
        Bytes with no white space and no delimiter are not buffered beyond
        the limit either.
        """
        parser = PacketParser(64)
        out = []
        for _ in range(10):
            out.extend(parser.feed(b"z" * 10))
        self.assertEqual(codes(out), [(TOO_LONG, None)])

    def test_wholeNodePacketOverLimit(self) -> None:
        """
        A Node-style packet over the limit is C{too_long} even when it arrives
        complete in one read.
        """
        data = encode("x", ["a" * 200])[:-1]
        self.assertEqual(codes(parse(data, maxLength=100)), [(TOO_LONG, None)])
        self.assertEqual(codes(parse(b"ok []" + data, maxLength=100)), [Packet("ok", []), (TOO_LONG, None)])

    def test_limitIsPerPacket(self) -> None:
        """
        The limit applies to each packet, not to a line: many short Node-style
        packets on one long line are all accepted, whether or not the line
        feed arrives in the same read.
        """
        data = b"a [1]" * 50
        expected = [Packet("a", [1])] * 50
        self.assertEqual(parse(data + b"\n", finish=False, maxLength=20), expected)
        self.assertEqual(parse(data, b"\n", finish=False, maxLength=20), expected)
        self.assertEqual(parse(b" " * 100 + b"a [1]\n", maxLength=20), [Packet("a", [1])])

    def test_overLongPacketAmongShortOnes(self) -> None:
        """
        On a line of Node-style packets, the first one over the limit is
        C{too_long}; the ones before it are delivered.
        """
        data = b"a [1]b [2]" + encode("c", ["z" * 50])[:-1] + b"d [4]\n"
        self.assertEqual(
            codes(parse(data, maxLength=20)),
            [Packet("a", [1]), Packet("b", [2]), (TOO_LONG, None)],
        )


class EncodeTests(SynchronousTestCase):
    """
    What we send: C{NAME SP JSON-array LF}, compact ASCII JSON.
    """

    def test_compact(self) -> None:
        """
        The JSON uses C{,} and C{:} separators with no spaces.
        """
        self.assertEqual(
            encode("put", ["k", {"a": 1, "b": [1, 2.5, None, True]}]),
            b'put ["k",{"a":1,"b":[1,2.5,null,true]}]\n',
        )

    def test_noArguments(self) -> None:
        """
        Without arguments the array is empty; any iterable is accepted.
        """
        self.assertEqual(encode("dae"), b"dae []\n")
        self.assertEqual(encode("x", (i for i in range(3))), b"x [0,1,2]\n")
        self.assertEqual(encode("x", ("a",)), b'x ["a"]\n')

    def test_asciiOnly(self) -> None:
        """
        Non-ASCII text is escaped as C{\\uXXXX}; astral characters become
        surrogate pairs.
        """
        data = encode("x", ["\u00e9", "\u2603", "\U0001f600", {"\u00fc": 1}])
        self.assertEqual(
            data, b'x ["\\u00e9","\\u2603","\\ud83d\\ude00",{"\\u00fc":1}]\n'
        )
        data.decode("ascii")

    def test_oneLineFeed(self) -> None:
        """
        A packet ends with exactly one line feed, and holds no other: line
        feeds and carriage returns in strings are escaped.
        """
        data = encode("x", ["a\nb\r\n", {"\n": "\r"}])
        self.assertTrue(data.endswith(b"]\n"))
        self.assertEqual(data.count(b"\n"), 1)
        self.assertNotIn(b"\r", data)

    def test_nanAndInfinityRejected(self) -> None:
        """
        NaN and Infinity cannot be sent: L{ValueError}.
        """
        for value in (float("nan"), float("inf"), float("-inf"), [1.0, {"a": float("nan")}]):
            self.assertRaises(ValueError, encode, "x", [value])

    def test_unserialisable(self) -> None:
        """
        A value JSON cannot represent is a L{TypeError}.
        """
        self.assertRaises(TypeError, encode, "x", [object()])
        self.assertRaises(TypeError, encode, "x", [{1j: 1}])

    def test_invalidNames(self) -> None:
        """
        An invalid name is a L{ValueError}.
        """
        for name in ("", "a b", "a\nb", "x\r", "n" * 129, "\x00", "\x7f", None, b"x"):
            self.assertRaises(ValueError, encode, name, [])

    def test_encodeFault(self) -> None:
        """
        A fault is C{fault [{"command":..,"code":..,"message":..}]}, keys in
        that order, C{null} for no command, ASCII only.
        """
        self.assertEqual(
            encodeFault("get", "unknown_command", "no such command"),
            b'fault [{"command":"get","code":"unknown_command","message":"no such command"}]\n',
        )
        self.assertEqual(
            encodeFault(None, "bad_packet", "caf\u00e9"),
            b'fault [{"command":null,"code":"bad_packet","message":"caf\\u00e9"}]\n',
        )

    def test_faultCodes(self) -> None:
        """
        The module names every fault code of PROTOCOL.md.
        """
        self.assertEqual(
            {
                wire.BAD_PACKET, wire.BAD_JSON, wire.BAD_ARGS, wire.UNKNOWN_COMMAND,
                wire.TOO_LONG, wire.INTERNAL, wire.UNAUTHORIZED, wire.NOT_FOUND,
            },
            {
                "bad_packet", "bad_json", "bad_args", "unknown_command",
                "too_long", "internal", "unauthorized", "not_found",
            },
        )

    def test_roundTrip(self) -> None:
        """
        What L{encode} produces, the parser reads back.
        """
        args = ["k", 1, -2.5, None, True, {"a": [1, {"b": "\U0001f600"}]}, []]
        self.assertEqual(parse(encode("put", args)), [Packet("put", args)])


# Property tests.

# Names we send are ASCII (PROTOCOL.md: what we send is ASCII only).
names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
).filter(validName) | st.sampled_from(["a", "get", "n" * 128, "x[", "]y", '"q"', "\\"])

jsonValues = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)

packets = st.lists(st.tuples(names, st.lists(jsonValues, max_size=4)), min_size=1, max_size=5)

# Bytes that exercise the parser's states more often than random bytes do.
tokens = st.sampled_from(
    [b"a", b"get", b" ", b"\t", b"[", b"]", b"{", b"}", b'"', b"\\", b"\n", b"\r",
     b"1", b",", b":", b"null", b"NaN", b"\xff", b"\xc3\xa9", b"\x00", b"[]", b'"a"']
)
junk = st.lists(tokens, max_size=40).map(b"".join) | st.binary(max_size=60)


class PropertyTests(SynchronousTestCase):
    """
    Properties that hold for any input.
    """

    @PROPERTY
    @given(packets, st.sampled_from([b"\n", b"\r\n", b""]), st.data())
    def test_roundTripAnySplit(self, items, delimiter, data) -> None:
        """
        Encoded packets, concatenated with LF, CRLF or (Node-style) nothing
        between them, read back as exactly the same packets however the bytes
        are split.
        """
        blob = b"".join(encode(name, args)[:-1] + delimiter for name, args in items)
        cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
        out = parse(*chunks(blob, cuts), finish=False)
        self.assertEqual(out, [Packet(name, args) for name, args in items])

    @PROPERTY
    @given(junk, st.data())
    def test_anyBytesAnySplit(self, blob, data) -> None:
        """
        Arbitrary bytes never raise, always give packets and errors, and give
        the same sequence in one read as in any split.
        """
        cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
        whole = PacketParser()
        wholeFed = whole.feed(blob)
        split = PacketParser()
        splitFed = []
        for read in chunks(blob, cuts):
            result = split.feed(read)
            self.assertIsInstance(result, list)
            splitFed.extend(result)
        self.assertEqual(splitFed, wholeFed)
        wholeFinished = whole.finish()
        self.assertEqual(split.finish(), wholeFinished)
        for item in wholeFed + wholeFinished:
            self.assertIn(type(item), (Packet, WireError))
            if isinstance(item, Packet):
                self.assertTrue(validName(item.name))
                self.assertIsInstance(item.args, list)

    @PROPERTY
    @given(junk, st.integers(1, 24), st.data())
    def test_tooLongAnySplit(self, blob, maxLength, data) -> None:
        """
        With a small limit too, the result never depends on read boundaries,
        and nothing follows a C{too_long}.
        """
        cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
        whole = parse(blob, maxLength=maxLength)
        self.assertEqual(parse(*chunks(blob, cuts), maxLength=maxLength), whole)
        for i, item in enumerate(whole):
            if isinstance(item, WireError) and item.code == TOO_LONG:
                self.assertEqual(i, len(whole) - 1)

    @PROPERTY
    @given(packets, st.lists(st.sampled_from([b"\n", b"\r\n", b"", b" "])), st.integers(4, 40), st.data())
    def test_tooLongPacketsAnySplit(self, items, delimiters, maxLength, data) -> None:
        """
        Valid packets, some longer than a small limit, give the same result in
        one read as in any split: the packets before the first over-long one,
        then C{too_long}.
        """
        delimiters = delimiters or [b"\n"]
        blob = b"".join(
            encode(name, args)[:-1] + delimiters[i % len(delimiters)]
            for i, (name, args) in enumerate(items)
        )
        cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
        whole = parse(blob, maxLength=maxLength)
        self.assertEqual(parse(*chunks(blob, cuts), maxLength=maxLength), whole)
        expected = []
        for name, args in items:
            if len(encode(name, args)) - 1 > maxLength:
                expected.append((TOO_LONG, None))
                break
            expected.append(Packet(name, args))
        self.assertEqual(codes(whole), expected)

    @PROPERTY
    @given(jsonValues)
    def test_encodeIsCompactAscii(self, value) -> None:
        """
        Any encodable value is sent as compact ASCII JSON on one line.
        """
        data = encode("x", [value])
        data.decode("ascii")
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(
            data, b"x " + json.dumps([value], separators=(",", ":")).encode() + b"\n"
        )


class ContractGapTests(SynchronousTestCase):
    """
    Cases found while reviewing the codec against PROTOCOL.md.
    """

    def test_overflowingFloatIsBadJson(self):
        """
        C{1e400} is valid JSON syntax but overflows to infinity, which could
        never be sent back, so it is refused as C{bad_json}.
        """
        [result] = PacketParser().feed(b"x [1e400]\n")
        self.assertEqual((result.code, result.command), (BAD_JSON, "x"))

    def test_finiteFloatsStillDecode(self):
        """
        Ordinary floats, including large finite ones, decode as floats.
        """
        [result] = PacketParser().feed(b"x [1.5,-2e300]\n")
        self.assertEqual(result, Packet("x", [1.5, -2e300]))

    def test_encodeRefusesNonAsciiNames(self):
        """
        What we send is ASCII only, names included.
        """
        self.assertRaises(ValueError, encode, "caf\u00e9", [])
