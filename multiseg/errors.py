"""The errors a user can cause, and the exit code each gives on the command line.

Every command catches ``UserError`` and prints ``error: <message>`` with the error's
``exit_code``, never a traceback; anything else is a bug and keeps its traceback. Subclasses
keep the built-in base they always had (``ValueError``, ``OSError``...), so callers of the
Python API catch them as before.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (recipe, data, run directory, command line), or a
    condition the user must act on. ``exit_code``: what the command returns."""

    exit_code = 2


class TrainingStopped(UserError):
    """Training stopped on purpose (a non-finite loss with ``on_nonfinite: stop``)."""

    exit_code = 3


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the current step was checkpointed (exit code 130)."""


def report(error: BaseException) -> str:
    """The line a command prints for a ``UserError``."""
    return f"error: {error}"
