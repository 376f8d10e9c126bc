"""``python -m fastbp``: the lab exercise that printed ``Loss: 0.6931`` forever, fixed, then real digits.

1. XOR with a 2-4-1 sigmoid network and binary cross-entropy, lr 1.0, 1000 epochs: the loss every
   100 epochs, then the table of inputs, targets, predicted probabilities and the accuracy.
2. scikit-learn's ``load_digits`` (1797 real 8x8 handwritten digits, shipped with scikit-learn, no
   download): a 64-64-10 relu network, test accuracy and time per epoch; then the same network
   with Adam, a cosine schedule, a validation split and early stopping, with a progress bar, and
   its loss/accuracy curves written to ``digits_curve.png`` (``--plot PATH`` to choose).
"""
import argparse
import time

import numpy as np

from . import Network
from ._validate import FLOAT_DTYPES
from .losses import LOSSES


def xor(seed=0):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 1, 1, 0])
    print("XOR, 2-4-1 sigmoid network, binary cross-entropy, lr 1.0, full batch")
    net = Network([2, 4, 1], activation="sigmoid", loss="bce", seed=seed, dtype=np.float64)
    print(f"epoch 0  loss {net.loss(X, y):.4f}   (ln 2 = {np.log(2):.4f}: where the lab got stuck)")
    net.fit(X, y, epochs=1000, lr=1.0, shuffle=False, log_every=100)
    proba = net.predict_proba(X)
    pred = net.predict(X)
    print("\n x1 x2 | target | P(y=1) | predicted")
    for (a, b), t, p, q in zip(X.astype(int), y, proba, pred):
        print(f"  {a}  {b} |   {t}    | {p:.4f} | {q}")
    print(f"accuracy {np.mean(pred == y):.2f}\n")


def digits(seed=0, epochs=40):
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        print("digits: skipped, scikit-learn is not installed (pip install 'fastbp[demo]')")
        return
    data = load_digits()
    X = data.data / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, data.target, train_size=1344, stratify=data.target,
                                          random_state=0)
    print(f"digits: {len(Xtr)} training and {len(Xte)} test images (8x8), 64-64-10 relu network, "
          f"cross-entropy, float32, batch 32, lr 0.1, {epochs} epochs, shuffled")
    t0 = time.perf_counter()
    Network([64, 64, 10], seed=seed).fit(Xtr[:32], ytr[:32], epochs=1, batch_size=32)
    warm = time.perf_counter() - t0
    net = Network([64, 64, 10], activation="relu", loss="cross_entropy", seed=seed,
                  dtype=np.float32)
    t0 = time.perf_counter()
    hist = net.fit(Xtr, ytr, epochs=epochs, lr=0.1, batch_size=32, shuffle=True)
    elapsed = time.perf_counter() - t0
    acc = np.mean(net.predict(Xte) == yte)
    print(f"final training loss {hist.loss[-1]:.4f}, test accuracy {acc:.4f}")
    print(f"time per epoch {elapsed / epochs * 1e3:.3f} ms "
          f"(first call, Numba compile or cache load included: {warm:.2f} s)")
    return Xtr, ytr, Xte, yte


def digits_adam(Xtr, ytr, Xte, yte, plot, seed=0):
    """Adam, cosine schedule, early stopping on a 20% validation split; a progress bar (tqdm)
    and a PNG of the curves (matplotlib), each when installed."""
    try:
        import tqdm  # noqa: F401
        progress = True
    except ImportError:
        progress = False
    print("\ndigits again: Adam lr 0.003, cosine schedule over 100 epochs, batch 32, 20% held "
          "out for validation, early stopping (patience 10)")
    net = Network([64, 64, 10], seed=seed)
    hist = net.fit(Xtr, ytr, epochs=100, optimizer="adam", lr=0.003, schedule="cosine",
                   batch_size=32, validation_split=0.2, early_stopping=True, patience=10,
                   progress=progress)
    stop = f"stopped after {len(hist)} epochs" if hist.stopped_early else f"{len(hist)} epochs"
    print(f"{stop}, best validation loss {min(hist.val_loss):.4f} at epoch {hist.best_epoch} "
          f"(weights restored), test accuracy {np.mean(net.predict(Xte) == yte):.4f}")
    try:
        hist.plot(plot, title="fastbp: digits, 64-64-10, Adam + cosine, early stopping")
        print(f"loss and accuracy curves written to {plot}")
    except ImportError as exc:
        print(f"no plot: {exc}")


HELP = """\
The fastbp demo: the lab exercise that printed 'Loss: 0.6931' for ever, fixed, then real data.

1. XOR with a 2-4-1 sigmoid network, binary cross-entropy, lr 1.0, 1000 epochs: the loss every
   100 epochs, then the inputs, targets, predicted probabilities and the accuracy.
2. scikit-learn's load_digits (1797 real 8x8 handwritten digits, shipped with scikit-learn, no
   download): a 64-64-10 relu network, its test accuracy and time per epoch; then the same
   network with Adam, a cosine schedule, a validation split and early stopping, with a progress
   bar, and its loss and accuracy curves written to a PNG.

How long: the first run compiles fastbp's kernels (a notice says so; about 25 s on a 2-core
machine, cached on disk afterwards); later runs take a few seconds. Part 2 needs scikit-learn,
the bar tqdm and the PNG matplotlib: pip install 'fastbp[demo]'."""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the networks' initial weights and shuffling (default 0)")
    parser.add_argument("--plot", default="digits_curve.png",
                        help="where to write the PNG of the curves (default digits_curve.png)")
    parser.add_argument("--precompile", nargs="*", choices=FLOAT_DTYPES, metavar="DTYPE",
                        help="only compile the kernels for the dtypes given (float32, float64; "
                             "both when none is) or load them from the cache, so that later fits "
                             "start at once: every path and loss, 2-3 minutes per dtype on 2 "
                             "cores")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, metavar="LOSS",
                        help="with --precompile: only these losses (bce, cross_entropy, mse, "
                             "poisson; a quarter of the time each)")
    args = parser.parse_args(argv)
    if args.losses is not None and args.precompile is None:
        parser.error("--losses goes with --precompile")
    if args.precompile is not None:
        from . import precompile
        for dtype in args.precompile or FLOAT_DTYPES:  # a line as each is done: minutes in all
            seconds = precompile((dtype,), args.losses)[dtype]
            print(f"{dtype}: ready in {seconds:.1f} s", flush=True)
        return
    xor(args.seed)
    data = digits(args.seed)
    if data is not None:
        digits_adam(*data, plot=args.plot, seed=args.seed)


if __name__ == "__main__":
    main()
