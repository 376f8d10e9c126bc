"""`python -m fastbp`, the README's first command, end to end."""
import subprocess
import sys

import pytest


def test_demo_learns_xor_and_digits_and_plots(tmp_path):
    pytest.importorskip("sklearn")
    run = subprocess.run([sys.executable, "-m", "fastbp"], capture_output=True, text=True,
                         timeout=600, check=True, cwd=tmp_path)
    out = run.stdout
    assert "epoch 1000  loss" in out
    final = float(out.split("epoch 1000  loss ")[1].split()[0])
    assert final < 0.05
    assert "accuracy 1.00" in out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.95
    assert "time per epoch" in out
    adam_accuracy = float(out.split("test accuracy ")[2].split()[0])
    assert adam_accuracy >= 0.95
    if "curves written to" in out:  # matplotlib installed (the test extras install it)
        assert (tmp_path / "digits_curve.png").read_bytes()[:4] == b"\x89PNG"
