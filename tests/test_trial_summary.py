"""
Tests for C{tools/trial_summary.py}, which reduces Trial's closing summary to
the plain C{N passed, N failed} line that C{tools/test.sh} prints last.
"""

import importlib.util
import io
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

_PATH = Path(__file__).resolve().parent.parent / "tools" / "trial_summary.py"


def _loadTrialSummary():
    """
    Import C{tools/trial_summary.py} by path: C{tools/} is not a package.
    """
    spec = importlib.util.spec_from_file_location("trial_summary", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trial_summary = _loadTrialSummary()

_RUN = """\
tests.test_wire
  WireTests
    test_one ...                                                           [OK]

-------------------------------------------------------------------------------
Ran 12 tests in 0.031s

"""


class ParseSummaryTests(SynchronousTestCase):
    """
    L{trial_summary.parseSummary} finds Trial's closing line and counts it.
    """

    def test_passedBare(self):
        """
        C{PASSED} with no counts (nothing ran) is nothing passed, nothing
        failed.
        """
        self.assertEqual(trial_summary.parseSummary(_RUN + "PASSED\n"), (0, 0, 0))

    def test_passed(self):
        """
        C{PASSED (successes=N)} is N passed.
        """
        self.assertEqual(
            trial_summary.parseSummary(_RUN + "PASSED (successes=12)\n"), (12, 0, 0)
        )

    def test_passedWithSkipsAndExpectedFailures(self):
        """
        Expected failures count as passed; skips are counted on their own.
        """
        self.assertEqual(
            trial_summary.parseSummary(
                _RUN + "PASSED (skips=2, expectedFailures=1, successes=9)\n"
            ),
            (10, 0, 2),
        )

    def test_failedAllFields(self):
        """
        Failures, errors and unexpected successes all count as failed;
        successes and expected failures as passed.
        """
        self.assertEqual(
            trial_summary.parseSummary(
                _RUN + "FAILED (skips=1, expectedFailures=2, failures=3, errors=4, "
                "unexpectedSuccesses=5, successes=6)\n"
            ),
            (8, 12, 1),
        )

    def test_lastSummaryWins(self):
        """
        Test output that happens to look like a summary earlier on does not
        hide the real closing line.
        """
        self.assertEqual(
            trial_summary.parseSummary(
                "PASSED (successes=99)\n" + _RUN + "FAILED (errors=1)\n"
            ),
            (0, 1, 0),
        )

    def test_colour(self):
        """
        ANSI colour codes around the status are ignored.
        """
        self.assertEqual(
            trial_summary.parseSummary("\x1b[32mPASSED\x1b[0m (successes=3)\n"),
            (3, 0, 0),
        )

    def test_garbage(self):
        """
        Output without a summary line (Trial died, or was never run) gives
        L{None}.
        """
        for output in [
            "",
            "Traceback (most recent call last):\nImportError: no\n",
            _RUN,
            "PASSED successes=3\n",
            "PASSED (successes=three)\n",
            "the test PASSED (successes=3)\n",
        ]:
            self.assertIsNone(trial_summary.parseSummary(output), repr(output))

    def test_unknownCount(self):
        """
        A count this parser does not know gives L{None} rather than a number
        that leaves it out.
        """
        self.assertIsNone(trial_summary.parseSummary("FAILED (crashes=1)\n"))


class SummaryLineTests(SynchronousTestCase):
    """
    L{trial_summary.summaryLine} formats the closing line.
    """

    def test_noSkips(self):
        """
        With no skips the line is just passed and failed.
        """
        self.assertEqual(trial_summary.summaryLine((5, 1, 0)), "5 passed, 1 failed")

    def test_skips(self):
        """
        Skips, when there are any, follow as C{, N skipped}.
        """
        self.assertEqual(
            trial_summary.summaryLine((5, 0, 2)), "5 passed, 0 failed, 2 skipped"
        )

    def test_unparsed(self):
        """
        No summary at all is reported as one failure.
        """
        self.assertEqual(trial_summary.summaryLine(None), "0 passed, 1 failed")


class MainTests(SynchronousTestCase):
    """
    L{trial_summary.main} reads standard input and returns the exit status.
    """

    def _mainOn(self, output):
        """
        Run L{trial_summary.main} on C{output}; return its status and what it
        printed.
        """
        stdout = io.StringIO()
        status = trial_summary.main(io.StringIO(output), stdout)
        return status, stdout.getvalue()

    def test_passed(self):
        """
        A passing run prints its line and exits 0.
        """
        self.assertEqual(
            self._mainOn(_RUN + "PASSED (skips=1, successes=11)\n"),
            (0, "11 passed, 0 failed, 1 skipped\n"),
        )

    def test_failed(self):
        """
        A failing run prints its line and exits 1.
        """
        self.assertEqual(
            self._mainOn(_RUN + "FAILED (failures=1, successes=11)\n"),
            (1, "11 passed, 1 failed\n"),
        )

    def test_unexpectedSuccess(self):
        """
        Trial passes a run with an unexpected success, but it is counted as
        failed, so the exit status says so too.
        """
        self.assertEqual(
            self._mainOn(_RUN + "PASSED (unexpectedSuccesses=1, successes=11)\n"),
            (1, "11 passed, 1 failed\n"),
        )

    def test_unparsed(self):
        """
        No summary prints C{0 passed, 1 failed} and exits 1.
        """
        self.assertEqual(
            self._mainOn("Segmentation fault\n"), (1, "0 passed, 1 failed\n")
        )
