"""Regenerate the reference fixtures of gradtel-stats from numpy and scipy.

usage: python3 stats/tests/reference/gen.py   (writes moments.json beside this file)

Each case is a sample (as float64, written with repr precision) and the values numpy/scipy give
for it. The Rust tests (stats/tests/reference.rs) summarise the same sample, also by merging
summaries of pieces, and compare.
"""
import json
import os

import numpy as np
import scipy
import scipy.stats as st

rng = np.random.default_rng(20261126)
cases = {
    "normal": rng.normal(0.5, 2.0, 2000),
    "student_t3_small_scale": 1e-4 * rng.standard_t(3, 2000),
    "lognormal_with_zeros": np.where(rng.random(2000) < 0.05, 0.0, rng.lognormal(-8, 2, 2000)),
}
out = {"numpy": np.__version__, "scipy": scipy.__version__, "cases": []}
for name, x in cases.items():
    a = np.sort(np.abs(x[x != 0]))
    qs = [0.01, 0.1, 0.5, 0.9, 0.99, 0.999]
    # Order statistic of rank ceil(q n), as the histogram defines its quantiles.
    order_stats = [float(a[max(1, int(np.ceil(q * len(a)))) - 1]) for q in qs]
    out["cases"].append(
        {
            "name": name,
            "x": [float(v) for v in x],
            "mean": float(np.mean(x)),
            "var": float(np.var(x, ddof=0)),
            "skew": float(st.skew(x, bias=True)),
            "kurtosis": float(st.kurtosis(x, fisher=True, bias=True)),
            "l2": float(np.linalg.norm(x)),
            "max_abs": float(np.max(np.abs(x))),
            "top10": [float(v) for v in np.sort(np.abs(x))[::-1][:10]],
            "quantiles": qs,
            "abs_order_stats": order_stats,
        }
    )
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moments.json")
with open(path, "w") as f:
    json.dump(out, f, indent=None)
print(f"wrote {path}")
