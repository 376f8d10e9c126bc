"""``fit``'s arguments: one table of names, defaults, checks and documentation, validated once.

A new fit option is one row of ``OPTIONS`` (and, if the training loop must act on it, the code
that reads ``cfg.<name>``): ``Network.fit``'s signature and its argument list in the docs are made
from the table, and the MPI path compares every row across ranks before training
(``describe``). Arguments that are data (sample_weight, validation_data) are checked against X in
``data.py``; optimisers and schedules own their defaults and checks (``optim.py``,
``schedules.py``).
"""
import inspect
import os
from collections import namedtuple

from . import _validate as check
from . import optim as _optim
from . import schedules as _schedules

Option = namedtuple("Option", "default check doc")


def _optional(fn):
    return lambda v, name: None if v is None else fn(v, name)


def _callbacks(value, name):
    if callable(value):
        raise TypeError(f"{name} must be a list of callables f(epoch, loss, val_loss, network); "
                        f"got one callable: pass [{getattr(value, '__name__', 'f')}]")
    try:
        cbs = list(value or ())
    except TypeError:
        raise TypeError(f"{name} must be a list of callables f(epoch, loss, val_loss, network); "
                        f"got {value!r}") from None
    for cb in cbs:
        if not callable(cb):
            raise TypeError(f"{name} must be callables f(epoch, loss, val_loss, network); "
                            f"got {cb!r}")
    return cbs


def _path(value, name):
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike) or None; got {value!r}")
    path = os.fspath(value)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{name} must be a non-empty file path")
    return path


def _fraction(value, name):
    v = check.real(value, name, 0.0)
    if v >= 1:
        raise ValueError(f"{name} must be in [0, 1); got {v}")
    return v


def _l2(value, name):
    # scikit-learn's alpha as (gradient, loss) coefficients; the estimators set it
    pair = (value, value) if not isinstance(value, (tuple, list)) else value
    if len(pair) != 2:
        raise ValueError(f"{name} must be a number or a pair; got {value!r}")
    return tuple(check.real(v, name, 0.0) for v in pair)


def _comm(value, name):
    if value is None:
        return None
    for attr in ("Get_rank", "Get_size", "Allreduce", "allgather"):
        if not hasattr(value, attr):
            raise TypeError(f"{name} must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or "
                            f"None; got {value!r}")
    return value


def _orders(value, name):
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable(n) returning a permutation, or None")
    return value


_int = lambda minimum: lambda v, name: check.integer(v, name, minimum)  # noqa: E731
_real = lambda minimum: lambda v, name: check.real(v, name, minimum)  # noqa: E731
_pass = lambda v, name: v  # noqa: E731 (checked elsewhere: the optimiser, the data)

# name: (default, check(value, name) -> value, documentation). Order = fit's signature.
OPTIONS = {
    "epochs": Option(10, _int(1), "epochs to train in this call"),
    "lr": Option(None, _pass, "learning rate (default 0.05 for 'sgd', 0.001 for 'adam'/'adamw')"),
    "batch_size": Option(None, _optional(_int(1)), "rows per minibatch; None is min(200, "
                         "n_samples), scikit-learn's 'auto'; len(X) or more is the full batch "
                         "(with comm: the global batch)"),
    "optimizer": Option("sgd", _pass, "'sgd', 'adam', 'adamw' or a fastbp.optim object"),
    "momentum": Option(0.0, _pass, "SGD momentum"),
    "nesterov": Option(False, _pass, "SGD Nesterov momentum"),
    "weight_decay": Option(None, _pass, "L2 weight decay (default 0; 0.01 for 'adamw')"),
    "betas": Option(None, _pass, "Adam's (beta1, beta2), default (0.9, 0.999)"),
    "eps": Option(None, _pass, "Adam's eps, default 1e-8"),
    "schedule": Option(None, lambda v, name: _schedules.make(v), "learning-rate schedule: a name "
                       "('constant', 'step', 'exponential', 'cosine', 'invscaling', 'adaptive') or "
                       "a fastbp.schedules object"),
    "shuffle": Option(True, check.boolean, "draw a new sample order every epoch from the "
                      "network's seeded generator"),
    "sample_weight": Option(None, _pass, "(n_samples,) weights of the samples in the batch mean"),
    "validation_data": Option(None, _pass, "(X_val, y_val): loss (and accuracy) recorded per epoch"),
    "validation_split": Option(0.0, _fraction, "fraction of the rows held out for validation"),
    "early_stopping": Option(False, check.boolean, "stop after `patience` epochs without a "
                             "validation improvement, and restore the best weights"),
    "patience": Option(10, _int(1), "early stopping's patience, in epochs"),
    "min_delta": Option(0.0, _real(0.0), "the smallest fall of the validation loss that counts"),
    "callbacks": Option((), _callbacks, "callables f(epoch, loss, val_loss, network) after every "
                        "epoch; one returning False stops training"),
    "progress": Option(False, check.boolean, "a tqdm progress bar (rank 0 with comm)"),
    "log_every": Option(None, _optional(_int(0)), "print the epoch's loss, accuracy, validation "
                        "loss and accuracy and samples/s every N epochs (0: never; None: 0, or 1 "
                        "on rank 0 with comm)"),
    "checkpoint": Option(None, _optional(_path), "a path written atomically every "
                         "checkpoint_every epochs and at the end (rank 0 with comm)"),
    "checkpoint_every": Option(1, _int(1), "epochs between checkpoints"),
    "resume": Option(False, check.boolean, "continue this network's last run (optimiser state, "
                     "schedule, epoch count, shuffling) instead of starting a new one"),
    "stream": Option(None, _optional(check.boolean), "stream X from disk in chunks (None: when X "
                     "is a numpy.memmap)"),
    "comm": Option(None, _comm, "an mpi4py communicator: data-parallel training over MPI"),
    "sharded": Option(False, check.boolean, "with comm: each rank passes its own rows"),
}
# Set by fastbp.sklearn, not part of the public signature.
INTERNAL = {
    "l2": Option((0.0, 0.0), _l2, "scikit-learn's alpha"),
    "orders": Option(None, _orders, "a callable(n) giving each epoch's sample order"),
    "resume_any_batch": Option(False, check.boolean, "resume may change batch_size and shuffle"),
    "signed_weights": Option(False, check.boolean, "sample weights may be negative"),
}


_ALL = {**OPTIONS, **INTERNAL}
_DEFAULTS = {name: opt.default for name, opt in _ALL.items()}


class Config:
    """One fit call's validated arguments, as attributes, plus the optimiser and schedule."""

    def __init__(self, options):
        unknown = [k for k in options if k not in _ALL]
        if unknown:
            raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
        # Defaults are valid by construction: only the options passed are checked (a 1-epoch fit
        # costs tens of microseconds, and this is part of it).
        self.__dict__.update(_DEFAULTS)
        for name, value in options.items():
            setattr(self, name, _ALL[name].check(value, name))
        if "schedule" not in options:
            self.schedule = _schedules.Constant()
        if self.log_every is None:  # an MPI job shows its progress; one process stays quiet
            self.log_every = 0 if self.comm is None else 1
        self.optimizer = _make_optimizer(self)
        if self.validation_data is not None and self.validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        if self.sharded and self.comm is None:
            raise ValueError("sharded=True needs comm (an MPI communicator)")
        # whether something must act after every epoch (the compiled multi-epoch path cannot)
        self.per_epoch = bool(self.callbacks or self.validation_data is not None
                              or self.validation_split or self.progress or self.checkpoint
                              or self.schedule.needs_loss or self.comm is not None)

    def describe(self):
        """Every setting as plain values: what ranks compare before they train together."""
        out = {}
        for name in OPTIONS:
            v = getattr(self, name)
            if name in ("optimizer", "schedule"):
                v = v.config()
            elif name in ("sample_weight", "validation_data", "checkpoint"):
                v = v is not None
            elif name == "callbacks":
                v = len(v)
            elif name == "comm":
                continue
            out[name] = v
        out["l2"] = self.l2
        return out


def _make_optimizer(cfg):
    given = dict(lr=cfg.lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov or None,
                 weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    if isinstance(cfg.optimizer, _optim.Optimizer):
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise ValueError(f"optimizer is an object with its own settings; do not also pass "
                             f"{', '.join(extra)}")
        return cfg.optimizer
    return _optim.make(cfg.optimizer, **{k: v for k, v in given.items() if v is not None})


def signature(first):
    """fit's signature from the table: ``first`` parameters, then every option by keyword."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in first]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o.default)
               for n, o in OPTIONS.items()]
    return inspect.Signature(params)


def docs():
    """The options' documentation lines, for fit's docstring."""
    return "\n".join(f"        {n} (default {o.default!r}): {o.doc}." for n, o in OPTIONS.items())
