"""Frequent Directions (gradtel, ell = 128) versus numpy.linalg.eigvalsh of the exact
covariance, same rows, same run; checks every sketched eigenvalue against the FD bound.
Then, in the same run, CountSketch projection throughput against a plain sum.

usage: python3 bench/fd_vs_numpy.py [ROWS] [DIM]     (default 20000 4096)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
d = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
ell = 128
rng = np.random.default_rng(11)
# A power-law covariance spectrum (k^-1) in a random-ish basis: Gaussian rows scaled per
# coordinate, then mixed by a few Householder reflections (cheap, orthogonal).
x = rng.standard_normal((n, d)) * (np.arange(1, d + 1) ** -0.5)
for _ in range(3):
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    x -= 2.0 * np.outer(x @ v, v)

with tempfile.NamedTemporaryFile(suffix=".f64", delete=False) as f:
    f.write(np.ascontiguousarray(x, dtype="<f8").tobytes())
    path = f.name
subprocess.check_call(["cargo", "bench", "-p", "gradtel-stats", "--bench", "sketch", "--no-run"],
                      cwd=ROOT, stderr=subprocess.DEVNULL)
env = dict(os.environ, GRADTEL_BENCH_ROWS=path, GRADTEL_BENCH_DIM=str(d), GRADTEL_BENCH_ELL=str(ell))
out = subprocess.run(["cargo", "bench", "-q", "-p", "gradtel-stats", "--bench", "sketch"],
                     cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
ours = json.loads(out.strip().splitlines()[-1])
os.unlink(path)

t = time.time()
cov = np.cov(x, rowvar=False)
exact = np.linalg.eigvalsh(cov)[::-1]
theirs = time.time() - t

sk = np.array(ours["eigenvalues"])
diff = exact[: len(sk)] - sk
ok = bool(np.all(diff >= -1e-9 * exact[0]) and np.all(diff <= ours["bound"] * (1 + 1e-9) + 1e-12))
print(f"rows={n} dim={d} ell={ell}")
print(f"numpy cov + eigvalsh : {theirs:8.2f} s")
print(f"gradtel FD (ell={ell})  : {ours['seconds']:8.2f} s   bound (covariance units) {ours['bound']:.4g}")
print(f"speed-up             : {theirs / ours['seconds']:.1f}x")
print(f"all {len(sk)} sketched eigenvalues within [exact - bound, exact]: {ok}")
print(f"largest eigenvalue: exact {exact[0]:.6g}, sketch {sk[0]:.6g}; max under-estimate {diff.max():.4g}")

cs = subprocess.run(["cargo", "bench", "-q", "-p", "gradtel-stats", "--bench", "sketch"],
                    cwd=ROOT, capture_output=True, text=True, check=True).stdout
print(cs.strip())
