"""Peak memory of a W3 fit (one optimiser step over 4096 samples, float32) for both."""
from .common import IMPLS, Trainer


class W3Memory:
    params = IMPLS
    param_names = ["impl"]
    timeout = 300

    def setup(self, impl):
        self.t = Trainer(impl, "W3", "float32", samples=4096)

    def peakmem_fit(self, impl):
        self.t.fit(epochs=1)
