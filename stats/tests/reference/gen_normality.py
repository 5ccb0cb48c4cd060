"""Regenerate stats/tests/reference/normality.json from scipy.stats.

usage: python3 stats/tests/reference/gen_normality.py
"""
import json
import os
import warnings

import numpy as np
import scipy
import scipy.stats as st

rng = np.random.default_rng(20261127)
cases = {
    "normal_50": rng.normal(0, 1, 50),
    "normal_1000": rng.normal(3, 0.01, 1000),
    "student_t3_500": rng.standard_t(3, 500),
    "exponential_200": rng.exponential(2.0, 200),
    "uniform_100": rng.uniform(-1, 1, 100),
    "lognormal_5000": rng.lognormal(0, 1, 5000),
    "tiny_8": rng.normal(0, 1, 8),
    "ties": np.round(rng.normal(0, 1, 300), 1),
    "huge_range": rng.normal(0, 1, 400) * 1e-30 + 1e-29,
    "all_equal": np.full(40, 0.125),
}
out = {"scipy": scipy.__version__, "cases": []}
for name, x in cases.items():
    if np.ptp(x) == 0:
        # scipy gives NaN statistics (with warnings) or W = p = 1; gradtel reports an error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            k2 = st.normaltest(x)
        out["cases"].append({"name": name, "x": [float(v) for v in x], "expect_error": "AllEqual",
                             "scipy_k2": None if np.isnan(k2.statistic) else float(k2.statistic)})
        continue
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k2 = st.normaltest(x)
        jb = st.jarque_bera(x)
        ad = st.anderson(x, "norm")
        sw = st.shapiro(x)
        # scipy refuses ranges below 1e-19 (W = p = 1); W is scale-free, so also record it on
        # the standardised sample.
        sw_scaled = st.shapiro((x - np.mean(x)) / np.std(x))
    out["cases"].append({
        "name": name,
        "x": [float(v) for v in x],
        "k2": [float(k2.statistic), float(k2.pvalue)],
        "jb": [float(jb.statistic), float(jb.pvalue)],
        "ad": [float(ad.statistic), [float(c) for c in ad.critical_values]],
        "sw": [float(sw.statistic), float(sw.pvalue)],
        "sw_scaled": [float(sw_scaled.statistic), float(sw_scaled.pvalue)],
    })
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "normality.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path}")
