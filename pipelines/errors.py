"""Errors that the CLI turns into a clear message and exit code 2."""


class QevalError(Exception):
    """Bad input or an unusable environment. The message names the problem and the fix."""


class UnsupportedHere(QevalError):
    """A scheme cannot run with this hardware or these libraries; recorded as skipped."""
