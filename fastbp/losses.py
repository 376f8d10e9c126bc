"""The loss table: each loss is fused with its output activation.

targets: 'binary' (0/1 or soft targets in [0, 1], one output), 'labels' (integers 0..K-1, K >= 2
outputs), 'real' (any finite values, shape (n,) or (n, n_out)) or 'counts' (finite values >= 0,
shaped as 'real': the mean of a Poisson count, predicted as exp of the output).
"""
from collections import namedtuple

from . import _kernels as K

Loss = namedtuple("Loss", "code output targets")

LOSSES = {
    "bce": Loss(K.LOSS_BCE, "sigmoid", "binary"),
    "cross_entropy": Loss(K.LOSS_CE, "softmax", "labels"),
    "mse": Loss(K.LOSS_MSE, "identity", "real"),
    "poisson": Loss(K.LOSS_POISSON, "exp", "counts"),
}
