"""``fit``: the one per-epoch driver, for one process, for MPI and for the scikit-learn estimators.

It validates the call (config.Config, data.TrainData, state.TrainState; with MPI every rank's
run description is compared first), hands the network its run, and drives the engine: many epochs
per compiled call when nothing needs to see them (this is what keeps XOR under a microsecond per
epoch), one epoch at a time when validation, early stopping, callbacks, progress, checkpoints, a
loss-driven schedule, streamed data or MPI do. After each epoch, in one place: validation, early
stopping, schedule feedback, progress and logging, checkpoints, callbacks.

Ctrl-C: while fit runs in the main thread, SIGINT is noted and acted on between compiled calls,
which are bounded in work (engine.WORK_PER_CALL), so it lands within a fraction of a second; the network
is then exactly that of ``net.epoch`` completed epochs (weights, optimiser state and step,
shuffling stream) and ``fit(..., resume=True)`` carries on as if nothing had happened.
"""
import _signal
import threading
import time
from array import array
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np

from . import config as _config
from . import data as _data
from . import schedules as _schedules
from . import state as _state
from .engine import CALL_SECONDS, Engine, resize
ORDER_BUDGET = 1 << 20  # the most sample indices drawn ahead for shuffled epochs


class DivergenceError(FloatingPointError, ValueError):
    """Training produced a non-finite loss or parameter. ``history`` holds the epochs that completed;
    the network keeps the finite parameters from before the failing epoch. Also a ValueError: the
    usual cause is an argument (lr, the input's scale)."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history


class Series(Sequence):
    """A list of floats stored as C doubles (8 bytes each, not a Python float's 32): a run of
    3e7 XOR epochs costs 0.5 GB of history, not 2.9 GB. Compares equal to a list of the same
    values; + gives a list."""

    __slots__ = ("_data",)

    def __init__(self):
        self._data = array("d")

    def __len__(self):
        return len(self._data)

    def __getitem__(self, i):
        return self._data[i].tolist() if isinstance(i, slice) else self._data[i]

    def append(self, value):
        self._data.append(float(value))

    def pop(self):
        return self._data.pop()

    def extend(self, values):
        if type(values) is list:  # a short compiled call's results: Python floats already
            self._data.extend(values)
        elif len(values) < 64:  # the common few: as floats (a bytes round trip costs more)
            self._data.extend(values.tolist() if isinstance(values, np.ndarray)
                              else [float(v) for v in values])
        else:  # from the bytes: extend() would loop over a NumPy array element by element
            self._data.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())

    def __eq__(self, other):
        try:
            return len(self) == len(other) and all(a == b for a, b in zip(self._data, other))
        except TypeError:
            return NotImplemented

    def __add__(self, other):
        return self._data.tolist() + list(other)

    def __radd__(self, other):
        return list(other) + self._data.tolist()

    def __array__(self, dtype=None, copy=None):
        return np.array(self._data, dtype=dtype)

    def __repr__(self):
        return repr(self._data.tolist())


class History:
    """What ``fit`` returns, one record per epoch of the call. ``loss``: the mean of the epoch's
    batch losses (each computed before its batch's update); ``accuracy`` (classification): the
    share of rows classified right, likewise; with validation data ``val_loss`` and, for
    classification, ``val_accuracy``; ``lr`` the learning rate used. ``history[i]`` is epoch i's
    record as a dict (``epoch`` counts the run's epochs, as ``Network.epoch``)."""

    stopped_early = False
    best_epoch = None  # early stopping: the run's epoch (as net.epoch) that was kept
    _LAZY = frozenset(("val_loss", "val_accuracy"))

    def __init__(self, first_epoch=1):
        self.loss, self.lr, self.accuracy = Series(), Series(), Series()
        self.first_epoch = first_epoch  # the run's number of this call's first epoch

    def __getattr__(self, name):
        # the validation series are made on first use (a 1-epoch fit notices making series it
        # never fills)
        if name not in History._LAZY:
            raise AttributeError(f"'History' object has no attribute {name!r}")
        series = self.__dict__[name] = Series()
        return series

    def __len__(self):
        return len(self.loss)

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"History indices must be integers; got {type(i).__name__}")
        n = len(self.loss)
        if not -n <= i < n:
            raise IndexError(f"epoch index {i} out of range for a History of {n} epochs")
        i = int(i) % n
        record = dict(epoch=self.first_epoch + i, loss=self.loss[i], lr=self.lr[i])
        for name in ("accuracy", "val_loss", "val_accuracy"):
            series = getattr(self, name)
            if len(series) > i:
                record[name] = series[i]
        return record

    def __repr__(self):
        last = f", last loss {self.loss[-1]:.6g}" if self.loss else ""
        return f"History({len(self.loss)} epochs{last})"

    def plot(self, path=None, title=None):
        """The loss curves (training, validation) and accuracies (training, validation) as a
        matplotlib ``Figure``, the best epoch marked, also written to ``path`` as a PNG when
        given. Drawn on a Figure of its own without pyplot, so the user's matplotlib backend and
        figures are left as they were; a notebook shows the returned Figure. Needs matplotlib
        (``pip install 'fastbp[plot]'``)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install 'fastbp[plot]'") from None
        epochs = np.arange(self.first_epoch, self.first_epoch + len(self.loss))
        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        ax.plot(epochs, self.loss, color="tab:blue", label="training loss")
        if self.val_loss:
            ax.plot(epochs, self.val_loss, color="tab:orange", label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if min(self.loss, default=0) > 0 and min(self.val_loss, default=1) > 0:
            ax.set_yscale("log")
        handles, labels = ax.get_legend_handles_labels()
        if self.accuracy or self.val_accuracy:
            ax2 = ax.twinx()
            if self.accuracy:
                ax2.plot(epochs, self.accuracy, color="tab:blue", linestyle="--",
                         label="training accuracy")
            if self.val_accuracy:
                ax2.plot(epochs, self.val_accuracy, color="tab:orange", linestyle="--",
                         label="validation accuracy")
            ax2.set_ylabel("accuracy (dashed)")
            more = ax2.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if self.best_epoch is not None:
            handles.append(ax.axvline(self.best_epoch, color="tab:green", linestyle=":"))
            labels.append(f"best epoch ({self.best_epoch}), weights kept")
        ax.set_title(title or f"{len(self.loss)} epochs")
        # below the axes: the legend never covers a curve
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), frameon=False)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        if path is not None:
            fig.savefig(path, format="png", dpi=100)
        return fig


def fit(net, X, y, options):
    """``Network.fit``'s body (documented there); options: the keyword arguments, a dict."""
    comm = options.get("comm")
    reducer = None
    if comm is not None:
        from .distributed import Reducer
        reducer = Reducer(_config.OPTIONS["comm"].check(comm, "comm"))
    kept = None
    if reducer is not None:
        cfg, data, st = reducer.agree(net, lambda: _prepare(net, X, y, options, reducer))
    else:
        key = _Prepared.key(net, X, y, options)
        if key is not None and net._prepared is not None and net._prepared.matches(key, X, y):
            kept = net._prepared
            cfg, data, st = kept.call(net)
        else:
            cfg, data, st = _prepare(net, X, y, options, reducer)
            if key is not None:  # before the run changes its optimiser and schedule
                kept = _Prepared(key, X, y, cfg, data)
    # Every check has passed: from here on the network is touched.
    st.attach(net, data.one_d, cfg)
    if kept is not None and kept.engine is not None:
        engine = kept.engine
        engine.state = st
    else:
        engine = Engine(net, data, st, cfg.l2, reducer)
        if kept is not None:
            kept.engine = engine
            net._prepared = kept
    run = _Run(net, cfg, data, st, engine, reducer)
    with _NO_GUARD if reducer is None else reducer.abort_on_error():
        if reducer is not None:
            reducer.start(net, st)
        with engine.threads(), _deferred_interrupts() as interrupted:
            history = run.epochs(interrupted)
    if reducer is not None:
        history.comm = reducer.stats()
    return history


_NO_GUARD = nullcontext()  # stateless: one serves every call


def _prepare(net, X, y, options, reducer):
    """A fit call validated: (config.Config, data.TrainData, state.TrainState); touches nothing."""
    cfg = _config.Config(options)
    part = None if reducer is None else (reducer.rank, reducer.size, cfg.sharded)
    data = _data.TrainData(net, X, y, cfg, part)
    st = _state.TrainState.for_run(net, cfg)
    if cfg.checkpoint and (reducer is None or reducer.rank == 0):
        _state.check_writable(cfg.checkpoint)
    return cfg, data, st


class _Prepared:
    """A fit call's validated arguments (Config, TrainData and the Engine built on them), kept on
    the network so that the next call with equal arguments skips validating them again: a 1-epoch
    XOR fit spent three quarters of its 40 us there. Equal means the same options with values of
    the same types, and X and y of the same type, dtype, shape, strides and bytes, so a changed
    array is validated afresh. Only small, plain calls are kept: NumPy arrays of at most
    SMALL_DATA bytes together, a network of at most SMALL_NET bytes of parameters (the kept
    engine holds a few copies of them; a larger network's fit is long anyway), options whose
    values are numbers, strings or None (sample weights, validation data, callbacks, optimiser
    and schedule objects, checkpoints and streaming are validated every call). The optimiser and
    schedule, which a run changes, are copied fresh for each call from their state before the
    first run."""

    SMALL_DATA = 1 << 16
    SMALL_NET = 1 << 20
    _PLAIN = frozenset((bool, int, float, str, type(None)))

    __slots__ = ("_key", "_bytes", "cfg", "data", "engine")

    def __init__(self, key, X, y, cfg, data):
        self._key, self._bytes = key, (X.tobytes(), y.tobytes())
        # a Config of our own, never run: its optimiser and schedule are copies of the caller's
        self.cfg = _copy(cfg)
        self.cfg.optimizer, self.cfg.schedule = _copy(cfg.optimizer), _copy(cfg.schedule)
        self.data, self.engine = data, None  # the engine once the first call has built it

    @classmethod
    def key(cls, net, X, y, options):
        """What identifies a call, or None if the call is not one that is kept."""
        if (type(X) is not np.ndarray or type(y) is not np.ndarray
                or X.nbytes + y.nbytes > cls.SMALL_DATA or net._params.nbytes > cls.SMALL_NET):
            return None
        kinds = tuple(map(type, options.values()))
        if (not cls._PLAIN.issuperset(kinds) or options.get("checkpoint") is not None
                or options.get("stream") is not None):  # a writable path, a file's reader
            return None
        return (tuple(options.items()), kinds, X.dtype, X.shape, X.strides, y.dtype, y.shape,
                y.strides)

    def matches(self, key, X, y):
        return key == self._key and (X.tobytes(), y.tobytes()) == self._bytes

    def call(self, net):
        """(cfg, data, TrainState) for a new call. A new run gets a fresh copy of the optimiser
        and schedule (whose values the first call's TrainState.for_run checked against the
        network's dtype); resume=True goes through for_run, which compares the settings."""
        cfg = self.cfg
        if cfg.resume:
            return cfg, self.data, _state.TrainState.for_run(net, cfg)
        return cfg, self.data, _state.TrainState(_copy(cfg.optimizer), _copy(cfg.schedule),
                                                 cfg.batch_size, cfg.shuffle)


def _copy(obj):
    """A shallow copy (the objects copied hold only plain values before a run)."""
    new = object.__new__(obj.__class__)
    new.__dict__.update(obj.__dict__)
    return new


class _Run:
    """One fit call's loop over epochs."""

    def __init__(self, net, cfg, data, st, engine, reducer):
        self.net, self.cfg, self.data, self.st = net, cfg, data, st
        self.engine, self.reducer = engine, reducer
        self.lead = reducer is None or reducer.rank == 0  # who prints and writes checkpoints
        self.per_epoch = cfg.per_epoch or data.streamed  # something acts after every epoch
        self.history = History(first_epoch=st.epoch + 1)
        self._classifier = net._loss.targets in ("labels", "binary")

    def epochs(self, interrupted):
        cfg, st, data, hist = self.cfg, self.st, self.data, self.history
        bar = _progress_bar(cfg.epochs) if cfg.progress and self.lead else None
        # shuffled orders are drawn in the compiled loop, except orders the caller supplies
        # (scikit-learn's), which are drawn here ahead of each call, so calls are capped
        drawn_here = st.shuffle and data.orders is not None
        order_cap = max(1, ORDER_BUDGET // data.n) if drawn_here else cfg.epochs
        per_call = min(cfg.epochs, self.engine.epochs_per_call, order_cap)
        # epochs of several batches, longer than a compiled call, go through the engine in
        # pieces of batches (the same arithmetic, cut where Ctrl-C can be seen); the pieces'
        # bookkeeping would cost a one-step fit 10%
        pieces = self.per_epoch or self.engine.long_epochs
        done = 0
        try:
            while done < cfg.epochs:
                count = 1 if pieces else min(per_call, cfg.epochs - done)
                if cfg.log_every:  # stop each call on a logging epoch
                    count = min(count, cfg.log_every - st.epoch % cfg.log_every)
                t0 = time.perf_counter()
                if pieces:
                    lr = st.lrs(1, data.n_total, np.float64)[0]
                    rates = (lr,)
                    done_epoch = self.engine.epoch(lr, self.net._shuffle_rng, interrupted)
                    losses, accs, lrs = ([], [], []) if done_epoch is None else (
                        [done_epoch[0]], [done_epoch[1]], [lr])
                else:
                    lrs = rates = st.lrs(count, data.n, self.net.dtype)
                    if st.shuffle and not drawn_here:
                        losses, accs = self.engine.run_epochs(lrs, None, self.net._shuffle_rng)
                    else:
                        losses, accs = self.engine.run_epochs(lrs, self._orders(count))
                    if len(losses) < count:
                        lrs = lrs[:len(losses)]
                seconds = time.perf_counter() - t0
                more = done + len(losses) < cfg.epochs  # another call follows
                if more and not pieces:
                    per_call = min(resize(count, seconds), order_cap, cfg.epochs)
                    pieces = count == 1 and seconds > 2 * CALL_SECONDS and data.steps > 1
                elif more and not self.per_epoch and seconds < CALL_SECONDS / 4:
                    # the work estimate is a bound for the slowest (fused, XOR-sized) networks;
                    # a measured epoch this short goes back to whole epochs per compiled call
                    pieces, per_call = False, min(resize(1, seconds), order_cap, cfg.epochs)
                st.advance(len(losses), data.n_total)
                self._record(losses, accs, lrs)
                done += len(losses)
                if len(losses) < count:
                    self._diverged(rates[len(losses)])
                stop = self.per_epoch and self._end_of_epoch(bar, seconds)
                if cfg.log_every:
                    self._log(len(losses), seconds)
                if stop:
                    hist.stopped_early = True
                    break
                if interrupted():
                    raise KeyboardInterrupt
        finally:
            if bar is not None:
                bar.close()
        if cfg.early_stopping and st.best is not None:
            self.net._params[:] = st.best[2]
            hist.best_epoch = st.epoch - st.best[1]
        if cfg.checkpoint and self.lead:
            _state.save(self.net, cfg.checkpoint)
        return hist

    def _orders(self, count):
        """The next count epochs' sample orders, (count, n); one row reused without shuffling."""
        d = self.data
        if not self.st.shuffle and d.orders is None:
            return np.arange(d.n)[None, :]
        return np.stack([d.order(self.net._shuffle_rng, True, d.n) for _ in range(count)])

    def _record(self, losses, accs, lrs):
        """Append finished epochs to the history (one call each: at XOR size a per-epoch Python
        loop costs a third of the epoch)."""
        hist = self.history
        hist.loss.extend(losses)
        hist.lr.extend(lrs)
        if self._classifier:
            hist.accuracy.extend(accs)

    def _log(self, epochs, seconds):
        """Print the last epoch's figures if it is a logging epoch (runs of epochs are cut to end
        on one): loss, training accuracy, validation loss and accuracy, samples per second."""
        hist, st, every = self.history, self.st, self.cfg.log_every
        if not (epochs and every and self.lead and st.epoch % every == 0):
            return
        line = f"epoch {st.epoch}  loss {hist.loss[-1]:.4f}"
        if hist.accuracy:
            line += f"  accuracy {hist.accuracy[-1]:.4f}"
        if hist.val_loss:
            line += f"  val_loss {hist.val_loss[-1]:.4f}"
        if hist.val_accuracy:
            line += f"  val_accuracy {hist.val_accuracy[-1]:.4f}"
        rate = self.data.n_total * epochs / seconds if seconds > 0 else float("inf")
        print(f"{line}  {rate:,.0f} samples/s", flush=True)

    def _validate(self):
        """(validation loss, accuracy or None) of the network now; with sharded MPI data, over
        every rank's validation rows."""
        Xv, Yv = self.data.val
        out, value = self.net._evaluate(Xv, Yv, check_finite=False)
        right = self.net._classified_right(out, Yv)
        correct = None if right is None else float(right.sum())
        n = Xv.shape[0]
        if self.reducer is not None and self.cfg.sharded:
            sums = np.array([value * n, correct or 0.0, n], dtype=np.float64)
            self.reducer.sum(sums)
            value, correct, n = sums[0] / sums[2], (None if correct is None else sums[1]), sums[2]
        if not np.isfinite(value):  # after the reduction: every rank decides alike
            self._undo_last_epoch()
            self._diverged()
        return float(value), (None if correct is None else correct / n)

    def _end_of_epoch(self, bar, seconds):
        """Validation, early stopping, schedule feedback, progress, checkpoint and callbacks after
        one epoch; True to stop. The same decisions on every MPI rank: they read reduced values."""
        net, st, cfg, hist = self.net, self.st, self.cfg, self.history
        stop = False
        val_loss = None
        if self.data.val is not None:
            val_loss, acc = self._validate()
            hist.val_loss.append(val_loss)
            if acc is not None:
                hist.val_accuracy.append(acc)
            if cfg.early_stopping:
                if st.best is None or val_loss < st.best[0] - cfg.min_delta:
                    st.best = (val_loss, 0, net._params.copy())
                else:
                    st.best = (st.best[0], st.best[1] + 1, st.best[2])
                    stop = st.best[1] >= cfg.patience
        if st.schedule.needs_loss:
            stop = st.schedule.observe(hist.loss[-1]) or stop
        if bar is not None:
            bar.update(1)
            post = dict(loss=f"{hist.loss[-1]:.4g}",
                        samples_per_s=f"{self.data.n_total / seconds:,.0f}")
            if val_loss is not None:
                post["val_loss"] = f"{val_loss:.4g}"
            bar.set_postfix(post)
        if cfg.checkpoint and self.lead and st.epoch % cfg.checkpoint_every == 0:
            _state.save(net, cfg.checkpoint)
        for cb in cfg.callbacks:
            if cb(st.epoch, hist.loss[-1], val_loss, net) is False:
                stop = True
        return stop

    def _undo_last_epoch(self):
        """The last epoch, finished but found to diverge afterwards (its validation loss is not
        finite), undone: weights, optimiser, shuffling stream, counts and history record."""
        self.engine.restore(self.net._shuffle_rng)
        self.st.advance(-1, self.data.n_total)
        for series in (self.history.loss, self.history.lr, self.history.accuracy):
            if len(series) > len(self.history.val_loss):
                series.pop()

    def _diverged(self, rate=None):
        """Raise DivergenceError for the epoch after the last recorded; rate: its learning rate,
        named in the message when a schedule made it (a base lr would mislead there)."""
        epoch = len(self.history.loss) + 1
        base, schedule = self.st.optimizer.lr, type(self.st.schedule)
        if rate is None or schedule is _schedules.Constant:  # the test TrainState.lrs makes
            hint = f"try a smaller lr (now {base:g}) or scale the input"
        elif not np.isfinite(rate):
            hint = (f"its learning rate, from lr {base:g} under the {schedule.__name__} "
                    f"schedule, is {float(rate)} in {self.net.dtype.name}: use a schedule whose "
                    f"rates stay finite")
        else:
            hint = (f"its learning rate was {float(rate):g} (lr {base:g} under the "
                    f"{schedule.__name__} schedule); try a smaller lr or a gentler schedule, or "
                    f"scale the input")
        raise DivergenceError(
            f"training diverged in epoch {epoch} of {self.cfg.epochs}: the loss or a parameter "
            f"became NaN or infinite. The parameters are restored to their values before that "
            f"epoch; {hint}.", self.history)


def _progress_bar(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'fastbp[progress]'") from None
    return tqdm(total=total, unit="epoch", desc="fit")


class _deferred_interrupts:
    """``with _deferred_interrupts() as interrupted``: interrupted() says whether Ctrl-C (SIGINT)
    came since the block began. In the main thread, with Python's own SIGINT handler in place,
    the signal is noted instead of raised at once, so the loop stops at a consistent point (it
    raises KeyboardInterrupt there); elsewhere, or under the user's own handler, nothing changes.
    A class, not a generator: a 1-epoch fit notices the difference."""

    __slots__ = ("hits", "previous")

    def __enter__(self):
        # _signal: the same calls as signal's without its enum conversions (15 us a fit)
        self.previous = None
        if (threading.get_ident() != _MAIN_THREAD
                or _signal.getsignal(_signal.SIGINT) is not _signal.default_int_handler):
            return _never
        self.hits = []
        self.previous = _signal.signal(_signal.SIGINT, self._note)
        return self.hits.__len__

    def _note(self, signum, frame):
        self.hits.append(signum)

    def __exit__(self, *exc):
        if self.previous is not None:
            _signal.signal(_signal.SIGINT, self.previous)
        return False


_MAIN_THREAD = threading.main_thread().ident


def _never():
    return False
