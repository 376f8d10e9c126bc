"""One training run: the validated plan, the state that carries between ``fit`` calls (optimiser,
schedule, epoch count, early-stopping record), and the epoch driver around the compiled loop.

The driver hands the compiled loop as many epochs at once as it can: one call for a whole run
when nothing needs to see the epochs as they finish (this is what keeps XOR at under a microsecond
per epoch), one epoch per call when a callback, validation, early stopping, a progress bar, a
checkpoint, a loss-driven schedule or streamed data does.
"""
import time

import numpy as np

from . import _kernels as K
from . import _threads
from . import _validate as check
from . import data as _data
from . import optim as _optim
from . import schedules as _schedules

ORDER_BUDGET = 1 << 20  # the most sample indices drawn ahead for shuffled epochs


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter. ``history`` holds the epochs that completed;
    the network keeps the finite parameters from before the failing epoch."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history


class History:
    """What ``fit`` returns, one entry per epoch of the call. ``loss``: the mean of the epoch's
    batch losses (each computed before its batch's update). With validation data, ``val_loss``
    and, for classification losses, ``val_accuracy``; ``lr`` the learning rate used."""

    def __init__(self):
        self.loss, self.val_loss, self.val_accuracy, self.lr = [], [], [], []
        self.stopped_early = False
        self.best_epoch = None

    def __len__(self):
        return len(self.loss)

    def __repr__(self):
        last = f", last loss {self.loss[-1]:.6g}" if self.loss else ""
        return f"History({len(self.loss)} epochs{last})"

    def plot(self, path, title=None):
        """Write the loss curves (and validation accuracy, if any) to ``path`` as a PNG.
        Needs matplotlib (``pip install fastbp[plot]``)."""
        try:
            import matplotlib
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install fastbp[plot]") from None
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        epochs = np.arange(1, len(self.loss) + 1)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(epochs, self.loss, label="training loss")
        if self.val_loss:
            ax.plot(epochs, self.val_loss, label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        lines, labels = ax.get_legend_handles_labels()
        if self.val_accuracy:
            ax2 = ax.twinx()
            ax2.plot(epochs, self.val_accuracy, color="tab:green", label="validation accuracy")
            ax2.set_ylabel("accuracy")
            more = ax2.get_legend_handles_labels()
            lines, labels = lines + more[0], labels + more[1]
        ax.legend(lines, labels, loc="center right")
        ax.set_title(title or f"{len(self.loss)} epochs")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)


class TrainState:
    """What carries from one ``fit`` to the next with resume=True, and into checkpoints: the
    optimiser (with its buffers and step count), the schedule (with its state), epochs and
    samples seen, the batch size and shuffling, and the early-stopping record."""

    def __init__(self, optimizer, schedule, batch_size, shuffle):
        self.optimizer = optimizer
        self.schedule = schedule
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.epoch = 0
        self.samples = 0
        self.best = None  # early stopping: (best validation loss, epochs since, best params)

    def config(self):
        return dict(optimizer=self.optimizer.config(), schedule=self.schedule.config(),
                    batch_size=self.batch_size, shuffle=self.shuffle)

    def meta(self):
        """JSON-able description (the arrays go beside it in the file)."""
        return dict(self.config(), step=self.optimizer.step, epoch=self.epoch,
                    samples=self.samples, schedule_state=self.schedule.get_state(),
                    best=None if self.best is None else self.best[:2])

    @classmethod
    def from_meta(cls, meta, opt_state, best_params, n_params):
        oc = dict(meta["optimizer"])
        kind = _optim.OPTIMIZERS[oc.pop("name")]
        if "betas" in oc:
            oc["betas"] = tuple(oc["betas"])
        opt = kind(**oc)
        if opt_state.size != opt.state_size(n_params) or (best_params is not None
                                                          and best_params.size != n_params):
            raise ValueError(f"the training state holds {opt_state.size} optimiser values for "
                             f"{n_params} parameters; the file is corrupt")
        opt.state, opt.step = opt_state, int(meta["step"])
        st = cls(opt, _schedules.from_config(meta["schedule"], meta["schedule_state"]),
                 meta["batch_size"], meta["shuffle"])
        st.epoch, st.samples = int(meta["epoch"]), int(meta["samples"])
        if meta["best"] is not None:
            st.best = (float(meta["best"][0]), int(meta["best"][1]), best_params)
        return st


def _resume_mismatch(old, new):
    """The first stateful setting (optimiser, schedule) in which two TrainState configs differ,
    or None. Batch size and shuffling may change from one call to the next."""
    for key in ("optimizer", "schedule"):
        if old[key] != new[key]:
            return key, old[key], new[key]
    return None


class Plan:
    """A validated ``fit`` call: data, state, workspaces and per-epoch controls."""

    def __init__(self, net, X, y, epochs=10, lr=None, batch_size=None, optimizer="sgd",
                 momentum=0.0, nesterov=False, weight_decay=None, betas=None, eps=None,
                 schedule=None, shuffle=True, sample_weight=None, validation_data=None,
                 validation_split=0.0, early_stopping=False, patience=10, min_delta=0.0,
                 callbacks=(), progress=False, log_every=0, checkpoint=None, checkpoint_every=1,
                 resume=False, stream=None, l2=0.0):
        self.net = net
        self.epochs = check.integer(epochs, "epochs", 1)
        batch_size = check.integer(batch_size, "batch_size", 1, allow_none=True)
        shuffle = check.boolean(shuffle, "shuffle")
        self.log_every = check.integer(log_every, "log_every", 0)
        self.progress = check.boolean(progress, "progress")
        self.resume = check.boolean(resume, "resume")
        # scikit-learn's alpha (the estimators set it): (gradient, loss) coefficients
        l2 = (l2, l2) if np.ndim(l2) == 0 else l2
        self.l2 = np.array([check.real(v, "alpha", 0.0) for v in l2], dtype=np.float64)
        opt = self._optimizer(optimizer, lr, momentum, nesterov, weight_decay, betas, eps)
        sched = _schedules.make(schedule)
        self.callbacks = list(callbacks or ())
        for cb in self.callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables f(epoch, loss, val_loss, network); "
                                f"got {cb!r}")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.checkpoint_every = check.integer(checkpoint_every, "checkpoint_every", 1)

        # data
        self.streamed = _data.wants_stream(X, stream)
        if self.streamed:
            self.stream = _data.Stream(X, net.sizes[0], net.dtype, batch_size)
            n = self.stream.n
            Y, one_d = check.targets(y, n, net._loss.targets, net.sizes[-1], net.dtype)
            self.X = None
        else:
            self.X, Y, one_d = net._XY(X, y)
            n = self.X.shape[0]
        self.SW = self._sample_weight(sample_weight, n, net.dtype)
        self.val = None
        validation_split = check.real(validation_split, "validation_split", 0.0)
        if validation_split >= 1:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
        if validation_data is not None and validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        if validation_data is not None:
            try:
                Xv, yv = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a pair (X_val, y_val)") from None
            Xv, Yv, _ = net._XY(Xv, yv)
            self.val = (Xv, Yv)
        elif validation_split:
            if self.streamed:
                raise ValueError("validation_split needs X in memory; pass validation_data "
                                 "with streamed X")
            n_val = int(round(n * validation_split))
            if n_val < 1 or n_val >= n:
                raise ValueError(f"validation_split={validation_split} leaves {n_val} of {n} "
                                 "samples for validation; it needs at least 1 and fewer than all")
            # Its own stream of the seed: holding data out does not change the shuffles.
            rng = np.random.default_rng(np.random.SeedSequence(net.seed, spawn_key=(2,)))
            perm = rng.permutation(n)
            keep, held = np.sort(perm[n_val:]), np.sort(perm[:n_val])
            self.val = (self.X[held], Y[held])
            self.X, Y = np.ascontiguousarray(self.X[keep]), np.ascontiguousarray(Y[keep])
            self.SW = self.SW[keep] if self.SW.size else self.SW
            n = n - n_val
        self.Y = Y
        self.n = n
        self.early_stopping = check.boolean(early_stopping, "early_stopping")
        self.patience = check.integer(patience, "patience", 1)
        self.min_delta = check.real(min_delta, "min_delta", 0.0)
        if self.early_stopping and self.val is None:
            raise ValueError("early_stopping=True needs validation_data or validation_split")
        self.batch = n if batch_size is None else min(batch_size, n)

        # state: fresh, or the network's own when resuming (settings must agree)
        fresh = TrainState(opt, sched, batch_size, shuffle)
        if self.resume:
            old = net._train
            if old is None:
                raise ValueError("resume=True needs a network that has been trained with fit "
                                 "(or loaded from a checkpoint); this one has no training state")
            diff = _resume_mismatch(old.config(), fresh.config())
            if diff:
                raise ValueError(f"resume=True continues the saved run, whose {diff[0]} is "
                                 f"{diff[1]!r}; this call asks for {diff[2]!r}")
            self.state = old
            old.batch_size, old.shuffle = batch_size, shuffle
        else:
            opt.init_state(net.n_params, net.dtype)
            self.state = fresh
        self.one_d = one_d

        self.per_epoch = bool(self.callbacks or self.val is not None or self.progress
                              or self.checkpoint or self.state.schedule.needs_loss
                              or self.streamed)

    def start(self, rows):
        """Allocate the workspaces for batches of up to ``rows`` rows and hand the run's state to
        the network (``predict``'s output shape, ``resume`` and checkpoints read it from there).
        Called once every check has passed."""
        net = self.net
        net._targets_1d = self.one_d
        net._train = self.state
        ws = net._workspaces(rows)
        self.use_blas = net._use_blas(rows)
        self.workspaces = (ws["inp_buf"], np.empty(rows * self.Y.shape[1], net.dtype),
                           ws["act_buf"], ws["delta_buf"], ws["row_loss"])
        self.grads = np.empty_like(net._params)
        self.backup = np.empty(net.n_params + self.state.optimizer.state.size, net.dtype)

    @staticmethod
    def _optimizer(optimizer, lr, momentum, nesterov, weight_decay, betas, eps):
        if isinstance(optimizer, _optim.Optimizer):
            given = [k for k, v in dict(lr=lr, momentum=momentum or None, nesterov=nesterov or None,
                                        weight_decay=weight_decay, betas=betas, eps=eps).items()
                     if v is not None]
            if given:
                raise ValueError(f"optimizer is an object with its own settings; do not also pass "
                                 f"{', '.join(given)}")
            return optimizer
        name = optimizer if isinstance(optimizer, str) else None
        if lr is None:
            lr = 0.05 if name == "sgd" else 0.001
        return _optim.make(optimizer, lr, momentum, nesterov, weight_decay,
                           (0.9, 0.999) if betas is None else betas, 1e-8 if eps is None else eps)

    @staticmethod
    def _sample_weight(sample_weight, n, dtype):
        if sample_weight is None:
            return np.empty(0, dtype)
        sw = check.features(np.asarray(sample_weight).reshape(-1, 1) if np.ndim(sample_weight) == 1
                            else sample_weight, 1, dtype, name="sample_weight")[:, 0]
        if sw.shape[0] != n:
            raise ValueError(f"sample_weight has {sw.shape[0]} entries but X has {n} samples")
        if (sw < 0).any() or not sw.sum() > 0:
            raise ValueError("sample_weight must be >= 0 with a positive sum")
        return np.ascontiguousarray(sw)

    # ---------------------------------------------------------------- running epochs

    def _lrs(self, count):
        st = self.state
        if type(st.schedule) is _schedules.Constant:
            return np.full(count, st.optimizer.lr, dtype=self.net.dtype)
        k = np.arange(count)
        return st.schedule.rate(st.optimizer.lr, st.epoch + k, st.samples + k * self.n).astype(
            self.net.dtype)

    def run(self, count, order=None):
        """Train ``count`` epochs in compiled code; returns (losses, lrs) of those completed.
        order (count or 1, n): the epochs' sample orders, when the caller draws them itself
        (the scikit-learn estimators do, from their random_state)."""
        net, st = self.net, self.state
        lrs = self._lrs(count)
        step = np.array([st.optimizer.step], dtype=np.int64)
        if self.streamed:
            losses = self._run_streamed(lrs, step)
        else:
            if order is None:
                order = net._orders(self.n, count) if st.shuffle else np.arange(self.n)[None, :]
            losses = np.empty(count)
            done = K.train_epochs(net._params, st.optimizer.state, step, self.grads, losses,
                                  self.X, self.Y, self.SW, order, lrs, net._layout, net._acts,
                                  self.use_blas, net._loss.code, self.batch, st.optimizer.code,
                                  st.optimizer.hyper(net.dtype), self.l2, *self.workspaces,
                                  self.backup)
            losses = losses[:done]
        st.optimizer.step = int(step[0])
        self.advance(len(losses), self.n)
        return losses, lrs[:len(losses)]

    def advance(self, epochs, n):
        """Count ``epochs`` finished epochs of ``n`` samples each in the carried state."""
        self.state.epoch += epochs
        self.state.samples += epochs * n

    def record(self, history, losses, lrs, log=True):
        """Append finished epochs to history (one call each: at XOR size a per-epoch Python loop
        costs a third of the epoch); print the loss if the last of them is a logging epoch (runs
        of epochs are cut to end on one)."""
        history.loss.extend(np.asarray(losses, dtype=np.float64).tolist())
        history.lr.extend(np.asarray(lrs, dtype=np.float64).tolist())
        if log and self.log_every and self.state.epoch % self.log_every == 0:
            print(f"epoch {self.state.epoch}  loss {history.loss[-1]:.4f}")

    def _run_streamed(self, lrs, step):
        """One epoch over the stream (lrs has one entry): chunks in a shuffled order, rows shuffled
        within each; the epoch is undone as a whole if it diverges."""
        net, st = self.net, self.state
        params0, state0, step0 = net._params.copy(), st.optimizer.state.copy(), int(step[0])
        rng = net._shuffle_rng
        chunk_order = rng.permutation(self.stream.n_chunks) if st.shuffle else None
        total, loss = 0.0, np.empty(1)
        for a, b in self.stream.chunks(chunk_order):
            Xc = self.stream.read(a, b)
            order = (rng.permutation(b - a) if st.shuffle else np.arange(b - a))[None, :]
            SWc = self.SW[a:b] if self.SW.size else self.SW
            done = K.train_epochs(net._params, st.optimizer.state, step, self.grads, loss, Xc,
                                  self.Y[a:b], SWc, order, lrs, net._layout, net._acts,
                                  self.use_blas, net._loss.code, self.batch, st.optimizer.code,
                                  st.optimizer.hyper(net.dtype), self.l2, *self.workspaces,
                                  self.backup)
            if not done:
                net._params[:], st.optimizer.state[:], step[0] = params0, state0, step0
                return np.empty(0)
            total += loss[0] * (b - a)
        return np.array([total / self.stream.n])

    def validate(self):
        """(validation loss, accuracy or None) of the network now."""
        Xv, Yv = self.val
        out, value = self.net._evaluate(Xv, Yv)
        acc = None
        if self.net.loss_name == "cross_entropy":
            acc = float((out.argmax(axis=1) == Yv[:, 0]).mean())
        elif self.net.loss_name == "bce":
            acc = float(((out > 0.5) == (Yv > 0.5)).all(axis=1).mean())
        return float(value), acc


def fit(net, X, y, **kwargs):
    """``Network.fit``'s body (documented there)."""
    plan = Plan(net, X, y, **kwargs)
    plan.start(plan.batch)
    st = plan.state
    history = History()
    bar = _progress_bar(plan) if plan.progress else None
    n = plan.n
    per_call = 1 if plan.per_epoch else (
        max(1, min(plan.epochs, ORDER_BUDGET // n)) if st.shuffle else plan.epochs)
    done = 0
    try:
        with _threads.compute(plan.use_blas.any()):
            while done < plan.epochs:
                count = min(per_call, plan.epochs - done)
                if plan.log_every:  # stop each call on a logging epoch
                    count = min(count, plan.log_every - st.epoch % plan.log_every)
                t0 = time.perf_counter()
                losses, lrs = plan.run(count)
                seconds = time.perf_counter() - t0
                plan.record(history, losses, lrs)
                done += len(losses)
                if len(losses) < count:
                    _diverged(history, plan)
                if plan.per_epoch and _end_of_epoch(plan, history, bar, seconds):
                    history.stopped_early = True
                    break
    finally:
        if bar is not None:
            bar.close()
    if plan.early_stopping and st.best is not None:
        net._params[:] = st.best[2]
        history.best_epoch = len(history.loss) - st.best[1]
    if plan.checkpoint:
        net.save(plan.checkpoint)
    return history


def _end_of_epoch(plan, history, bar, seconds):
    """Validation, early stopping, schedule feedback, progress, checkpoint and callbacks after one
    epoch; True to stop."""
    net, st = plan.net, plan.state
    stop = False
    val_loss = None
    if plan.val is not None:
        val_loss, acc = plan.validate()
        history.val_loss.append(val_loss)
        if acc is not None:
            history.val_accuracy.append(acc)
        if plan.early_stopping:
            if st.best is None or val_loss < st.best[0] - plan.min_delta:
                st.best = (val_loss, 0, net._params.copy())
            else:
                st.best = (st.best[0], st.best[1] + 1, st.best[2])
                stop = st.best[1] >= plan.patience
    if st.schedule.needs_loss:
        stop = st.schedule.observe(history.loss[-1]) or stop
    if bar is not None:
        bar.update(1)
        post = dict(loss=f"{history.loss[-1]:.4g}", samples_per_s=f"{plan.n / seconds:,.0f}")
        if val_loss is not None:
            post["val_loss"] = f"{val_loss:.4g}"
        bar.set_postfix(post)
    if plan.checkpoint and st.epoch % plan.checkpoint_every == 0:
        net.save(plan.checkpoint)
    for cb in plan.callbacks:
        if cb(st.epoch, history.loss[-1], val_loss, net) is False:
            stop = True
    return stop


def _progress_bar(plan):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install fastbp[progress]") from None
    return tqdm(total=plan.epochs, unit="epoch", desc="fit")


def _diverged(history, plan):
    epoch = len(history.loss) + 1
    raise DivergenceError(
        f"training diverged in epoch {epoch} of {plan.epochs}: the loss or a parameter "
        f"became NaN or infinite. The parameters are restored to their values before that "
        f"epoch; try a smaller lr (now {plan.state.optimizer.lr:g}).", history)
