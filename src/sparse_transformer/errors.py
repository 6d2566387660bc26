"""Errors a user can cause and fix: the CLI prints them as one line and exits with 2."""


class UserError(Exception):
    """Bad input: a message that names the problem and what to do about it."""
