"""The few exception types a user can act on.

The CLI turns each into one line and its `exit_status` (2, or 75 for
`UnavailableError`); the server turns each into a 4xx answer.  Anything else
is a bug and keeps its traceback.
"""


class MerinoError(Exception):
    """Base class: a problem the user can fix, with a message saying what it is."""

    exit_status = 2


class InputError(MerinoError):
    """Bad input: a malformed file, an impossible spec, a budget nothing satisfies."""


class IncompatibleError(MerinoError):
    """An artifact made for another version, device or architecture."""


class MissingDependencyError(MerinoError):
    """An optional package or tool is not installed (the message says what to install)."""


class UnavailableError(MerinoError):
    """Something this machine may have in a moment: an address not assigned yet, a port still in use.

    Exit status 75 (EX_TEMPFAIL): a service manager should start the command again.
    """

    exit_status = 75
