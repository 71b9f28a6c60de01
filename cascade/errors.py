"""The errors of the cascade package: bad arrays, bad configs and a temperature fit with no optimum."""

from __future__ import annotations


class CascadeError(ValueError):
    """Bad input to calibration, routing, tuning or a cascade config.

    The message names the array or field, the value found and what was expected.
    """


class ConvergenceError(CascadeError):
    """Temperature scaling found no finite T > 0 that minimises NLL within its search bounds."""


class CascadeConfigError(CascadeError):
    """A cascade.json, or the stages it names, that cannot make a cascade."""
