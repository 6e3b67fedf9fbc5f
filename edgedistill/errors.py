"""Errors that end a run with a documented exit code and one line of explanation."""


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
