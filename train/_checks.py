"""Range checks of numeric options, shared by ``python -m train`` and ``python -m train.evaluate``: a value outside
its range is refused with a message that names the option and what is valid, never replaced by a default."""

from __future__ import annotations

import math

# numpy's seed sequences take non-negative integers; the loader seeds are derived from the seed by multiplication.
SEED_MAX = 2**32 - 1


def check_range(option: str, value, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
                error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` unless ``value`` is None or a finite number in the given interval.

    Args:
        option: the option's name for the message (``--clip-grad``).
        value: the value (None passes: "not given").
        low, high: the bounds (None: unbounded).
        low_open, high_open: exclude the bound itself.
        error: the exception type to raise.
    """
    if value is None:
        return
    ok = isinstance(value, int) or math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise error(f"{option} must be {_describe(low, high, low_open, high_open)}, got {value}")


def _describe(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_ranges(values: dict, ranges: dict[str, tuple], error: type[ValueError]) -> None:
    """:func:`check_range` for each ``dest: (low, high[, low_open, high_open])`` of ``ranges``; the option name is
    the dest with dashes (``clip_grad`` -> ``--clip-grad``)."""
    for dest, spec in ranges.items():
        low, high, *opens = spec
        low_open, high_open = (opens + [False, False])[:2]
        check_range(_option(dest), values.get(dest), low, high, low_open=low_open, high_open=high_open, error=error)


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")



class TrainError(ValueError):
    """A training request that cannot be carried out as asked (output folder in use, nothing to resume, ...)."""
