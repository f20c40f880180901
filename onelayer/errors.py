"""Errors that carry a message meant for the user (exit code 2, no traceback)."""


class UserError(ValueError):
    """Bad input from the user: the message says what was wrong and how to fix it."""


class TrainingError(RuntimeError):
    """Training went wrong in a way that would otherwise go unnoticed (e.g. weights not moving)."""


class DataMissing(UserError):
    """Data a task needs is not on this machine; the message names the data and how to get it."""
