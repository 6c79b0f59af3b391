"""Errors that the CLI turns into a clear message, and the exit codes a release script relies on."""

# Exit codes of `qeval run`, `qeval signoff` and the stage commands (docs/signoff.md has the table).
EXIT_PASS = 0  # every judged scheme passed every gate
EXIT_FAIL = 1  # a scheme failed a gate
EXIT_BAD_INPUT = 2  # the request must change: unknown name, bad recipe value, missing file or extra
EXIT_INCONCLUSIVE = 3  # no gate failed, but some could not be decided on this evidence
EXIT_INCOMPLETE = 4  # a stage failed or a scheme could not be judged: the sweep did not finish
EXIT_CRASH = 5  # an unexpected error in qeval itself (a traceback is printed): not a verdict


class QevalError(Exception):
    """Bad input or an unusable environment. The message names the problem and the fix."""


class UnsupportedHere(QevalError):
    """A scheme cannot run with this hardware or these libraries; recorded as skipped."""
