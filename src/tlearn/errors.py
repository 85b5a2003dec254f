"""Errors a user can fix. The CLI prints their one-line message and exits with the
error's ``exit_code`` (2 for bad input)."""


class TlearnError(Exception):
    """Bad input: the message names the file, key or class to fix."""

    exit_code = 2


class ConfigError(TlearnError):
    """A params.yaml value (or an override) is wrong."""


class DataError(TlearnError):
    """The data source or its contents cannot be used."""


class WeightsError(TlearnError):
    """A weights file is unreadable or does not fit the network (names the tensor/file)."""


class TuningError(TlearnError):
    """No trial of a study completed (the message names the most common error)."""
