"""The error every data source raises for bad input."""

from ..errors import UserError


class DataError(UserError):
    """A raw input or prepared file is missing, corrupt or of the wrong form; the message
    names the file, the problem and what to do."""
