"""Learning-rate schedules. The rate is set per epoch: ``rate(base_lr, epoch, samples)`` gives the
rates of epochs ``epoch`` (an integer array: 0, 1, ...) after ``samples`` (an array alike) training
samples have been seen, so a whole run of epochs can be handed to the compiled loop as one array. Formulas as PyTorch's closed forms
and scikit-learn's ``learning_rate`` options; ``Adaptive`` is the one that listens to the loss.
"""
import math

import numpy as np

from . import _validate as check


class Schedule:
    """Base class: a constant rate. ``observe(loss)`` is called after each epoch by schedules that
    need it (``needs_loss``); it returns True when training should stop."""

    needs_loss = False
    name = "constant"

    def rate(self, base_lr, epoch, samples):
        return np.full(np.shape(epoch), base_lr, dtype=np.float64)

    def observe(self, loss):
        return False

    def start_run(self, epochs):
        """A new run of ``epochs`` epochs begins with this schedule (not called on resume)."""

    def config(self):
        return dict(name=self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")})

    def get_state(self):
        return {}

    def set_state(self, state):
        pass

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """lr for every epoch."""


class StepLR(Schedule):
    """``torch.optim.lr_scheduler.StepLR``: lr * gamma ** (epoch // step_size). step_size None
    (the default, and ``schedule='step'``): a third of the run, so the rate falls twice, at a
    third and at two thirds of the epochs of the fit call that starts the run."""

    name = "step"

    def __init__(self, step_size=None, gamma=0.1):
        self.step_size = check.integer(step_size, "step_size", 1, allow_none=True)
        self.gamma = check.real(gamma, "gamma", 0.0, strict=True)
        self._length = None

    def start_run(self, epochs):
        self._length = max(1, -(-epochs // 3))

    def rate(self, base_lr, epoch, samples):
        step = self.step_size or self._length
        return base_lr * self.gamma ** (np.asarray(epoch) // step).astype(np.float64)

    def get_state(self):
        return dict(length=self._length)

    def set_state(self, state):
        self._length = state.get("length")


class ExponentialLR(Schedule):
    """``torch.optim.lr_scheduler.ExponentialLR``: lr * gamma ** epoch."""

    name = "exponential"

    def __init__(self, gamma=0.95):
        self.gamma = check.real(gamma, "gamma", 0.0, strict=True)

    def rate(self, base_lr, epoch, samples):
        return base_lr * self.gamma ** np.asarray(epoch, dtype=np.float64)


class CosineAnnealingLR(Schedule):
    """``torch.optim.lr_scheduler.CosineAnnealingLR``, closed form:
    eta_min + (lr - eta_min) (1 + cos(pi epoch / T_max)) / 2 (periodic past T_max, as torch's).
    T_max None (the default, and ``schedule='cosine'``): the epochs of the fit call that starts
    the run, so the rate falls to eta_min over them; a resumed run keeps that length and stays at
    eta_min past it (pass T_max to plan a run made of several calls)."""

    name = "cosine"

    def __init__(self, T_max=None, eta_min=0.0):
        self.T_max = check.integer(T_max, "T_max", 1, allow_none=True)
        self.eta_min = check.real(eta_min, "eta_min", 0.0)
        self._length = None

    def start_run(self, epochs):
        self._length = epochs

    def rate(self, base_lr, epoch, samples):
        if self.T_max is None:  # the run's length: no restart after it, the rate stays at eta_min
            epoch = np.minimum(epoch, self._length)
        T = self.T_max or self._length
        return self.eta_min + (base_lr - self.eta_min) * (1 + np.cos(math.pi * epoch / T)) / 2

    def get_state(self):
        return dict(length=self._length)

    def set_state(self, state):
        self._length = state.get("length")


class InvScaling(Schedule):
    """scikit-learn's ``learning_rate='invscaling'``: lr / (samples + 1) ** power_t, where
    samples counts the training samples seen before the epoch. ``seen``: samples seen before this
    run (scikit-learn's cumulative ``t_`` across warm-start fits); the run's first epoch is at lr,
    as scikit-learn's fresh optimiser is."""

    name = "invscaling"

    def __init__(self, power_t=0.5, seen=0):
        self.power_t = check.real(power_t, "power_t", 0.0)
        self.seen = check.integer(seen, "seen", 0)

    def rate(self, base_lr, epoch, samples):
        samples = np.asarray(samples, dtype=np.float64)
        scaled = base_lr / (samples + self.seen * (samples > 0) + 1) ** self.power_t
        return np.where(np.asarray(epoch) == 0, base_lr, scaled)


class Adaptive(Schedule):
    """scikit-learn's ``learning_rate='adaptive'``: the rate stays at lr while the training loss
    keeps falling by at least tol; after more than ``patience`` epochs without that, it is divided
    by 5 (``factor``), and training stops once it would drop to min_lr or below."""

    needs_loss = True
    name = "adaptive"

    def __init__(self, patience=10, tol=1e-4, factor=0.2, min_lr=1e-6):
        self.patience = check.integer(patience, "patience", 1)
        self.tol = check.real(tol, "tol", 0.0)
        self.factor = check.real(factor, "factor", 0.0, strict=True)
        if self.factor >= 1:
            raise ValueError(f"factor must be in (0, 1); got {factor}")
        self.min_lr = check.real(min_lr, "min_lr", 0.0)
        self._scale = 1.0
        self._best = math.inf
        self._bad = 0
        self._base = None

    def rate(self, base_lr, epoch, samples):
        self._base = base_lr
        return np.full(np.shape(epoch), base_lr * self._scale, dtype=np.float64)

    def observe(self, loss):
        self._bad = self._bad + 1 if loss > self._best - self.tol else 0
        self._best = min(self._best, loss)
        if self._bad > self.patience:
            self._bad = 0
            return self.reduce()
        return False

    def reduce(self):
        """Divide the rate by 1 / factor; True (stop) instead if it is already at min_lr or below."""
        if self._base is not None and self._base * self._scale <= self.min_lr:
            return True
        self._scale *= self.factor
        return False

    def get_state(self):
        return dict(scale=self._scale, best=self._best, bad=self._bad)

    def set_state(self, state):
        self._scale, self._best, self._bad = state["scale"], state["best"], state["bad"]


SCHEDULES = {s.name: s for s in (Constant, StepLR, ExponentialLR, CosineAnnealingLR, InvScaling,
                                 Adaptive)}


def make(schedule):
    """A Schedule from a name in SCHEDULES (default arguments), a Schedule, or None (constant)."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, Schedule):
        return schedule
    check.choice(schedule, "schedule", SCHEDULES)
    return SCHEDULES[schedule]()


def from_config(config, state):
    """The Schedule saved as ``config()`` and ``get_state()``."""
    config = dict(config)
    s = SCHEDULES[config.pop("name")](**config)
    s.set_state(state)
    return s
