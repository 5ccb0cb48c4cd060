"""Full x_min search: gradtel versus the `powerlaw` package, same data, same run.

usage: python3 bench/powerlaw_vs_python.py [N]     (default N = 100000)

Draws |Student-t(3)| (seeded), times powerlaw 1.5's Fit (the pure Clauset search; 2.0 is
slower still, with numerical refits), then gradtel's fit via the `powerlaw` bench of
gradtel-stats on the same bytes, and prints both results and the speed ratio.
Needs: numpy, and powerlaw 1.5 (installed on demand under stats/tests/reference/.powerlaw15).
"""
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "stats", "tests", "reference"))
import powerlaw15  # noqa: E402

pl = powerlaw15.load()

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
x = np.abs(np.random.default_rng(7).standard_t(3, n))
x = x[x > 0]

with tempfile.NamedTemporaryFile(suffix=".f64", delete=False) as f:
    f.write(x.astype("<f8").tobytes())
    path = f.name

# Build first so compilation is not timed.
subprocess.check_call(["cargo", "bench", "-p", "gradtel-stats", "--bench", "powerlaw", "--no-run"],
                      cwd=ROOT, stderr=subprocess.DEVNULL)
env = dict(os.environ, GRADTEL_BENCH_DATA=path)
out = subprocess.run(["cargo", "bench", "-q", "-p", "gradtel-stats", "--bench", "powerlaw"],
                     cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
ours = json.loads(out.strip().splitlines()[-1])

t = time.time()
with contextlib.redirect_stdout(io.StringIO()):
    fit = pl.Fit(x, discrete=False)
    xmin, alpha, D = fit.xmin, fit.alpha, fit.D
theirs = time.time() - t
os.unlink(path)

print(f"n = {len(x)} |Student-t(3)|")
print(f"powerlaw 1.5 : {theirs:9.3f} s  xmin={xmin:.12g} alpha={alpha:.12g} D={D:.12g}")
print(f"gradtel      : {ours['seconds']:9.3f} s  xmin={ours['xmin']:.12g} alpha={ours['alpha']:.12g} D={ours['D']:.12g}")
print(f"same fit     : xmin {'equal' if ours['xmin'] == xmin else 'DIFFERENT'}, "
      f"alpha rel.diff {abs(ours['alpha'] - alpha) / alpha:.1e}, D rel.diff {abs(ours['D'] - D) / D:.1e}")
print(f"speed-up     : {theirs / ours['seconds']:.0f}x")
