"""Errors that end a run with a documented exit code and one line of explanation."""

from __future__ import annotations

import difflib


class EdgeDistillError(Exception):
    exit_code = 1


class BadInput(EdgeDistillError):
    """The recipe, a file or an argument is wrong: the user can fix it."""

    exit_code = 2


class BudgetFailed(EdgeDistillError):
    exit_code = 3


class TargetUnavailable(EdgeDistillError):
    """A validation target could not be reached or lacks its runtime."""

    exit_code = 4


class BudgetInconclusive(EdgeDistillError):
    """A latency budget's interval across rounds straddles its limit: the machine was too noisy to tell pass from fail."""

    exit_code = 5


def did_you_mean(name: str, candidates: list[str]) -> str:
    """`; did you mean 'x'?` for the closest candidates, or nothing: the tail of a BadInput message."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
