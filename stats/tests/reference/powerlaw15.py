"""Load powerlaw 1.5 (the pure Clauset search) beside powerlaw 2.0.

The two cannot share site-packages, so 1.5 is installed on demand into
stats/tests/reference/.powerlaw15 (git-ignored) and loaded under the module name "powerlaw15".
Used by gen_powerlaw.py and bench/powerlaw_vs_python.py.
"""
import importlib.util
import os
import subprocess
import sys

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".powerlaw15")


def load():
    path = os.path.join(_DIR, "powerlaw.py")
    if not os.path.exists(path):
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--target", _DIR, "powerlaw==1.5"])
    spec = importlib.util.spec_from_file_location("powerlaw15", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
