"""Optimisers over the flat parameter buffer. An optimiser owns its state (the momentum buffer)."""
import numpy as np

from . import _kernels as K
from . import _validate as check


class SGD:
    """Stochastic gradient descent with the semantics of ``torch.optim.SGD`` (no dampening).

    g = grad + weight_decay * p;  v = momentum * v + g;  g = g + momentum * v if nesterov else v;
    p -= lr * g.
    """

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr = check.real(lr, "lr", 0.0, strict=True)
        self.momentum = check.real(momentum, "momentum", 0.0)
        self.nesterov = check.boolean(nesterov, "nesterov")
        self.weight_decay = check.real(weight_decay, "weight_decay", 0.0)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.velocity = None

    def init_state(self, n_params, dtype):
        """Allocate the momentum buffer (P,), zero, which makes the first step's v = g."""
        self.velocity = np.zeros(n_params if self.momentum else 0, dtype=dtype)

    def hyper(self, dtype):
        """(lr, momentum, nesterov, weight_decay) as the compiled update takes them."""
        t = np.dtype(dtype).type
        return t(self.lr), t(self.momentum), self.nesterov, t(self.weight_decay)

    def step(self, params, grads):
        """One update of params (P,) in place from grads (P,)."""
        K.sgd_update(params, self.velocity, grads, *self.hyper(params.dtype))
