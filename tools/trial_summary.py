"""
Turn Trial's closing summary into one plain line: C{N passed, N failed}, then
C{, N skipped} when anything was skipped.

Reads Trial's whole output on standard input, prints the line, and exits 0
only when nothing failed.  When no summary can be found it prints
C{0 passed, 1 failed} and exits 1, so a run that died before reporting is never
taken for a green one.

Trial ends with C{PASSED}, C{PASSED (successes=3)} or, for example,
C{FAILED (skips=1, failures=2, errors=1, successes=9)}; the same line closes a
run with C{-j}.  Passed counts successes and expected failures; failed counts
failures, errors and unexpected successes.  An unexpected success does not
make Trial itself fail, but it is counted as failed here and so fails the run.
"""

import re
import sys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"^(PASSED|FAILED)(?: \(((?:\w+=\d+)(?:, \w+=\d+)*)\))?$")
_KNOWN = {
    "skips",
    "expectedFailures",
    "failures",
    "errors",
    "unexpectedSuccesses",
    "successes",
}


def parseSummary(output):
    """
    Find Trial's closing summary in C{output}.

    @param output: everything Trial wrote to its standard output.
    @type output: L{str}

    @return: C{(passed, failed, skipped)}, or L{None} when there is no
        summary line or it names a count this parser does not know.
    @rtype: L{tuple} of three L{int}, or L{None}
    """
    for line in reversed(_ANSI.sub("", output).splitlines()):
        match = _SUMMARY.match(line.strip())
        if match is None:
            continue
        status, fields = match.groups()
        counts = dict.fromkeys(_KNOWN, 0)
        for field in fields.split(", ") if fields else ():
            name, value = field.split("=")
            if name not in _KNOWN:
                return None
            counts[name] = int(value)
        passed = counts["successes"] + counts["expectedFailures"]
        failed = (
            counts["failures"] + counts["errors"] + counts["unexpectedSuccesses"]
        )
        if status == "FAILED" and failed == 0:
            # Trial said it failed without saying why: never report green.
            failed = 1
        return passed, failed, counts["skips"]
    return None


def summaryLine(counts):
    """
    Format C{(passed, failed, skipped)} as the plain closing line.

    @param counts: what L{parseSummary} returned, or L{None} for no summary.

    @return: C{"N passed, N failed"}, with C{", N skipped"} when skipped > 0;
        C{"0 passed, 1 failed"} when C{counts} is L{None}.
    @rtype: L{str}
    """
    if counts is None:
        counts = (0, 1, 0)
    passed, failed, skipped = counts
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    return line


def main(stdin=sys.stdin, stdout=sys.stdout):
    """
    Read Trial's output from C{stdin}, write the closing line to C{stdout}.

    @return: the exit status: 0 when nothing failed, 1 otherwise.
    @rtype: L{int}
    """
    counts = parseSummary(stdin.read())
    stdout.write(summaryLine(counts) + "\n")
    return 0 if counts is not None and counts[1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
