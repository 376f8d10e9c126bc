"""Every fit option under ``comm=`` (mpiexec -n 2) equals the one-process fit, with identical bits
on both ranks; ranks that disagree, fail or die never leave another waiting (60 s limit)."""
import json

import numpy as np
import pytest

from test_distributed import MPIEXEC, mpirun

pytest.importorskip("mpi4py")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'fastbp[mpi]')")

LIMIT = 60

OPTION_BODY = """
import os, json
rng = np.random.default_rng(0)
X = rng.standard_normal((103, 6))
y = rng.integers(0, 3, 103)
Xv, yv = rng.standard_normal((31, 6)), rng.integers(0, 3, 31)
sw = rng.uniform(0.0, 2.0, 103)
def make():
    return fastbp.Network([6, 9, 3], activation="tanh", seed=1, dtype=np.float64)
calls = []
def record(epoch, loss, val_loss, net):
    calls.append([epoch, loss, val_loss])
def train(net, comm_or_none, where):
    kw = dict(epochs=6, batch_size=16, lr=0.1, momentum=0.9)
    {body}
    return h
net = make()
h = train(net, comm, "mpi")
np.save(f"{{out}}/params_{{comm.rank}}.npy", net._params)
json.dump(dict(loss=list(h.loss), val=list(h.val_loss), calls=calls, epoch=net.epoch,
               best=h.best_epoch), open(f"{{out}}/hist_{{comm.rank}}.json", "w"))
comm.Barrier()
if comm.rank == 0:
    calls.clear()
    single = make()
    hs = train(single, None, "single")
    np.save(f"{{out}}/single.npy", single._params)
    json.dump(dict(loss=list(hs.loss), val=list(hs.val_loss), calls=calls, epoch=single.epoch,
                   best=hs.best_epoch), open(f"{{out}}/single.json", "w"))
"""

OPTIONS = {
    "sample_weight": "h = net.fit(X, y, comm=comm_or_none, sample_weight=sw, **kw)",
    "validation_data": "h = net.fit(X, y, comm=comm_or_none, validation_data=(Xv, yv), **kw)",
    "early_stopping": ("h = net.fit(X, y, comm=comm_or_none, validation_split=0.3, "
                       "early_stopping=True, patience=2, **dict(kw, epochs=40, lr=0.5))"),
    "callbacks": "h = net.fit(X, y, comm=comm_or_none, callbacks=[record], **kw)",
    "progress_and_log_every": ("h = net.fit(X, y, comm=comm_or_none, log_every=2, "
                               "progress=True, **kw)"),
    "checkpoint": ("h = net.fit(X, y, comm=comm_or_none, checkpoint=f'{out}/ck_{where}.npz', "
                   "checkpoint_every=2, **kw)"),
    "resume": ("net.fit(X, y, comm=comm_or_none, **dict(kw, epochs=3)); "
               "h = net.fit(X, y, comm=comm_or_none, resume=True, **dict(kw, epochs=3))"),
    "adaptive_schedule": ("h = net.fit(X, y, comm=comm_or_none, schedule=fastbp.schedules."
                          "Adaptive(patience=1, tol=10.0), **dict(kw, lr=0.05))"),
    "cosine_adamw": ("h = net.fit(X, y, comm=comm_or_none, epochs=6, batch_size=16, "
                     "optimizer='adamw', lr=0.01, schedule='cosine')"),
    "memmap": ("mm = np.lib.format.open_memmap(f'{out}/X_{where}_{comm.rank}.npy', mode='w+', "
               "dtype=np.float64, shape=X.shape); mm[:] = X; mm.flush(); "
               "h = net.fit(mm, y, comm=comm_or_none, **kw)"),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_an_option_under_comm_equals_the_one_process_fit(tmp_path, option):
    run = mpirun(tmp_path, 2, OPTION_BODY.format(body=OPTIONS[option]))
    assert run.returncode == 0, run.stderr
    single = np.load(tmp_path / "single.npy")
    ranks = [np.load(tmp_path / f"params_{r}.npy") for r in range(2)]
    assert np.array_equal(ranks[0], ranks[1])  # the same bits on every rank
    assert np.abs(ranks[0] - single).max() / np.abs(single).max() < 1e-10
    hist = [json.loads((tmp_path / f"hist_{r}.json").read_text()) for r in range(2)]
    ref = json.loads((tmp_path / "single.json").read_text())
    assert hist[0] == hist[1]
    assert hist[0]["epoch"] == ref["epoch"] and hist[0]["best"] == ref["best"]
    assert np.allclose(hist[0]["loss"], ref["loss"], rtol=1e-10, atol=0)
    assert np.allclose(hist[0]["val"], ref["val"], rtol=1e-10, atol=0)
    if option == "callbacks":  # every rank called with the same arguments as one process
        assert len(hist[0]["calls"]) == 6
        assert np.allclose(np.array(hist[0]["calls"], dtype=float)[:, :2],
                           np.array(ref["calls"], dtype=float)[:, :2], rtol=1e-10)
    if option == "early_stopping":
        assert len(ref["loss"]) < 40  # it did stop early
    if option == "progress_and_log_every":  # rank 0 alone prints the log and the bar
        assert run.stdout.count("epoch 2  loss") == 2  # once from the MPI run, once single
        assert run.stderr.count("| 0/6 [") == 2  # bars started: rank 0 of the MPI run, single
    if option == "checkpoint":
        import fastbp
        back = fastbp.Network.load(tmp_path / "ck_mpi.npz")
        assert np.array_equal(back._params, ranks[0]) and back.epoch == 6


def test_a_streamed_rank_reads_only_its_own_rows(tmp_path):
    run = mpirun(tmp_path, 2, """
        from fastbp import data
        rng = np.random.default_rng(0)
        X = rng.standard_normal((64, 5))
        y = rng.integers(0, 2, 64)
        mm = np.lib.format.open_memmap(f"{out}/X{comm.rank}.npy", mode="w+", dtype=np.float32,
                                       shape=X.shape)
        mm[:] = X
        mm.flush()
        seen = []
        original = data.Stream.read_rows
        def counting(self, a, rows):
            seen.append(len(rows))
            return original(self, a, rows)
        data.Stream.read_rows = counting
        net = fastbp.Network([5, 4, 2], seed=0)
        net.fit(mm, y, comm=comm, epochs=3, batch_size=8)
        print(f"rank {comm.rank} read {sum(seen)}")
    """)
    assert run.returncode == 0, run.stderr
    for r in range(2):
        assert f"rank {r} read 96" in run.stdout  # half of 64 rows, 3 epochs


MISMATCH_BODY = """
rng = np.random.default_rng(0)
X = rng.standard_normal((40, 4))
y = rng.integers(0, 3, 40)
kw = dict(epochs=3, batch_size=8, lr=0.1, sharded=False, optimizer="sgd")
sizes, dtype = [4, 5, 3], np.float64
if comm.rank == 1:
    {change}
net = fastbp.Network(sizes, seed=0, dtype=dtype)
before = net._params.copy()
try:
    net.fit(X, y, comm=comm, **kw)
    said = "trained"
except ValueError as exc:
    assert np.array_equal(net._params, before)
    said = f"refused: {{exc}}"
open(f"{{out}}/said_{{comm.rank}}.txt", "w").write(said)  # files: stdout lines can interleave
"""

MISMATCHES = {
    "epochs": ("kw['epochs'] = 4", "epochs"),
    "batch_size": ("kw['batch_size'] = 16", "batch_size"),
    "sharded": ("kw['sharded'] = True", "sharded"),
    "sizes": ("sizes = [4, 6, 3]", "sizes"),
    "dtype": ("dtype = np.float32", "dtype"),
    "optimizer": ("kw['optimizer'] = 'adam'", "optimizer"),
    "lr": ("kw['lr'] = 0.2", "lr"),
    "huge lr": ("kw['lr'] = 10**400", "lr must be finite"),
}


@pytest.mark.parametrize("what", list(MISMATCHES))
def test_ranks_that_disagree_all_raise_naming_the_argument(tmp_path, what):
    change, words = MISMATCHES[what]
    run = mpirun(tmp_path, 2, MISMATCH_BODY.format(change=change), timeout=LIMIT)
    assert run.returncode == 0, run.stderr
    for r in range(2):
        said = (tmp_path / f"said_{r}.txt").read_text()
        assert said.startswith("refused") and words in said, said
        assert "rank 1" in said  # the ranks are named


FAILURE_BODY = """
import os, signal
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 6))
def fail(epoch, loss, val_loss, net):
    if comm.rank == 1 and epoch == 2:
        {action}
net = fastbp.Network([6, 8, 3], seed=1)
net.fit(X, rng.integers(0, 3, 64), comm=comm, epochs=200, batch_size=8, callbacks=[fail])
print("finished", comm.rank)
"""


@pytest.mark.parametrize("action,words", [
    ("raise KeyboardInterrupt", "rank 1 of 2 failed in fit: KeyboardInterrupt"),
    ("raise SystemExit(3)", "rank 1 of 2 failed in fit: SystemExit"),
    ("os.kill(os.getpid(), signal.SIGKILL)", None),
])
def test_a_rank_that_fails_or_dies_ends_the_job(tmp_path, action, words):
    run = mpirun(tmp_path, 2, FAILURE_BODY.format(action=action), timeout=LIMIT)
    assert run.returncode != 0
    assert "finished" not in run.stdout
    if words:
        assert words in run.stderr


def test_a_rank_interrupted_before_the_agreement_tells_the_others(tmp_path):
    run = mpirun(tmp_path, 2, """
        import fastbp.data
        if comm.rank == 1:
            def interrupted(*args, **kwargs):
                raise KeyboardInterrupt
            fastbp.data.TrainData.__init__ = interrupted
        try:
            fastbp.Network([3, 4, 2], seed=0).fit(np.ones((8, 3)), np.zeros(8, int), comm=comm)
        except ValueError as exc:
            print(f"rank {comm.rank}: {exc}")
        except KeyboardInterrupt:
            print(f"rank {comm.rank}: interrupted")
    """, timeout=LIMIT)
    assert "rank 1: interrupted" in run.stdout
    assert "rank 0: rank 1 of 2 refused its input" in run.stdout


def test_uncaught_launch_errors_from_several_ranks_do_not_interleave(tmp_path):
    run = mpirun(tmp_path, 2, """
        X = np.ones((8, 3))
        fastbp.Network([3, 4, 2], seed=0).fit(X, np.zeros(8, int), comm=comm,
                                              epochs=2 + comm.rank, log_every=0)
    """, timeout=LIMIT)
    assert run.returncode != 0
    tracebacks = run.stderr.split("Traceback (most recent call last):")[1:]
    assert len(tracebacks) == 2, run.stderr
    for tb in tracebacks:  # each one whole: it ends with its error line
        last = [line for line in tb.splitlines() if line.strip()][-1]
        assert last.startswith("ValueError: the ranks disagree on epochs"), run.stderr
