"""Measured against published: the delta and the agreement rule used by tests and tables."""

from __future__ import annotations


def half_unit(published: float) -> float:
    """Half a unit in the last printed digit of ``published`` (3.8 -> 0.05, 1447.6 -> 0.05)."""
    text = repr(float(published))
    decimals = len(text.split(".")[1].rstrip("0")) if "." in text else 0
    return 0.5 * 10.0**-decimals


def delta(measured: float, published: float) -> float:
    """Relative difference (measured - published) / published."""
    return (measured - published) / published


def agrees(measured: float, published: float, rel: float) -> bool:
    """True when ``measured`` is within ``rel`` of ``published``, or rounds to the printed figure.

    A published "3.8 M" only claims two digits: 3.75 M rounds to it, although it is 1.3% below.
    """
    return abs(measured - published) <= max(rel * abs(published), half_unit(published))


def percent_delta(measured: float | None, published: float | None) -> float | None:
    """`delta` in percent, None where either figure is missing (or the published one is 0)."""
    if measured is None or published is None or published == 0:
        return None
    return 100.0 * delta(measured, published)
