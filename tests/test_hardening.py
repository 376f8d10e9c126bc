"""Hostile input, faults and interrupts in one process: nothing crashes, hangs or is lost. Items
that could crash the interpreter run in a subprocess, so a crash fails the test, not pytest."""
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastbp

from conftest import XOR_X, XOR_Y, make_data


def snapshot(net):
    return net._params.tobytes(), None if net._train is None else (
        net._train.optimizer.state.tobytes(), net._train.optimizer.step, net._train.epoch)


def run_python(code, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------- 1. a stream that lies


@pytest.mark.parametrize("claimed", [2_000_000, 1_000])
def test_a_stream_shorter_than_its_shape_is_refused_not_read_past(claimed):
    run = run_python(f"""
        import numpy as np, fastbp
        class Liar:
            def __init__(self, X): self.X = X
            shape = ({claimed}, 4)
            def __getitem__(self, key): return self.X[key]
        X = np.random.default_rng(0).standard_normal((10, 4))
        net = fastbp.Network([4, 5, 2], seed=0)
        before = net._params.copy()
        try:
            net.fit(Liar(X), np.zeros({claimed}, int), stream=True, epochs=1)
        except ValueError as exc:
            assert np.array_equal(net._params, before)
            print("refused:", exc)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "refused: X[0:" in run.stdout and "promises" in run.stdout


# ----------------------------------------------------------------- 2. zero weights, tiny eps


def test_a_batch_whose_weights_sum_to_zero_is_skipped():
    X, y = make_data("cross_entropy", 12, 4, 3, seed=0)
    sw = np.r_[np.zeros(4), np.ones(8)]
    kw = dict(epochs=3, batch_size=4, shuffle=False, optimizer="adam", lr=0.01)
    weighted = fastbp.Network([4, 5, 3], seed=0, dtype=np.float64)
    weighted.fit(X, y, sample_weight=sw, **kw)
    rest = fastbp.Network([4, 5, 3], seed=0, dtype=np.float64)
    rest.fit(X[4:], y[4:], **kw)
    assert np.array_equal(weighted._params, rest._params)  # no update, no Adam step for it
    assert weighted._train.optimizer.step == rest._train.optimizer.step == 6


def test_an_eps_that_is_zero_in_the_networks_dtype_is_refused():
    net = fastbp.Network([4, 5, 3], seed=0, dtype=np.float32)
    before = snapshot(net)
    X, y = make_data("cross_entropy", 8, 4, 3)
    with pytest.raises(ValueError, match="eps=1e-50 is 0 in float32"):
        net.fit(X, y, optimizer="adam", eps=1e-50)
    assert snapshot(net) == before


# ----------------------------------------------------------------- 3. Ctrl-C

_INTERRUPTED = """
import json, sys, time
import numpy as np, fastbp
kind = sys.argv[1]
if kind == "xor":
    X, y = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float), np.array([0, 1, 1, 0])
    make = lambda: fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce", seed=0,
                                  dtype=np.float64)
    kw = dict(lr=1.0, optimizer="adam", shuffle=True, batch_size=2)
    epochs = 10**8
else:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((2000, 256)), rng.integers(0, 10, 2000)
    make = lambda: fastbp.Network([256, 512, 512, 10], seed=0, dtype=np.float64)
    kw = dict(lr=0.01, momentum=0.9, batch_size=64)
    epochs = 10**4
make().fit(X[:64], y[:64], epochs=2, **kw)  # compiled before the clock starts
t0 = time.perf_counter()
make().fit(X, y, epochs=1, **kw)  # an epoch's time on this machine, under its load now
net = make()
print("started", time.perf_counter() - t0, flush=True)
try:
    net.fit(X, y, epochs=epochs, **kw)
except KeyboardInterrupt:
    print("interrupted", time.time(), flush=True)
done = net.epoch
fresh = make()
if done:
    fresh.fit(X, y, epochs=done, **kw)
same = bool(np.array_equal(fresh._params, net._params)) and (
    fresh.epoch == net.epoch and fresh._train.optimizer.step == net._train.optimizer.step
    and np.array_equal(fresh._train.optimizer.state, net._train.optimizer.state)) if done else (
    net._train is None or net._train.optimizer.step == 0)
net.fit(X, y, epochs=2, resume=True, **kw)
whole = make()
whole.fit(X, y, epochs=done + 2, **kw)
print(json.dumps(dict(done=done, same=bool(same),
                      resumed=bool(np.array_equal(whole._params, net._params)))), flush=True)
"""


@pytest.mark.parametrize("kind", ["xor", "blas"])
def test_ctrl_c_stops_within_half_a_second_at_a_consistent_point(tmp_path, kind):
    script = tmp_path / "long_fit.py"
    script.write_text(_INTERRUPTED)
    proc = subprocess.Popen([sys.executable, str(script), kind], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        started, epoch_s = proc.stdout.readline().split()
        assert started == "started"
        # long enough for a few epochs, so the interrupt comes mid-run with some done, on a
        # slow or busy machine too (a BLAS epoch of 2000 rows takes 0.16 s here alone; 4000 rows
        # took 0.3 s, 0.6-0.9 beside a busy core, and more than 1.5 s beside the other worker of
        # a pytest-xdist run)
        time.sleep(1.5 + 3 * float(epoch_s))
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        assert line and line[0] == "interrupted", proc.stderr.read()[-3000:]
        latency = float(line[1]) - sent
        result = json.loads(proc.stdout.readline())
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert latency < 0.5, latency
    assert result["done"] > 0 and result["same"] and result["resumed"], result


# ----------------------------------------------------------------- 4. saving


def test_save_refuses_what_is_not_a_regular_file(tmp_path):
    net = fastbp.Network([3, 4, 2])
    target = tmp_path / "real.npz"
    net.save(target)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link"):
        net.save(link)
    assert link.is_symlink()
    with pytest.raises(ValueError, match="not a regular file"):
        net.save(tmp_path)  # a folder
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match="not a regular file"):
            net.save("/dev/null")
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_save_keeps_the_mode_of_the_file_it_replaces_and_follows_the_umask(tmp_path):
    net = fastbp.Network([3, 4, 2])
    old = tmp_path / "old.npz"
    net.save(old)
    os.chmod(old, 0o640)
    net.save(old)
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o640
    mask = os.umask(0o027)
    try:
        net.save(tmp_path / "new.npz")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o640


def test_save_removes_leftover_temporary_files_and_names_the_path_given(tmp_path):
    net = fastbp.Network([3, 4, 2])
    (tmp_path / ".fastbp-killed1234.tmp").write_bytes(b"half a file")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    net.save(tmp_path / "m.npz")
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp", "m.npz"]
    missing = tmp_path / "no" / "such" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        net.save(missing)
    assert str(missing) in str(info.value) and ".fastbp-" not in str(info.value)


def test_a_bad_checkpoint_path_is_refused_before_any_training(tmp_path):
    X, y = make_data("cross_entropy", 16, 3, 2)
    net = fastbp.Network([3, 4, 2], seed=0)
    net.fit(X, y, epochs=2, optimizer="adam")
    before = snapshot(net)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        net.fit(X, y, epochs=1, checkpoint=tmp_path / "no" / "ck.npz")
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        net.fit(X, y, epochs=1, checkpoint=True)
    assert snapshot(net) == before and net.epoch == 2  # the previous run's state is intact
    assert not (tmp_path / "True").exists()


# ----------------------------------------------------------------- 5. loading


def _saved(tmp_path, **change):
    net = fastbp.Network([4, 6, 3], seed=0)
    X, y = make_data("cross_entropy", 16, 4, 3)
    net.fit(X, y, epochs=1, optimizer="adam")
    path = tmp_path / "m.npz"
    net.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"][()]))
    for key, value in change.items():
        if key == "meta":
            value(meta)
        else:
            arrays[key] = value(arrays[key])
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("what,change", [
    ("int64", lambda a: a.astype(np.int64)),
    ("2-D", lambda a: a.reshape(2, -1)),
    ("big-endian", lambda a: a.astype(a.dtype.newbyteorder(">"))),
    ("complex", lambda a: a.astype(np.complex64)),
    ("short", lambda a: a[:-1]),
])
def test_an_optimiser_state_of_the_wrong_kind_is_refused(tmp_path, what, change):
    path = _saved(tmp_path, opt_state=change)
    with pytest.raises(ValueError, match="opt_state"):
        fastbp.Network.load(path)


def test_a_missing_description_key_is_named(tmp_path):
    path = _saved(tmp_path, meta=lambda m: m.pop("sizes"))
    with pytest.raises(ValueError, match="lacks 'sizes'"):
        fastbp.Network.load(path)


def test_a_huge_declared_network_is_refused_before_anything_is_allocated(tmp_path):
    path = _saved(tmp_path, meta=lambda m: m.update(sizes=[40000, 40000, 3]))
    assert os.path.getsize(path) < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="'params' has shape"):
            fastbp.Network.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20  # a [40000, 40000, 3] network would take 12.8 GB


def test_loading_a_folder_or_an_unreadable_file_says_so(tmp_path):
    with pytest.raises(IsADirectoryError):
        fastbp.Network.load(tmp_path)
    if os.geteuid() != 0:  # root reads any file
        path = _saved(tmp_path)
        os.chmod(path, 0)
        with pytest.raises(PermissionError):
            fastbp.Network.load(path)


# ----------------------------------------------------------------- 6. outputs that overflow


@pytest.mark.parametrize("method", ["predict", "predict_proba", "loss", "score"])
def test_finite_input_that_overflows_float32_raises_naming_the_scale(method):
    net = fastbp.Network([2, 4, 2], seed=0, dtype=np.float32)
    X = np.full((3, 2), 3e38, dtype=np.float32)
    args = (X, np.zeros(3, int)) if method in ("loss", "score") else (X,)
    with pytest.raises(ValueError, match="input's scale"):
        getattr(net, method)(*args)


def test_an_overflowing_fit_is_a_divergence():
    net = fastbp.Network([2, 4, 2], seed=0, dtype=np.float32)
    X = np.full((8, 2), 3e38, dtype=np.float32)
    with pytest.raises(fastbp.DivergenceError):
        net.fit(X, np.zeros(8, int), epochs=2)
    assert np.isfinite(net._params).all()


# ----------------------------------------------------------------- 7. threads


def test_concurrent_fits_restore_the_users_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastbp import _threads

    def blas():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        for chunked in (False, True):
            a, b = _threads.compute(True, chunked), _threads.compute(True, chunked)
            a.__enter__()
            b.__enter__()  # A enters, B enters, A leaves, B leaves
            a.__exit__(None, None, None)
            b.__exit__(None, None, None)
            assert set(blas()) == {1}
        X, y = make_data("cross_entropy", 256, 64, 10, seed=1)
        results = {}

        def train(k):
            net = fastbp.Network([64, 96, 80, 10], seed=k)
            net.fit(X, y, epochs=3, batch_size=64, lr=0.05)
            results[k] = net._params.copy()

        threads = [threading.Thread(target=train, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(blas()) == {1}
    for k in range(4):  # the weights do not depend on running at once
        alone = fastbp.Network([64, 96, 80, 10], seed=k)
        alone.fit(X, y, epochs=3, batch_size=64, lr=0.05)
        assert np.array_equal(alone._params, results[k])


FORK_WHILE_THE_RUNNER_COMPILES = textwrap.dedent("""
    import os, time
    import numpy as np, fastbp
    from fastbp import _chunks
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((256, 8)), rng.integers(0, 3, 256)
    fastbp.Network([8, 16, 3], seed=0).fit(X, y, epochs=1, batch_size=128)  # row chunks
    _chunks.request_seen()
    assert _chunks._compiling  # the runner compiling on its thread (an empty cache)
    pid = os.fork()
    if pid == 0:  # a compile of its own in the child
        fastbp.Network([8, 16, 3], seed=0, dtype=np.float32).fit(X, y, epochs=1, batch_size=32)
        os._exit(0)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child", status)
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        print("child hung")
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_fork_while_the_runner_compiles_leaves_the_child_able_to_compile(tmp_path):
    """A process forked while the row chunks' runner compiles in the background (fastbp._chunks)
    would inherit Numba's compiler lock held by a thread it does not have, and hang at its first
    compile; the fork waits for the compile instead, and the child compiles and exits."""
    run = subprocess.run([sys.executable, "-c", FORK_WHILE_THE_RUNNER_COMPILES],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["child", "0"], run.stdout + run.stderr[-2000:]


def test_the_split_gives_one_pool_the_threads_and_restores_both():
    """BLAS's threads for a network with large layers, Numba's (BLAS at one) for one of small
    layers run in row chunks; the user's settings back afterwards, also after an error."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numba
    from fastbp import _threads

    def blas():
        return {i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"}

    budget = numba.get_num_threads()
    with threadpoolctl.threadpool_limits(3, user_api="blas"):
        for chunked, inside in ((False, (budget, 1)), (True, (1, budget))):
            with pytest.raises(KeyError):
                with _threads.compute(True, chunked):
                    assert (blas(), numba.get_num_threads()) == ({inside[0]}, inside[1])
                    raise KeyError
            assert (blas(), numba.get_num_threads()) == ({3}, budget)


# ----------------------------------------------------------------- 8. errors name the argument


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(lr=10**400), ValueError, "lr must be finite"),
    (dict(momentum=10**400), ValueError, "momentum must be finite"),
    (dict(validation_data=(np.ones((3, 5)), np.zeros(3, int))), ValueError,
     r"validation_data\[0\] \(X_val\) has 5 features"),
    (dict(validation_data=(np.ones((3, 4)), np.zeros(4, int))), ValueError,
     r"validation_data\[1\] \(y_val\) has 4 samples"),
    (dict(sample_weight=np.ones((12, 2))), ValueError, "sample_weight must be 1-D"),
    (dict(callbacks=print), TypeError, "callbacks must be a list"),
    (dict(comm=1), TypeError, "comm must be an mpi4py communicator"),
    (dict(checkpoint=3), TypeError, "checkpoint must be a file path"),
])
def test_bad_options_raise_naming_the_argument(kwargs, exc, words):
    X, y = make_data("cross_entropy", 12, 4, 3)
    net = fastbp.Network([4, 5, 3], seed=0)
    before = snapshot(net)
    with pytest.raises(exc, match=words):
        net.fit(X, y, **kwargs)
    assert snapshot(net) == before


def test_history_costs_at_most_16_bytes_an_epoch():
    net = fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce", seed=0, dtype=np.float64)
    hist = net.fit(XOR_X, XOR_Y, epochs=200_000, lr=1.0, shuffle=False)
    assert len(hist) == 200_000
    size = sys.getsizeof(hist.loss._data) + sys.getsizeof(hist.lr._data)
    assert size <= 16 * 200_000 * 1.2


@pytest.mark.parametrize("per_epoch", [False, True])
def test_a_divergence_leaves_a_history_of_the_completed_epochs(per_epoch):
    X, y = make_data("mse", 32, 4, 2, seed=0)
    net = fastbp.Network([4, 8, 2], activation="identity", loss="mse", seed=0, dtype=np.float64)
    extra = dict(validation_data=(X, y)) if per_epoch else {}
    with pytest.raises(fastbp.DivergenceError) as info:
        net.fit(X, y * 1e3, epochs=200, lr=50.0, batch_size=8, **extra)
    hist = info.value.history
    assert len(hist.lr) == len(hist.loss) and len(hist.accuracy) == 0  # mse: no accuracy
    if per_epoch:
        assert len(hist.val_loss) == len(hist.loss)
    assert net.epoch == len(hist.loss) and np.isfinite(net._params).all()


RUNNER_ASKED_FOR = textwrap.dedent("""
    import numpy as np, fastbp
    from fastbp import _chunks
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((256, 8)), rng.integers(0, 3, 256)
    net = fastbp.Network([8, 16, 3], seed=0)
    for _ in range(2):  # the first compiles its driver (or loads it): its seconds do not count
        net.fit(X, y, epochs=1, batch_size=128)  # row chunks, in turn for milliseconds
    (key, seconds), = _chunks._in_turn.values()
    print(_chunks.address(key), key[1] in _chunks._runner_at, 0 < seconds < 0.5)
    for _ in range(1000):  # until asked for
        if key[1] in _chunks._runner_at:
            break
        net.fit(X, y, epochs=200, batch_size=128)
    print(_chunks._in_turn[key[1]][1] >= _chunks.RUNNER_AFTER_S)
    _chunks.wait()
    net._scratch["ws"][-1][1] = 0  # the count of batches through the runner
    net.fit(X, y, epochs=1, batch_size=128)
    print(_chunks.address(key) != 0, int(net._scratch["ws"][-1][1]))
""")


def test_the_runner_is_asked_for_once_the_chunks_have_run_in_turn_for_a_while(tmp_path):
    """A short first fit of a network run in row chunks does not compile their runner (whose
    compile would hold Numba's compiler lock for half a second); once its calls have run the
    chunks in turn for RUNNER_AFTER_S it does, and later batches go through it."""
    run = subprocess.run([sys.executable, "-c", RUNNER_ASKED_FOR], capture_output=True,
                         text=True, timeout=300,
                         env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["0", "False", "True", "True", "True", "2"], run.stdout
