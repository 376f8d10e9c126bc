"""What carries across ``fit`` calls (``TrainState``), and the model file that holds it with the
network: ``save`` (atomic) and ``load`` (everything checked before anything large is built).

File format (a .npz without pickles): ``meta``, a JSON string (format marker, version, the
architecture, dtype, seed, the shuffling generator's state, the training state's settings), and
the arrays ``params`` (P,), and with a training state ``opt_state`` (S,) and, under early
stopping, ``best_params`` (P,).
"""
import glob
import io
import json
import os
import secrets
import stat

import numpy as np

from . import optim as _optim
from . import schedules as _schedules
from ._validate import FLOAT_DTYPES

FORMAT = "fastbp-network"
FORMAT_VERSION = 2  # 2 adds the training state (optimiser, schedule, epochs); 1 is still read
TMP_PREFIX, TMP_SUFFIX = ".fastbp-", ".tmp"


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

    def lrs(self, count, n, dtype):
        """The rates of the next ``count`` epochs of ``n`` samples each."""
        if type(self.schedule) is _schedules.Constant:
            out = np.empty(count, dtype=dtype)
            out.fill(self.optimizer.lr)  # np.full's Python layer costs a 1-epoch fit 0.5 us
            return out
        k = np.arange(count)
        with np.errstate(over="ignore"):  # a rate beyond the dtype: inf, named if it diverges
            return self.schedule.rate(self.optimizer.lr, self.epoch + k,
                                      self.samples + k * n).astype(dtype)

    def advance(self, epochs, n):
        """Count ``epochs`` finished epochs of ``n`` samples each."""
        self.epoch += epochs
        self.samples += epochs * n

    @classmethod
    def for_run(cls, net, cfg):
        """The state a fit call trains with: a fresh one, or with resume=True the network's own,
        whose settings must be the call's. Touches nothing; ``attach`` hands it to the network."""
        fresh = cls(cfg.optimizer, cfg.schedule, cfg.batch_size, cfg.shuffle)
        opt = cfg.optimizer
        for name in ("lr", "eps"):
            value = getattr(opt, name, None)
            if value is not None and net.dtype.type(value) == 0:
                raise ValueError(f"{name}={value:g} is 0 in {net.dtype.name}, the network's dtype "
                                 f"(smallest positive {np.finfo(net.dtype).tiny:g}); pass a "
                                 f"larger {name}")
        if not cfg.resume:
            return fresh
        old = net._train
        if old is None:
            raise ValueError("resume=True needs a network that has been trained with fit "
                             "(or loaded from a checkpoint); this one has no training state")
        new_cfg, old_cfg = fresh.config(), old.config()
        keys = ("optimizer", "schedule") + (() if cfg.resume_any_batch
                                            else ("batch_size", "shuffle"))
        for key in keys:
            if old_cfg[key] != new_cfg[key]:
                raise ValueError(f"resume=True continues the saved run, whose {key} is "
                                 f"{old_cfg[key]!r}; this call asks for {new_cfg[key]!r}. Pass "
                                 f"the same {key} (or resume=False for a new run)")
        return old

    def attach(self, net, one_d, cfg):
        """Make this the network's run (fresh optimiser buffers unless it is already its own)."""
        if net._train is not self:  # a new run
            self.optimizer.init_state(net.n_params, net.dtype)
            self.schedule.start_run(cfg.epochs)
        self.batch_size, self.shuffle = cfg.batch_size, cfg.shuffle
        net._train = self
        net._targets_1d = one_d


# ------------------------------------------------------------------------------ saving


def _check_destination(path):
    """The path as given, refused unless it is missing or a regular file in an existing folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path!r}: the folder {folder!r} does not exist")
    try:
        st = os.stat(path)  # follows a symlink: its target must be a regular file too
    except FileNotFoundError:
        return folder, None
    if os.path.islink(path) or not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if os.path.islink(path) else "not a regular file"
        raise ValueError(f"cannot save to {path!r}: it exists and is {kind}; fastbp replaces "
                         "only regular files")
    return folder, stat.S_IMODE(st.st_mode)


def check_writable(path):
    """Raise now, before any training, if ``save(path)`` could not write there."""
    folder, _ = _check_destination(path)
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot save to {path!r}: the folder {folder!r} is not writable")


def save(net, path):
    """Write ``net`` to ``path``: to a temporary name in the same folder, synced, then renamed
    over path, so a failure or a kill at any moment leaves the old file or the new one, never a
    truncated one. An existing file keeps its permission bits; a new one follows the umask."""
    path = os.fspath(path)
    folder, mode = _check_destination(path)
    _remove_leftovers(folder)
    meta = dict(format=FORMAT, version=FORMAT_VERSION, sizes=list(net.sizes),
                activations=list(net.activations), loss=net.loss_name,
                dtype=net.dtype.name, seed=str(net.seed), targets_1d=net._targets_1d,
                shuffle_state=net._shuffle_rng.bit_generator.state,
                train=None if net._train is None else net._train.meta())
    arrays = dict(params=net._params)
    if net._train is not None:
        arrays["opt_state"] = net._train.optimizer.state
        if net._train.best is not None:
            arrays["best_params"] = net._train.best[2]
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    tmp = None
    try:
        # Created with 0666 less the umask, by the kernel (mkstemp's 0600 would tighten every
        # file, and reading the umask means setting it, which races with other threads); a file
        # replaced keeps its own bits.
        name = os.path.join(folder, f"{TMP_PREFIX}{secrets.token_hex(8)}{TMP_SUFFIX}")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        tmp = name
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:  # named by the path the user gave, not the temporary one
        msg = f"cannot save to {path!r}: {exc.strerror or exc}"
        raise type(exc)(*((exc.errno, msg) if exc.errno else (msg,))) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    # The rename itself is made durable by syncing the folder (a crash could otherwise lose it).
    dirfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _remove_leftovers(folder):
    """Temporary files of fastbp's own naming (``.fastbp-*.tmp``) that a killed save left in
    folder. (A save to the same folder in another process at the same instant would lose its
    temporary file and report it; its destination stays intact.)"""
    for name in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*" + TMP_SUFFIX)):
        try:
            if os.path.isfile(name) and not os.path.islink(name):
                os.unlink(name)
        except OSError:
            pass


# ------------------------------------------------------------------------------ loading

_MAX_META = 1 << 20


def _bad(path, why, part=None):
    if part == "train":
        return ValueError(f"{path!r} has an unreadable training state (the file is corrupt): {why}")
    return ValueError(f"{path!r} is not a readable fastbp model file (truncated, corrupt or "
                      f"inconsistent): {why}")


def _open(path):
    """The file as an open NpzFile; ValueError naming the path if it is not one."""
    try:
        f = np.load(path, allow_pickle=False)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:
        raise _bad(path, f"not a .npz archive: {type(exc).__name__}: {exc}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise _bad(path, "it holds a single array, not a fastbp .npz archive")
    return f


def _meta(f, path):
    if "meta" not in f.files or "params" not in f.files:
        raise _bad(path, f"it holds {sorted(f.files)}, not 'meta' and 'params'")
    try:
        m = f["meta"]
        if m.dtype.kind != "U" or m.shape != () or m.nbytes > _MAX_META:
            raise ValueError("not a JSON string")
        return json.loads(str(m[()]))
    except Exception as exc:
        raise _bad(path, f"its 'meta' entry is unreadable: {type(exc).__name__}: {exc}") from None


def _array(f, name, shape, dtype, path, part=None):
    """f[name] checked for shape and dtype from its header before its data is read."""
    try:
        with f.zip.open(name + ".npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            got_shape, _, got_dtype = read(fh)
    except Exception as exc:
        raise _bad(path, f"its '{name}' array is unreadable: {type(exc).__name__}: {exc}") from None
    if tuple(got_shape) != shape or got_dtype != dtype:
        raise _bad(path, f"'{name}' has shape {tuple(got_shape)} and dtype {got_dtype}; the "
                         f"network it describes needs {shape} and {dtype}", part)
    try:
        return f[name]
    except Exception as exc:
        raise _bad(path, f"its '{name}' array is unreadable: {type(exc).__name__}: {exc}") from None


def _field(meta, key, kind, path):
    if key not in meta:
        raise _bad(path, f"its description lacks {key!r}")
    value = meta[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _bad(path, f"{key!r} is {value!r}")
    return value


def load(path, network_class):
    """Read a network written by ``save``. FileNotFoundError, PermissionError and
    IsADirectoryError as the operating system reports them; ValueError naming the path for a file
    that is truncated, corrupt, of another format, or describes something inconsistent."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot load {path!r}: it is a directory")
    with _open(path) as f:
        meta = _meta(f, path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a fastbp model file (no '{FORMAT}' marker)")
        if meta.get("version") not in (1, FORMAT_VERSION):
            raise ValueError(f"{path!r} has fastbp format version {meta.get('version')}; this "
                             f"fastbp reads versions 1 to {FORMAT_VERSION}")
        sizes = _field(meta, "sizes", list, path)
        if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                     for s in sizes):
            raise _bad(path, f"'sizes' is {sizes!r}")
        dtype = _field(meta, "dtype", str, path)
        if dtype not in FLOAT_DTYPES:
            raise _bad(path, f"'dtype' is {dtype!r}")
        dtype = np.dtype(dtype)
        n_params = sum(c * oc + oc for c, oc in zip(sizes[:-1], sizes[1:]))
        acts = _field(meta, "activations", list, path)
        loss = _field(meta, "loss", str, path)
        seed = _field(meta, "seed", str, path)
        targets_1d = _field(meta, "targets_1d", bool, path)
        shuffle_state = _field(meta, "shuffle_state", dict, path)
        train = meta.get("train")
        # Every array is checked from its header before it is read, and before the network
        # (whose size the file declares) is built.
        params = _array(f, "params", (n_params,), dtype, path)
        opt_state = best = None
        if train:
            if not isinstance(train, dict):
                raise _bad(path, "its training state is not a mapping")
            opt = _optimizer_from(train, path)
            opt_state = _array(f, "opt_state", (opt.state_size(n_params),), dtype, path,
                               "train")
            if train.get("best") is not None:
                best = _array(f, "best_params", (n_params,), dtype, path, "train")
    try:
        net = network_class(sizes, activation=acts if acts else "relu", loss=loss,
                            seed=int(seed), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"it describes an invalid network: {exc}") from None
    if not np.isfinite(params).all():
        raise _bad(path, "its parameters are not all finite")
    net._params[:] = params
    net._targets_1d = targets_1d
    try:
        net._shuffle_rng.bit_generator.state = shuffle_state
    except (TypeError, ValueError, KeyError) as exc:
        raise _bad(path, f"its shuffling state is unreadable: {exc}") from None
    if train:
        try:
            net._train = _state_from(train, opt_state, best)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path!r} has an unreadable training state: {exc}") from None
    return net


def _optimizer_from(train, path):
    try:
        oc = dict(train["optimizer"])
        kind = _optim.OPTIMIZERS[oc.pop("name")]
        if "betas" in oc:
            oc["betas"] = tuple(oc["betas"])
        return kind(**oc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path!r} has an unreadable training state: optimiser "
                         f"{train.get('optimizer')!r}: {exc}") from None


def _state_from(meta, opt_state, best_params):
    opt = _optimizer_from(meta, "")
    opt.state, opt.step = np.ascontiguousarray(opt_state), int(meta["step"])
    st = TrainState(opt, _schedules.from_config(meta["schedule"], meta["schedule_state"]),
                    meta["batch_size"], meta["shuffle"])
    st.epoch, st.samples = int(meta["epoch"]), int(meta["samples"])
    if meta["best"] is not None:
        st.best = (float(meta["best"][0]), int(meta["best"][1]), np.ascontiguousarray(best_params))
    return st
