"""fastbp: dense neural networks trained by backpropagation in compiled (Numba) kernels."""
from . import optim, schedules
from .engine import precompile
from .network import Network
from .training import DivergenceError, History
from .optim import SGD, Adam, AdamW

__version__ = "0.2.0"
__all__ = ["Network", "History", "DivergenceError", "SGD", "Adam", "AdamW", "optim", "schedules",
           "precompile", "__version__"]
