"""Summaries of repeated measurements: median, p95, min and max."""

import math
import statistics


def percentile(values, fraction):
    """Return the nearest-rank percentile of ``values`` (fraction from 0 to 1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(values, digits=4):
    """Return {n, p50, p95, min, max} of ``values``, or {n: 0} when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "p50": None, "p95": None, "min": None, "max": None}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), digits),
        "p95": round(percentile(values, 0.95), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }
