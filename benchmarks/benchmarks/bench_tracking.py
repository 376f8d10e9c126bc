"""Tracked values robust to machine noise: the fastbp/NumPy speedup measured side by side in one
process (against the lean NumPy loop, fastbp.baseline), fastbp's geometric-mean ratio to the
fastest installed peer over the shape grid, and the final training loss of both (a faster kernel
that computes something else shows as a changed loss)."""
from fastbp.bench import IMPLS as PEERS
from fastbp.bench import available, interleaved_times, run_grid

from .common import IMPLS, Trainer, final_loss

# (samples, epochs per timed call, repeats) per workload: seconds, not minutes, for both.
PLAN = {"W1": (None, 200, 5), "W2": (6400, 1, 5), "W3": (4096, 1, 3)}


class Speedup:
    params = ["W1", "W2", "W3"]
    param_names = ["workload"]
    unit = "x (numpy time / fastbp time)"
    timeout = 600

    def setup(self, workload):
        samples, self.epochs, self.repeats = PLAN[workload]
        self.trainers = {impl: Trainer(impl, workload, "float32", samples) for impl in IMPLS}
        for t in self.trainers.values():
            t.fit(epochs=1)

    def track_speedup(self, workload):
        timed = interleaved_times({impl: (lambda t=t: t.fit(epochs=self.epochs))
                                   for impl, t in self.trainers.items()}, self.repeats)
        return timed["numpy"][0] / timed["fastbp"][0]


class FinalLoss:
    """The training loss after a fixed run, float64 so both implementations agree to ~1e-12."""
    params = (IMPLS, ["W1", "W2", "W3"])
    param_names = ["impl", "workload"]
    unit = "loss"
    timeout = 600
    RUN = {"W1": (None, 500), "W2": (6400, 2), "W3": (4096, 2)}

    def setup(self, impl, workload):
        samples, self.epochs = self.RUN[workload]
        self.t = Trainer(impl, workload, "float64", samples)

    def track_final_loss(self, impl, workload):
        return final_loss(self.t.fit(epochs=self.epochs))


class Grid:
    """fastbp's ratio to the fastest installed peer (lean NumPy, PyTorch, JAX, scikit-learn) at
    each point of fastbp.workloads.GRID, side by side in one process, as their geometric mean:
    ``python -m fastbp.bench --grid --quick`` in one number."""
    unit = "x (fastest peer time / fastbp time, geometric mean)"
    timeout = 3600
    number = 1
    repeat = 1

    def track_grid_geomean(self):
        impls = ["fastbp"] + [i for i in PEERS if i != "fastbp" and available(i)]
        return run_grid(impls, quick=True, progress=False)["geomean"]
