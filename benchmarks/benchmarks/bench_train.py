"""Training time: one epoch, one optimiser step, and forward-only inference, for both
implementations (asv's comparison of the ``impl`` parameter gives the ratio)."""
from .common import IMPLS, Trainer


class W1XOR:
    """The lab exercise, 2-4-1 sigmoid/bce on the XOR table: per-call cost and the compiled loop."""
    params = (IMPLS, ["float32", "float64"])
    param_names = ["impl", "dtype"]

    def setup(self, impl, dtype):
        self.t = Trainer(impl, "W1", dtype)
        self.t.fit(epochs=2)  # compile (or load the Numba cache) outside the timing

    def time_one_epoch(self, impl, dtype):
        """One fit call of one epoch: what a caller pays per call, boundary checks included."""
        self.t.fit(epochs=1)

    def time_1000_epochs(self, impl, dtype):
        """One fit call of 1000 epochs: the training loop itself, per epoch = this / 1000."""
        self.t.fit(epochs=1000)


class W2MNIST:
    """784-256-128-10 relu/cross-entropy, batch 128."""
    params = (IMPLS, ["float32", "float64"])
    param_names = ["impl", "dtype"]
    timeout = 300

    def setup(self, impl, dtype):
        self.t = Trainer(impl, "W2", dtype, samples=12800)
        self.t.step()

    def time_step(self, impl, dtype):
        self.t.step()

    def time_epoch_12800_samples(self, impl, dtype):
        """100 batches of 128 (a fifth of W2's 60000-sample epoch, to keep the suite short)."""
        self.t.fit(epochs=1)

    def time_forward(self, impl, dtype):
        self.t.forward()


class W3LargeBatch:
    """1024-2048-2048-1024 relu/mse, batch 4096, float32."""
    params = IMPLS
    param_names = ["impl"]
    timeout = 600
    number = 1
    repeat = (2, 5, 60.0)

    def setup(self, impl):
        self.t = Trainer(impl, "W3", "float32", samples=8192)
        self.t.step()

    def time_step(self, impl):
        self.t.step()

    def time_forward(self, impl):
        self.t.forward()
