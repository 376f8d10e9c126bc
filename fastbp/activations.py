"""The activation table: one entry per hidden-layer activation.

Adding an activation is one entry here, one branch in each of ``_kernels._act_row`` (the
forward) and ``_kernels._act_grad_row`` (the derivative from the output), and one line in
``reference.py``.
"""
from collections import namedtuple

from . import _kernels as K

Activation = namedtuple("Activation", "code init")
Activation.__doc__ = """code: the kernel's activation id; init: 'he' or 'glorot', the uniform
initialisation of the weights of a layer followed by this activation."""

ACTIVATIONS = {
    "identity": Activation(K.ACT_IDENTITY, "glorot"),
    "sigmoid": Activation(K.ACT_SIGMOID, "glorot"),
    "relu": Activation(K.ACT_RELU, "he"),
    "tanh": Activation(K.ACT_TANH, "glorot"),
    "leaky_relu": Activation(K.ACT_LEAKY_RELU, "he"),
}
