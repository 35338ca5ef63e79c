"""Exceptions that carry a message a user can act on (file, expected, found, fix)."""


class RissoleError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(RissoleError):
    """A data file is missing, truncated, corrupt or of the wrong shape."""


class CheckpointError(RissoleError):
    """A checkpoint is missing, corrupt, or does not match the model or database."""


class ConfigError(RissoleError):
    """A configuration file has a missing or invalid entry."""
