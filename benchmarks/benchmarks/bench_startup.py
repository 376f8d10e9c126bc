"""Start-up costs, each in a fresh interpreter: import, and the first fit with a cold Numba cache
(compilation) and with a warm one (cache load). Steady-state times are in bench_train."""
import subprocess
import sys

FIRST_FIT = """
import numpy as np
import fastbp
rng = np.random.default_rng(0)
X = rng.standard_normal((256, 784)).astype(np.float32)
y = rng.integers(0, 10, 256)
fastbp.Network([784, 256, 128, 10], seed=0).fit(X, y, epochs=1, batch_size=128)
"""


class Startup:
    timeout = 600
    number = 1

    def timeraw_import(self):
        return "import fastbp"

    def timeraw_first_fit_warm_cache(self):
        """Import and first W2-shaped fit after the cache was filled by a previous process."""
        subprocess.run([sys.executable, "-c", FIRST_FIT], check=True)
        return FIRST_FIT


class ColdCompile:
    timeout = 900
    number = 1
    repeat = 1

    def timeraw_first_fit_cold_cache(self):
        """Import and first W2-shaped fit compiling everything: NUMBA_CACHE_DIR is a new, empty
        folder (set before numba is imported)."""
        setup = ("import os, tempfile\n"
                 "os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp(prefix='fastbp-cold-')\n")
        return FIRST_FIT, setup
