"""The helper process that compiles the training loop while a cold first fit compiles its batch
kernel (fastbp._ahead)."""
import os
import stat
import subprocess
import sys
import time

import pytest
from numba import njit, types

from fastbp import _ahead

# A cold first fit through the per-layer kernels, in a fresh process: the names of the fastbp
# functions this process compiled (not loaded from the cache), then the trained parameters' hash.
COLD_FIT = """
import hashlib, sys, numpy as np
from numba.core import event
import fastbp
from fastbp import _ahead
_ahead._spare = lambda: {spare}
compiled = set()
class Seen(event.Listener):
    def on_start(self, ev):
        compiled.add(ev.data["dispatcher"].py_func.__name__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Seen())
rng = np.random.default_rng(0)
X = rng.standard_normal((96, 30)); y = rng.integers(0, 3, 96)
net = fastbp.Network([30, 64, 3], seed=0)
net.fit(X, y, epochs=3, batch_size=32, optimizer="adam")
print(sorted(n for n in compiled if n.startswith(("batch_step", "train_epochs"))))
print(hashlib.sha256(net._params.tobytes()).hexdigest())
"""


def _cold(tmp_path, spare):
    run = subprocess.run([sys.executable, "-c", COLD_FIT.format(spare=spare)], capture_output=True,
                         text=True, timeout=600,
                         env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / f"cache{spare}")))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count("fastbp: compiling the kernels") == 1  # the notice, as ever
    names, digest = run.stdout.splitlines()
    return eval(names), digest


def test_a_cold_first_fit_has_its_loop_compiled_by_a_helper_with_the_same_bits(tmp_path):
    """With a CPU to spare the loop is compiled by the helper into the cache and only loaded here;
    without, both compile here. The parameters trained are the same bits."""
    (helped, digest), (alone, alone_digest) = _cold(tmp_path, True), _cold(tmp_path, False)
    assert helped == ["batch_step"]
    assert alone == ["batch_step", "train_epochs"]
    assert digest == alone_digest


@njit(cache=True)
def _loop(x):
    """A stand-in for a driver that is neither compiled nor cached for _LOOP_TYPES."""
    return x


_LOOP_TYPES = (types.unicode_type,)


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """``beside`` with a helper made by a script of the test's own (one that sleeps, or fails),
    every helper started recorded."""
    started = []
    real = _ahead._start

    def start(where, sig):
        started.append(real(where, sig))
        return started[-1]

    def make(body):
        script = tmp_path / "helper"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setattr(sys, "executable", str(script))
        return started
    monkeypatch.setattr(_ahead, "_start", start)
    monkeypatch.setattr(_ahead, "_spare", lambda: True)
    return make


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script as the helper")
def test_a_helper_that_fails_leaves_the_compile_to_this_process(helper):
    started = helper("exit 3")
    ran = []
    with _ahead.beside(("TRAIN_EPOCHS", 0, 0), _loop, _LOOP_TYPES):
        ran.append(True)
    assert ran and len(started) == 1 and started[0].returncode == 3


def test_a_helper_that_cannot_start_leaves_the_compile_to_this_process(monkeypatch):
    monkeypatch.setattr(_ahead, "_spare", lambda: True)
    monkeypatch.setattr(sys, "executable", "/no/such/python")
    ran = []
    with _ahead.beside(("TRAIN_EPOCHS", 0, 0), _loop, _LOOP_TYPES):
        ran.append(True)
    assert ran


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script as the helper")
def test_an_error_beside_the_helper_stops_it_and_is_raised(helper):
    started = helper("exec sleep 60")
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with _ahead.beside(("TRAIN_EPOCHS", 0, 0), _loop, _LOOP_TYPES):
            raise KeyboardInterrupt
    assert started[0].returncode is not None and time.perf_counter() - t0 < 30


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script as the helper")
def test_a_helper_past_its_time_is_stopped_and_the_compile_left_to_this_process(helper,
                                                                                 monkeypatch):
    monkeypatch.setattr(_ahead, "HELPER_TIMEOUT_S", 0.5)
    started = helper("exec sleep 60")
    t0 = time.perf_counter()
    with _ahead.beside(("TRAIN_EPOCHS", 0, 0), _loop, _LOOP_TYPES):
        pass
    assert started[0].returncode is not None and time.perf_counter() - t0 < 30


def test_no_helper_for_a_loop_compiled_already_or_without_a_spare_cpu(helper, monkeypatch):
    started = helper("exit 0")
    assert not _ahead.compiled(_loop, _LOOP_TYPES)
    monkeypatch.setattr(_ahead, "_spare", lambda: False)
    with _ahead.beside(("TRAIN_EPOCHS", 0, 0), _loop, _LOOP_TYPES):
        pass
    monkeypatch.setattr(_ahead, "_spare", lambda: True)
    monkeypatch.setitem(_loop.overloads, _LOOP_TYPES, None)  # as if compiled
    assert _ahead.compiled(_loop, _LOOP_TYPES)
    with _ahead.beside(("TRAIN_EPOCHS", 0, 0), _loop, _LOOP_TYPES):
        pass
    assert started == []


@pytest.mark.parametrize("cpus, running, spare", [(1, 1, False), (2, 1, True), (2, 2, False),
                                                  (2, 3, False), (4, 3, True), (4, 4, False)])
def test_a_cpu_is_spare_when_fewer_tasks_run_than_there_are_cpus(monkeypatch, cpus, running,
                                                                 spare):
    """Counted now, whatever the last minute's load average says."""
    monkeypatch.setattr(_ahead, "_cpus", lambda: cpus)
    monkeypatch.setattr(_ahead, "_running", lambda: running)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0 - spare, 0.0, 0.0), raising=False)
    assert _ahead._spare() is spare


@pytest.mark.parametrize("cpus, load, spare", [(1, 0.0, False), (2, 0.0, True), (2, 1.0, True),
                                               (2, 1.5, False), (4, 2.9, True), (4, 3.5, False)])
def test_without_a_count_of_running_tasks_the_load_average_leaves_a_cpu_free(monkeypatch, cpus,
                                                                             load, spare):
    monkeypatch.setattr(_ahead, "_cpus", lambda: cpus)
    monkeypatch.setattr(_ahead, "_running", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load), raising=False)
    assert _ahead._spare() is spare


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="Linux's count of tasks")
def test_the_running_tasks_are_counted_with_this_one_among_them():
    assert 1 <= _ahead._running() <= int(open("/proc/loadavg").read().split()[3].split("/")[1])


def test_no_count_of_running_tasks_where_the_file_cannot_be_read(monkeypatch):
    def unreadable(*args, **kwargs):
        raise OSError("no /proc here")
    monkeypatch.setattr(_ahead, "open", unreadable, raising=False)
    assert _ahead._running() is None
