"""fastbp: dense neural networks trained by backpropagation in compiled (Numba) kernels."""
from .network import DivergenceError, History, Network

__version__ = "0.1.0"
__all__ = ["Network", "History", "DivergenceError", "__version__"]
