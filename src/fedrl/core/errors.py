"""The error every layer raises when the user's own code fails or returns what does not fit."""

from __future__ import annotations


class UserCodeError(RuntimeError):
    """A user's code (a setter or environment, a strategy, a learner loss) failed or returned what
    fedrl cannot use; the message is one line naming the user's code, and its file and line where
    the failure was raised in it. The commands print it as it is, without a traceback."""
