"""Regenerate the spectrum fixtures: three data matrices (.npy) and the exact eigenvalues of
their centred covariance from numpy.linalg.eigvalsh (spectrum.json).

usage: python3 stats/tests/reference/gen_spectrum.py
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20261128)
n, d = 600, 48
Q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a random rotation, so no axis is special
k = np.arange(1, d + 1)
cases = {
    # covariance spectrum exactly proportional to k^-1.5 (in a rotated basis)
    "power_law": rng.normal(size=(n, d)) * np.sqrt(k ** -1.5) @ Q.T,
    # isotropic: every eigenvalue equal
    "flat": rng.normal(size=(n, d)),
    # rank-5 signal plus small isotropic noise
    "low_rank_noise": rng.normal(size=(n, 5)) @ (3.0 * rng.normal(size=(5, d))) + 0.1 * rng.normal(size=(n, d)),
}
out = {"numpy": np.__version__, "n": n, "d": d, "cases": []}
for name, x in cases.items():
    np.save(os.path.join(HERE, f"spectrum_{name}.npy"), x.astype("<f8"))
    cov = np.cov(x, rowvar=False)  # centred, divided by n - 1
    ev = np.linalg.eigvalsh(cov)[::-1]
    out["cases"].append({"name": name, "file": f"spectrum_{name}.npy", "cov_eigenvalues": [float(v) for v in ev]})
with open(os.path.join(HERE, "spectrum.json"), "w") as f:
    json.dump(out, f)
print("wrote spectrum fixtures")
