"""Numbers checked at the edge, for the CLI and the Python API alike: a value out of range is a CsmError that names
the option, says what is allowed and what was given."""

import math

from .errors import CsmError


def _given(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def whole_number(option: str, value: object, low: int, high: int) -> int:
    """`value` if it is an int (not a bool) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CsmError(f"{option} must be a whole number from {low} to {high}, got {_given(value)}")
    return value


def number(option: str, value: object, low: float, high: float, unit: str = "") -> float:
    """`value` as a float if it is a real number from `low` to `high` (NaN and infinities are not)."""
    try:
        as_float = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond the floats
        as_float = math.inf
    if not low <= as_float <= high:
        raise CsmError(f"{option} must be a number from {low:g} to {high:g}{unit}, got {_given(value)}")
    return as_float
