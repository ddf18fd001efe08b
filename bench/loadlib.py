"""What the load clients share: percentiles and a body split around its job_id."""

import math
import re
import sys


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def split_body(path):
    """The body split around the end of the job_id's value, so each request only concatenates."""
    raw = open(path, "rb").read()
    m = re.search(rb'"job_id"\s*:\s*"([^"]*)"', raw)
    if not m:
        sys.exit(f"no job_id in {path}")
    return raw[: m.end(1)], raw[m.end(1):]
