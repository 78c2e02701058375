"""The one exception a user can fix: a bad flag, path, file or value. office31.py prints it as one paragraph and
exits non-zero, with no traceback. It imports nothing, so the flags can be checked before torch is loaded."""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad file): printed as one paragraph, no traceback."""
