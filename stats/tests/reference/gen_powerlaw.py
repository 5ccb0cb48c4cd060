"""Regenerate stats/tests/reference/powerlaw.json: power-law fits by the `powerlaw` package.

usage: python3 stats/tests/reference/gen_powerlaw.py

Two references, matching gradtel's two modes:
* "pure": powerlaw 1.5 (pure Clauset: analytic MLE, no cap on alpha). It is installed on demand
  into stats/tests/reference/.powerlaw15 (git-ignored) because it cannot sit beside 2.0.
* "range_0_3": powerlaw 2.0 (the current release) with its defaults: alpha kept in (0, 3).
  2.0 refits alpha numerically (Nelder-Mead, tol 1e-4) when the analytic alpha is outside
  (1.5, 3]; the fixture records whether the chosen candidate took that path ("numerical").
"""
import contextlib
import io
import json
import os
import sys
import time
import warnings

import numpy as np
import powerlaw  # 2.0

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import powerlaw15 as _pl15  # noqa: E402

powerlaw15 = _pl15.load()
assert powerlaw.__version__.startswith("2."), powerlaw.__version__

rng = np.random.default_rng(20261126)


def pareto(n, alpha, xmin=1.0):
    return xmin * (1 - rng.random(n)) ** (-1 / (alpha - 1))


cases = {
    "pareto_2.5": pareto(2000, 2.5),
    "pareto_1.8_body": np.concatenate([pareto(1500, 1.8, 3.0), rng.uniform(0.1, 3.0, 500)]),
    "lognormal": rng.lognormal(0, 1, 2000),
    "student_t3_abs": np.abs(rng.standard_t(3, 2000)),
    "exponential": rng.exponential(1.0, 1500),
    "gaussian_abs": np.abs(rng.normal(0, 1, 1500)),
    "ties": np.round(pareto(1000, 2.2), 1),
    "tiny_n": pareto(5, 2.0),
    "huge_range": rng.lognormal(0, 60, 1000),
    "steep_tail_alpha_4": pareto(1500, 4.0),
    "all_equal": np.full(50, 2.5),
}

out = {"powerlaw_pure": "1.5", "powerlaw_range": powerlaw.__version__, "cases": []}
for name, x in cases.items():
    x = np.abs(np.asarray(x, dtype=float))
    x = x[x > 0]
    entry = {"name": name, "x": [float(v) for v in x]}
    if len(np.unique(x)) < 2:
        # powerlaw returns NaN for x_min, alpha and D here; gradtel reports an error.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            f20 = powerlaw.Fit(x, discrete=False, verbose=0)
        entry["powerlaw_2_alpha"] = None if np.isnan(f20.alpha) else float(f20.alpha)
        entry["expect_error"] = "AllEqual"
        out["cases"].append(entry)
        continue
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.time()
        with contextlib.redirect_stdout(io.StringIO()):  # 1.5 prints progress to stdout
            f15 = powerlaw15.Fit(x, discrete=False)
        entry["pure"] = {
            "xmin": float(f15.xmin), "alpha": float(f15.alpha), "D": float(f15.D),
            "sigma": float(f15.sigma), "seconds": time.time() - t,
        }
        t = time.time()
        f20 = powerlaw.Fit(x, discrete=False, verbose=0)
        a = float(f20.alpha)
        entry["range_0_3"] = {
            "xmin": float(f20.xmin), "alpha": a, "D": float(f20.D),
            "noise_flag": bool(f20.noise_flag), "numerical": not (1.5 < a <= 3.0),
            "seconds": time.time() - t,
        }
        if not f20.noise_flag:
            R_ln, p_ln = f20.distribution_compare("power_law", "lognormal")
            R_ex, p_ex = f20.distribution_compare("power_law", "exponential")
            entry["vuong"] = {
                "lognormal": [float(R_ln), float(p_ln)],
                "exponential": [float(R_ex), float(p_ex)],
                "lognormal_loglik": float(np.sum(f20.lognormal.loglikelihoods(f20.data))),
                "lognormal_params": [float(f20.lognormal.mu), float(f20.lognormal.sigma)],
                "exponential_loglik": float(np.sum(f20.exponential.loglikelihoods(f20.data))),
                "exponential_lambda": float(f20.exponential.Lambda),
            }
    out["cases"].append(entry)
    print(name, entry["pure"], entry["range_0_3"], file=sys.stderr)

path = os.path.join(HERE, "powerlaw.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path}")
