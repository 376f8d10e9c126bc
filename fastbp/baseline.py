"""The lean NumPy training loop: the benchmark baseline (``python -m fastbp.bench`` and asv).

What a competent NumPy user writes for minibatch SGD: every buffer allocated once, every
elementwise step a ufunc writing ``out=`` into it, gemms with ``out=``, no copies of the data.
``fastbp.reference`` stays the test oracle (one obvious line per formula, float64 sums); this is
the fast NumPy a speed claim has to beat. The same initial weights as ``fastbp.Network`` with the
same seed, the same maths (mean losses, PyTorch's SGD without momentum).
"""
import numpy as np


class LeanMLP:
    """A dense network trained with plain SGD in preallocated NumPy buffers.

    sizes, activation (sigmoid, tanh, relu), loss (bce, cross_entropy, mse), seed and dtype as
    for ``fastbp.Network``.
    """

    def __init__(self, sizes, activation="relu", loss="cross_entropy", seed=0, dtype=np.float32):
        from .network import Network  # only for its initial weights
        net = Network(sizes, activation=activation, loss=loss, seed=seed, dtype=dtype)
        self.W = [w.copy() for w in net.weights]
        self.b = [b.copy() for b in net.biases]
        self.dW = [np.empty_like(w) for w in self.W]
        self.db = [np.empty_like(b) for b in self.b]
        self.activation, self.loss_name, self.dtype = activation, loss, np.dtype(dtype)
        self._rows = 0

    def _buffers(self, B):
        if B != self._rows:
            dt = self.dtype
            self.A = [np.empty((B, w.shape[1]), dt) for w in self.W]  # layer outputs
            self.D = [np.empty((B, w.shape[1]), dt) for w in self.W]  # deltas
            self.tmp = [np.empty((B, w.shape[1]), dt) for w in self.W]
            self.mask = [np.empty((B, w.shape[1]), bool) for w in self.W]
            self.rowbuf = np.empty((B, 1), dt)
            self._rows = B

    def _activate(self, a):
        if self.activation == "sigmoid":
            _sigmoid(a)
        elif self.activation == "tanh":
            np.tanh(a, out=a)
        else:
            np.maximum(a, 0, out=a)

    def _forward(self, X):
        inp = X
        L = len(self.W)
        for l in range(L):
            a = self.A[l][:X.shape[0]]
            np.matmul(inp, self.W[l], out=a)
            a += self.b[l]
            if l < L - 1:
                self._activate(a)
            inp = a
        return inp

    def _output_delta(self, logits, y):
        """dL/dlogits into D[-1] (the mean loss) and the batch's loss."""
        B, OC = logits.shape
        d = self.D[-1][:B]
        if self.loss_name == "cross_entropy":
            m = self.rowbuf[:B]
            np.max(logits, axis=1, keepdims=True, out=m)
            np.subtract(logits, m, out=d)
            np.exp(d, out=d)
            np.sum(d, axis=1, keepdims=True, out=m)
            d /= m
            rows = np.arange(B)
            loss = -np.log(d[rows, y]).mean()
            d[rows, y] -= 1
            d /= B
        elif self.loss_name == "bce":
            t = self.tmp[-1][:B]
            # max(z, 0) - z y + log(1 + exp(-|z|))
            np.abs(logits, out=t)
            np.negative(t, out=t)
            np.exp(t, out=t)
            np.log1p(t, out=t)
            loss = float((np.maximum(logits, 0) - logits * y + t).mean())
            np.copyto(d, logits)
            _sigmoid(d)
            d -= y
            d /= B * OC
        else:
            np.subtract(logits, y, out=d)
            loss = float(np.vdot(d, d)) / d.size
            d *= 2 / (B * OC)
        return loss

    def _backward(self, X):
        L = len(self.W)
        B = X.shape[0]
        for l in range(L - 1, -1, -1):
            d = self.D[l][:B]
            inp = X if l == 0 else self.A[l - 1][:B]
            np.matmul(inp.T, d, out=self.dW[l])
            np.sum(d, axis=0, out=self.db[l])
            if l > 0:
                dprev = self.D[l - 1][:B]
                np.matmul(d, self.W[l].T, out=dprev)
                self._activation_grad(dprev, inp, self.tmp[l - 1][:B], self.mask[l - 1][:B])

    def _activation_grad(self, d, a, t, mask):
        if self.activation == "sigmoid":
            np.subtract(1, a, out=t)
            t *= a
            d *= t
        elif self.activation == "tanh":
            np.multiply(a, a, out=t)
            np.subtract(1, t, out=t)
            d *= t
        else:
            np.greater(a, 0, out=mask)
            np.multiply(d, mask, out=d)

    def _update(self, lr):
        for W, dW, b, db in zip(self.W, self.dW, self.b, self.db):
            dW *= lr
            W -= dW
            db *= lr
            b -= db

    def fit(self, X, y, epochs=1, lr=0.01, batch_size=200, shuffle=False):
        """Minibatch SGD over X in order (no shuffling); returns each epoch's mean batch loss."""
        if shuffle:
            raise ValueError("the baseline trains in order (shuffle=False), as the benchmarks do")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if self.loss_name == "cross_entropy":
            y = np.asarray(y).astype(np.intp)
        else:
            y = np.ascontiguousarray(np.asarray(y, dtype=self.dtype).reshape(len(X), -1))
        N = X.shape[0]
        self._buffers(min(batch_size, N))
        lr = self.dtype.type(lr)
        losses = []
        for _ in range(epochs):
            total = 0.0
            for s in range(0, N, batch_size):
                xb, yb = X[s:s + batch_size], y[s:s + batch_size]
                total += self._output_delta(self._forward(xb), yb) * len(xb)
                self._backward(xb)
                self._update(lr)
            losses.append(total / N)
        return np.array(losses)

    def predict_proba(self, X):
        """The output activation of X: softmax, sigmoid, or the identity for mse."""
        X = np.ascontiguousarray(X, dtype=self.dtype)
        self._buffers(X.shape[0])
        z = self._forward(X).copy()
        if self.loss_name == "cross_entropy":
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
        elif self.loss_name == "bce":
            _sigmoid(z)
        return z


def _sigmoid(a):
    """a = 1 / (1 + exp(-a)) in place (exp(-a) may overflow to inf for a < -88 in float32, which
    gives the right limit 0; the warning is silenced)."""
    with np.errstate(over="ignore"):
        np.negative(a, out=a)
        np.exp(a, out=a)
        a += 1
        np.reciprocal(a, out=a)
