"""Training control: Adam/AdamW against torch, schedules against their formulas, early stopping,
callbacks, progress, plots, sample weights, resume and checkpoints (atomic under SIGKILL), and
streaming from a memmap."""
import math
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastbp
from fastbp import schedules

from conftest import make_data, rel_err
from test_training import TORCH_CASES, assert_fit_follows_torch, torch_steps


# ----------------------------------------------------------------- Adam and AdamW


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("loss,act", TORCH_CASES)
def test_adam_trajectories_match_torch(loss, act, name, weight_decay, torch):
    kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    assert_fit_follows_torch(
        loss, act, lambda p: kind(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                  weight_decay=weight_decay), 20, torch,
        optimizer=name, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)


def test_adamw_default_weight_decay_is_torchs(torch):
    X, y = make_data("cross_entropy", 13, 5, 3, seed=1)
    net = fastbp.Network([5, 6, 3], seed=2, dtype=np.float64)
    expected = torch_steps(net, X, y, lambda p: torch.optim.AdamW(p, lr=0.01), 10, torch)
    net.fit(X, y, epochs=10, optimizer="adamw", lr=0.01, shuffle=False)
    for got, want in zip(net.weights + net.biases, expected):
        assert rel_err(got, want) < 1e-9


def test_scheduled_adam_matches_torch_with_the_same_rates(torch):
    X, y = make_data("cross_entropy", 20, 5, 3, seed=1)
    net = fastbp.Network([5, 6, 3], seed=2, dtype=np.float64)
    sched = schedules.CosineAnnealingLR(T_max=12, eta_min=1e-4)
    rates = sched.rate(0.02, np.arange(12), np.zeros(12))
    expected = torch_steps(net, X, y, lambda p: torch.optim.Adam(p, lr=0.02), 12, torch, rates)
    hist = net.fit(X, y, epochs=12, optimizer="adam", lr=0.02, schedule=sched, shuffle=False)
    assert np.allclose(hist.lr, rates, rtol=1e-15)
    for got, want in zip(net.weights + net.biases, expected):
        assert rel_err(got, want) < 1e-9


def test_adam_float32_follows_float64():
    X, y = make_data("cross_entropy", 40, 5, 3, seed=1)
    out = {}
    for dt in (np.float32, np.float64):
        net = fastbp.Network([5, 8, 3], seed=2, dtype=dt)
        net.fit(X, y, epochs=15, optimizer="adam", lr=0.01, batch_size=8, shuffle=True)
        out[dt] = net._params.astype(np.float64)
    assert rel_err(out[np.float32], out[np.float64]) < 1e-4


# ----------------------------------------------------------------- schedules


SCHEDULE_CASES = [
    (schedules.Constant(), lambda e, s: 0.1),
    (schedules.StepLR(step_size=3, gamma=0.5), lambda e, s: 0.1 * 0.5 ** (e // 3)),
    (schedules.ExponentialLR(gamma=0.9), lambda e, s: 0.1 * 0.9 ** e),
    (schedules.CosineAnnealingLR(T_max=7, eta_min=0.01),
     lambda e, s: 0.01 + 0.09 * (1 + math.cos(math.pi * e / 7)) / 2),
    (schedules.InvScaling(power_t=0.25), lambda e, s: 0.1 / (s + 1) ** 0.25),
]


@pytest.mark.parametrize("sched,formula", SCHEDULE_CASES, ids=[type(c[0]).__name__ for c in SCHEDULE_CASES])
def test_schedule_rates_follow_their_formula(sched, formula):
    X, y = make_data("cross_entropy", 30, 4, 3, seed=0)
    net = fastbp.Network([4, 5, 3], seed=0, dtype=np.float64)
    hist = net.fit(X, y, epochs=10, lr=0.1, batch_size=7, schedule=sched)
    expected = [formula(e, 30 * e) for e in range(10)]
    assert np.allclose(hist.lr, expected, rtol=1e-14, atol=0)


def test_torch_schedulers_give_the_same_rates(torch):
    p = [torch.nn.Parameter(torch.zeros(1))]
    cases = [(schedules.StepLR(3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
             (schedules.ExponentialLR(0.9), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
             (schedules.CosineAnnealingLR(7, 0.01),
              lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, 0.01))]
    for ours, make in cases:
        opt = torch.optim.SGD(p, lr=0.1)
        sched = make(opt)
        want = []
        for _ in range(10):
            want.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert np.allclose(ours.rate(0.1, np.arange(10), np.zeros(10)), want, rtol=1e-12)


def test_adaptive_divides_the_rate_by_5_after_a_plateau_then_stops():
    sched = schedules.Adaptive(patience=2, tol=1e-3, min_lr=0.05 / 25 * 1.0001)
    rates, stops = [], []
    for loss in [1.0, 0.5] + [0.5] * 20:
        rates.append(float(sched.rate(0.05, np.array([0]), np.array([0]))[0]))
        stops.append(sched.observe(loss))
        if stops[-1]:
            break
    # two improvements, then three bad epochs (> patience) per reduction: 0.05 -> 0.01 -> 0.002
    assert rates[:5] == [0.05] * 5 and rates[5] == pytest.approx(0.01)
    assert rates[8] == pytest.approx(0.002)
    assert stops[-1] is True and stops.count(True) == 1


def test_adaptive_schedule_can_stop_fit():
    X, y = make_data("cross_entropy", 30, 4, 3, seed=0)
    net = fastbp.Network([4, 5, 3], seed=0, dtype=np.float64)
    hist = net.fit(X, y, epochs=500, lr=1e-6, schedule=schedules.Adaptive(patience=2, tol=1.0))
    assert hist.stopped_early and len(hist) < 500


# ----------------------------------------------------------------- early stopping, callbacks


def test_early_stopping_restores_the_best_weights():
    X, y = make_data("cross_entropy", 120, 6, 3, seed=0)
    Xv, yv = make_data("cross_entropy", 60, 6, 3, seed=1)  # unrelated labels: it overfits
    snapshots = []
    net = fastbp.Network([6, 32, 3], seed=0, dtype=np.float64)
    hist = net.fit(X, y, epochs=300, lr=0.3, batch_size=16, validation_data=(Xv, yv),
                   early_stopping=True, patience=5,
                   callbacks=[lambda e, loss, val, n: snapshots.append(n._params.copy())])
    best = int(np.argmin(hist.val_loss))
    assert hist.stopped_early and len(hist) == best + 1 + 5
    assert hist.best_epoch == best + 1
    assert np.array_equal(net._params, snapshots[best])
    assert net.loss(Xv, yv) == pytest.approx(min(hist.val_loss), rel=1e-12)


def test_validation_split_records_loss_and_accuracy():
    X, y = make_data("cross_entropy", 100, 4, 3, seed=0)
    net = fastbp.Network([4, 8, 3], seed=0)
    hist = net.fit(X, y, epochs=4, lr=0.1, batch_size=10, validation_split=0.2)
    assert len(hist.val_loss) == 4 and len(hist.val_accuracy) == 4
    assert all(0 <= a <= 1 for a in hist.val_accuracy)


def test_a_callback_returning_false_stops_training_and_sees_each_epoch():
    X, y = make_data("mse", 20, 3, 3, seed=0)
    seen = []

    def cb(epoch, loss, val_loss, network):
        seen.append((epoch, loss, val_loss, network))
        return epoch < 4

    net = fastbp.Network([3, 4, 3], loss="mse", seed=0)
    hist = net.fit(X, y, epochs=50, lr=0.01, callbacks=[cb])
    assert [s[0] for s in seen] == [1, 2, 3, 4]
    assert [s[1] for s in seen] == hist.loss and seen[0][2] is None and seen[0][3] is net
    assert hist.stopped_early


def test_progress_bar_shows_loss_and_samples_per_second(capsys):
    pytest.importorskip("tqdm")
    X, y = make_data("cross_entropy", 50, 4, 3, seed=0)
    fastbp.Network([4, 5, 3], seed=0).fit(X, y, epochs=3, lr=0.1, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=" in err and "samples_per_s=" in err


def test_history_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = make_data("cross_entropy", 60, 4, 3, seed=0)
    hist = fastbp.Network([4, 5, 3], seed=0).fit(X, y, epochs=5, lr=0.1, validation_split=0.25)
    path = tmp_path / "curve.png"
    hist.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ----------------------------------------------------------------- sample weights


@pytest.mark.parametrize("sizes,loss", [([3, 4, 3], "cross_entropy"), ([3, 64, 64, 1], "bce"),
                                        ([3, 5, 2], "mse")])
def test_integer_sample_weights_equal_repeated_rows(sizes, loss):
    """Full-batch steps with weight k on a row are the steps on the data with the row k times."""
    X, y = make_data(loss, 9, sizes[0], sizes[-1], seed=3)
    w = np.array([1, 2, 1, 3, 1, 1, 2, 1, 1])
    a = fastbp.Network(sizes, loss=loss, seed=1, dtype=np.float64)
    b = fastbp.Network(sizes, loss=loss, seed=1, dtype=np.float64)
    ha = a.fit(X, y, epochs=5, lr=0.1, sample_weight=w, shuffle=False)
    hb = b.fit(np.repeat(X, w, axis=0), np.repeat(y, w, axis=0), epochs=5, lr=0.1, shuffle=False)
    assert rel_err(a._params, b._params) < 1e-12
    assert rel_err(ha.loss, hb.loss) < 1e-12


# ----------------------------------------------------------------- resume and checkpoints


RUNS = [dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True),
        # T_max given: schedule="cosine" sizes itself to the call that starts the run
        dict(optimizer="adam", lr=0.01, schedule=schedules.CosineAnnealingLR(T_max=7)),
        dict(optimizer="adamw", lr=0.01, schedule=schedules.StepLR(2, 0.5))]


@pytest.mark.parametrize("run", RUNS, ids=[r["optimizer"] for r in RUNS])
@pytest.mark.parametrize("sizes", [[4, 5, 3], [4, 64, 64, 3]], ids=["fused", "blas"])
def test_fit_in_pieces_with_resume_equals_one_fit(run, sizes):
    X, y = make_data("cross_entropy", 50, 4, 3, seed=0)
    whole = fastbp.Network(sizes, seed=3)
    h_whole = whole.fit(X, y, epochs=7, batch_size=8, **run)
    parts = fastbp.Network(sizes, seed=3)
    h1 = parts.fit(X, y, epochs=3, batch_size=8, **run)
    h2 = parts.fit(X, y, epochs=4, batch_size=8, resume=True, **run)
    assert np.array_equal(whole._params, parts._params)
    assert h_whole.loss == h1.loss + h2.loss and parts.epoch == 7


def test_resume_refuses_a_different_optimiser():
    X, y = make_data("cross_entropy", 20, 4, 3, seed=0)
    net = fastbp.Network([4, 5, 3], seed=0)
    net.fit(X, y, epochs=2, optimizer="adam")
    before = net._params.copy()
    with pytest.raises(ValueError, match="resume=True continues the saved run, whose optimizer"):
        net.fit(X, y, epochs=2, optimizer="adam", lr=0.1, resume=True)
    assert np.array_equal(before, net._params)


@pytest.mark.parametrize("run", RUNS, ids=[r["optimizer"] for r in RUNS])
def test_checkpoint_load_and_resume_reach_the_uninterrupted_bits(run, tmp_path):
    X, y = make_data("cross_entropy", 50, 4, 3, seed=0)
    whole = fastbp.Network([4, 16, 3], seed=3)
    whole.fit(X, y, epochs=8, batch_size=8, **run)
    path = tmp_path / "ckpt.npz"
    first = fastbp.Network([4, 16, 3], seed=3)
    first.fit(X, y, epochs=5, batch_size=8, checkpoint=path, checkpoint_every=2, **run)
    again = fastbp.Network.load(path)
    assert again.epoch == 5
    again.fit(X, y, epochs=3, batch_size=8, resume=True, **run)
    assert np.array_equal(whole._params, again._params)


def test_checkpoint_every_n_epochs_holds_that_epoch(tmp_path):
    X, y = make_data("cross_entropy", 30, 4, 3, seed=0)
    path = tmp_path / "ckpt.npz"
    epochs_saved = []
    net = fastbp.Network([4, 5, 3], seed=0)
    net.fit(X, y, epochs=6, checkpoint=path, checkpoint_every=4,
            callbacks=[lambda e, *a: epochs_saved.append(
                fastbp.Network.load(path).epoch if path.exists() else None)])
    assert epochs_saved == [None, None, None, 4, 4, 4]  # saved after epoch 4, then at the end
    assert fastbp.Network.load(path).epoch == 6


def test_early_stopping_state_survives_a_checkpoint(tmp_path):
    X, y = make_data("cross_entropy", 80, 6, 3, seed=0)
    Xv, yv = make_data("cross_entropy", 40, 6, 3, seed=1)
    kw = dict(lr=0.3, batch_size=16, validation_data=(Xv, yv), early_stopping=True, patience=4)
    whole = fastbp.Network([6, 16, 3], seed=0)
    h = whole.fit(X, y, epochs=200, **kw)
    assert h.stopped_early
    path = tmp_path / "c.npz"
    part = fastbp.Network([6, 16, 3], seed=0)
    part.fit(X, y, epochs=len(h) - 2, checkpoint=path, **kw)
    again = fastbp.Network.load(path)
    again.fit(X, y, epochs=200, resume=True, **kw)
    assert np.array_equal(whole._params, again._params)


_SAVER = textwrap.dedent("""
    import sys, numpy as np, fastbp
    net = fastbp.Network([64, 512, 512, 10], seed=0)  # ~1.4 MB per file: saves take a while
    X = np.random.default_rng(0).standard_normal((64, 64))
    y = np.arange(64) % 10
    net.fit(X, y, epochs=1, batch_size=64)
    print("ready", flush=True)
    k = 0
    while True:
        k += 1
        net._params[0] = k  # each version is recognisable by its first parameter
        net.save(sys.argv[1])
""")


def test_a_kill_during_save_never_leaves_a_corrupt_or_missing_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    fastbp.Network([64, 512, 512, 10], seed=0).save(path)  # the file exists before the run
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    rng = np.random.default_rng(0)
    versions = set()
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))  # lands mid-save most of the time
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        net = fastbp.Network.load(path)  # must load: whole, with a training state
        assert net.sizes == (64, 512, 512, 10) and np.isfinite(net._params).all()
        versions.add(float(net._params[0]))
    assert len(versions) > 1  # the kills did land while the file was being replaced


# ----------------------------------------------------------------- streaming from disk


def test_memmap_is_streamed_in_chunks_never_loaded_whole(tmp_path, monkeypatch):
    from fastbp import data
    X, y = make_data("cross_entropy", 1000, 8, 3, seed=0, dtype=np.float32)
    path = tmp_path / "X.f32"
    X.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    monkeypatch.setattr(data, "CHUNK_BYTES", 100 * 8 * 4)  # 100 rows per chunk
    reads = []
    real_read = data.Stream.read
    monkeypatch.setattr(data.Stream, "read",
                        lambda self, a, b: reads.append(b - a) or real_read(self, a, b))
    net = fastbp.Network([8, 16, 3], seed=0)
    hist = net.fit(mm, y, epochs=3, lr=0.1, batch_size=20)
    assert max(reads) == 100 and len(reads) == 10 + 3 * 10  # validation pass + 3 epochs
    assert np.isfinite(hist.loss).all() and hist.loss[-1] < hist.loss[0]
    # the same as training in memory on each chunk in the stream's order: one epoch, no shuffle
    a = fastbp.Network([8, 16, 3], seed=0)
    a.fit(mm, y, epochs=1, lr=0.1, batch_size=20, shuffle=False)
    b = fastbp.Network([8, 16, 3], seed=0)
    b.fit(X, y, epochs=1, lr=0.1, batch_size=20, shuffle=False)
    assert np.array_equal(a._params, b._params)


def test_streamed_nan_is_refused_before_training(tmp_path):
    X, y = make_data("cross_entropy", 50, 4, 3, seed=0, dtype=np.float32)
    X[37, 2] = np.nan
    path = tmp_path / "X.f32"
    X.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    net = fastbp.Network([4, 5, 3], seed=0)
    before = net._params.copy()
    with pytest.raises(ValueError, match=r"X\[0:50\] contains NaN"):
        net.fit(mm, y, epochs=1)
    assert np.array_equal(before, net._params)


def test_import_fastbp_imports_no_optional_dependency():
    code = ("import sys, fastbp; "
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'tqdm', 'pandas', 'torch', "
            "'mpi4py', 'threadpoolctl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
