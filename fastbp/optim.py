"""Optimisers over the flat parameter buffer, with PyTorch's semantics. An optimiser owns its state
(momentum, or Adam's moments) and its step count; the update itself is compiled
(``_kernels.optimizer_update``), here are the hyper-parameters and the state's bookkeeping."""
import numpy as np

from . import _kernels as K
from . import _validate as check


class Optimizer:
    """Base class. ``state`` (S,) and ``step`` (updates so far) carry over between ``fit(...,
    resume=True)`` calls and into checkpoints."""

    code = None
    name = None

    def __init__(self, lr, weight_decay):
        self.lr = check.real(lr, "lr", 0.0, strict=True)
        self.weight_decay = check.real(weight_decay, "weight_decay", 0.0)
        self.state = None
        self.step = 0

    def state_size(self, n_params):
        raise NotImplementedError

    def init_state(self, n_params, dtype):
        """Fresh state for P parameters: zero buffers, step 0 (PyTorch's starting point)."""
        self.state = np.zeros(self.state_size(n_params), dtype=dtype)
        self.step = 0

    def hyper(self, dtype):
        """The hyper-parameters as the compiled update takes them: an array (N_HYPER,) of dtype."""
        h = np.zeros(K.N_HYPER, dtype=dtype)
        self._fill(h)
        h[K.H_WEIGHT_DECAY] = self.weight_decay
        return h

    def config(self):
        """The hyper-parameters as plain values: what resuming must match, and what is saved."""
        return dict(name=self.name, lr=self.lr, weight_decay=self.weight_decay, **self._extra())

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """``torch.optim.SGD`` (no dampening): g = grad + weight_decay * p; v = momentum * v + g;
    g = g + momentum * v if nesterov else v; p -= lr * g.

    update_velocity=True keeps scikit-learn's velocity of updates instead, u = momentum * u -
    lr * g, p += u (Nesterov: momentum * u - lr * g): the same steps at a constant rate, different
    ones once a schedule changes the rate."""

    code = K.OPT_SGD
    name = "sgd"

    def __init__(self, lr=0.05, momentum=0.0, nesterov=False, weight_decay=0.0,
                 update_velocity=False):
        super().__init__(lr, weight_decay)
        self.momentum = check.real(momentum, "momentum", 0.0)
        self.nesterov = check.boolean(nesterov, "nesterov")
        self.update_velocity = check.boolean(update_velocity, "update_velocity")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def state_size(self, n_params):
        return n_params if self.momentum else 0

    def _fill(self, h):
        h[K.H_MOMENTUM] = self.momentum
        h[K.H_NESTEROV] = self.nesterov
        h[K.H_UPDATE_VELOCITY] = self.update_velocity

    def _extra(self):
        return dict(momentum=self.momentum, nesterov=self.nesterov,
                    update_velocity=self.update_velocity)


class Adam(Optimizer):
    """``torch.optim.Adam``: g = grad + weight_decay * p; m = b1 m + (1 - b1) g;
    v = b2 v + (1 - b2) g^2; p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).

    eps_inside=True adds eps before the bias correction instead, m / ((sqrt(v) + eps) /
    sqrt(1 - b2^t)), as scikit-learn's Adam (and the original paper's algorithm) does."""

    code = K.OPT_ADAM
    name = "adam"
    default_weight_decay = 0.0

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=None,
                 eps_inside=False):
        super().__init__(lr, self.default_weight_decay if weight_decay is None else weight_decay)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}") from None
        self.betas = (check.real(b1, "betas[0]", 0.0), check.real(b2, "betas[1]", 0.0))
        for i, b in enumerate(self.betas):
            if b >= 1:
                raise ValueError(f"betas[{i}] must be in [0, 1); got {b}")
        self.eps = check.real(eps, "eps", 0.0, strict=True)
        self.eps_inside = check.boolean(eps_inside, "eps_inside")

    def state_size(self, n_params):
        return 2 * n_params

    def _fill(self, h):
        h[K.H_BETA1], h[K.H_BETA2] = self.betas
        h[K.H_EPS] = self.eps
        h[K.H_EPS_INSIDE] = self.eps_inside

    def _extra(self):
        return dict(betas=list(self.betas), eps=self.eps, eps_inside=self.eps_inside)


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay, p *= 1 - lr * weight_decay before
    the Adam step (and no decay added to the gradient). weight_decay defaults to 0.01, as torch."""

    code = K.OPT_ADAMW
    name = "adamw"
    default_weight_decay = 0.01


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make(optimizer, **settings):
    """An optimiser from ``fit``'s arguments, ``optimizer`` being a name in OPTIMIZERS; settings
    left out take the optimiser's own defaults."""
    check.choice(optimizer, "optimizer", OPTIMIZERS)
    if optimizer != "sgd":
        if settings.pop("momentum", None) or settings.pop("nesterov", None):
            raise ValueError(f"momentum and nesterov are SGD's; optimizer={optimizer!r} takes betas")
    else:
        for name in ("betas", "eps"):
            if settings.pop(name, None) is not None:
                raise ValueError(f"{name} is Adam's; optimizer='sgd' takes momentum and nesterov")
    return OPTIMIZERS[optimizer](**settings)
