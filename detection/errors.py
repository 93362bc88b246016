"""The detection package's one exception for problems a user can fix (bad files, bad
options); its commands print it as one line and exit with status 2."""


class DetectionError(Exception):
    """A user-facing error: bad input file, weights or option."""
