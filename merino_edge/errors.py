"""The few exception types a user can act on.

The CLI turns each into exit status 2 and one line; the server turns each into
a 4xx answer.  Anything else is a bug and keeps its traceback.
"""


class MerinoError(Exception):
    """Base class: a problem the user can fix, with a message saying what it is."""


class InputError(MerinoError):
    """Bad input: a malformed file, an impossible spec, a budget nothing satisfies."""


class IncompatibleError(MerinoError):
    """An artifact made for another version, device or architecture."""


class MissingDependencyError(MerinoError):
    """An optional package or tool is not installed (the message says what to install)."""
