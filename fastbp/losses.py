"""The loss table: each loss is fused with its output activation.

targets: 'binary' (0/1 or soft targets in [0, 1], one output), 'labels' (integers 0..K-1, K >= 2
outputs) or 'real' (any finite values, shape (n,) or (n, n_out)).
"""
from collections import namedtuple

from . import _kernels as K

Loss = namedtuple("Loss", "code output targets")

LOSSES = {
    "bce": Loss(K.LOSS_BCE, "sigmoid", "binary"),
    "cross_entropy": Loss(K.LOSS_CE, "softmax", "labels"),
    "mse": Loss(K.LOSS_MSE, "identity", "real"),
}
