"""The same maths as fastbp's compiled kernels, in plain NumPy, written separately from them.

It is the test oracle (every kernel is compared with it) and the asv baseline (``MLP`` trains like
``fastbp.Network``: same initialisation, same shuffling stream, same SGD). Arrays: X (n, sizes[0]);
W[i] (sizes[i], sizes[i+1]); b[i] (sizes[i+1],); logits (n, sizes[-1]).
"""
import numpy as np

LEAKY_SLOPE = 0.01
HE_INIT = ("relu", "leaky_relu")


def init_params(sizes, activations, seed, dtype=np.float64):
    """Ws, bs: W[i] uniform in +-sqrt(6/n_in) (He) when layer i is followed by relu or leaky_relu,
    +-sqrt(6/(n_in+n_out)) (Glorot) otherwise and for the output layer; drawn in float64 from
    default_rng(seed), layer by layer, then cast. Biases zero."""
    rng = np.random.default_rng(seed)
    Ws, bs = [], []
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        hidden = i < len(sizes) - 2
        if hidden and activations[i] in HE_INIT:
            limit = np.sqrt(6.0 / n_in)
        else:
            limit = np.sqrt(6.0 / (n_in + n_out))
        Ws.append(rng.uniform(-limit, limit, size=(n_in, n_out)).astype(dtype))
        bs.append(np.zeros(n_out, dtype=dtype))
    return Ws, bs


def sigmoid(z):
    # exp of a non-positive number only, so it never overflows
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def activate(name, z):
    """act(z) for a hidden activation name."""
    if name == "identity":
        return z
    if name == "sigmoid":
        return sigmoid(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "tanh":
        return np.tanh(z)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_SLOPE * z)
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(name, z):
    """d act / dz at z (written from z here; the kernels use the output, an independent route)."""
    if name == "identity":
        return np.ones_like(z)
    if name == "sigmoid":
        s = sigmoid(z)
        return s * (1 - s)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "tanh":
        return 1 / np.cosh(z) ** 2
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, LEAKY_SLOPE).astype(z.dtype)
    raise ValueError(f"unknown activation {name!r}")


def as_targets(loss, y, n_out):
    """Targets as the loss wants them: integer labels (n,) for cross_entropy, (n, n_out) otherwise."""
    y = np.asarray(y)
    if loss == "cross_entropy":
        return y.reshape(-1).astype(np.int64)
    return y.reshape(len(y), n_out)


def log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def loss_value(loss, logits, y):
    """Mean loss as PyTorch computes it ('mean' reduction)."""
    z = logits.astype(np.float64)
    y = as_targets(loss, y, z.shape[1])
    if loss == "bce":
        return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
    if loss == "cross_entropy":
        return float(-np.mean(log_softmax(z)[np.arange(len(y)), y]))
    if loss == "mse":
        return float(np.mean((z - y) ** 2))
    if loss == "poisson":  # half the Poisson deviance of mean exp(z)
        ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0)
        return float(np.mean(np.exp(z) - y * z + ylogy - y))
    raise ValueError(f"unknown loss {loss!r}")


def loss_grad(loss, logits, y):
    """d loss_value / d logits, (n, n_out)."""
    y = as_targets(loss, y, logits.shape[1])
    if loss == "bce":
        return (sigmoid(logits) - y) / logits.size
    if loss == "cross_entropy":
        p = np.exp(log_softmax(logits))
        p[np.arange(len(y)), y] -= 1
        return p / len(y)
    if loss == "mse":
        return 2 * (logits - y) / logits.size
    if loss == "poisson":
        return (np.exp(logits) - y) / logits.size
    raise ValueError(f"unknown loss {loss!r}")


def output(loss, logits):
    """The loss's output activation: sigmoid, softmax or identity."""
    if loss == "bce":
        return sigmoid(logits)
    if loss == "cross_entropy":
        return np.exp(log_softmax(logits))
    if loss == "poisson":
        return np.exp(logits)
    return logits


def forward(Ws, bs, activations, X):
    """Returns zs, inputs: pre-activations z[i] (n, sizes[i+1]) and layer inputs a[i] (n, sizes[i]);
    zs[-1] are the logits."""
    zs, inputs = [], []
    a = X
    for i, (W, b) in enumerate(zip(Ws, bs)):
        inputs.append(a)
        z = a @ W + b
        zs.append(z)
        if i < len(Ws) - 1:
            a = activate(activations[i], z)
    return zs, inputs


def backward(Ws, activations, loss, zs, inputs, y):
    """Gradients dWs, dbs of the mean loss, layer by layer from the output back."""
    dz = loss_grad(loss, zs[-1], y)
    dWs, dbs = [None] * len(Ws), [None] * len(Ws)
    for i in range(len(Ws) - 1, -1, -1):
        dWs[i] = inputs[i].T @ dz
        dbs[i] = dz.sum(axis=0)
        if i > 0:
            dz = (dz @ Ws[i].T) * activation_grad(activations[i - 1], zs[i - 1])
    return dWs, dbs


def gradients(Ws, bs, activations, loss, X, y):
    zs, inputs = forward(Ws, bs, activations, X)
    return backward(Ws, activations, loss, zs, inputs, y)


def sgd_step(params, grads, velocities, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD (no dampening) over lists of arrays, in place."""
    for p, g, v in zip(params, grads, velocities):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            v *= momentum
            v += g
            g = g + momentum * v if nesterov else v
        p -= lr * g


def adam_step(params, grads, ms, vs, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False, eps_inside=False):
    """torch.optim.Adam (decoupled=False) / AdamW (True) step t (1, 2, ...) over lists of arrays,
    in place; eps_inside puts eps where scikit-learn's Adam does."""
    b1, b2 = betas
    for p, g, m, v in zip(params, grads, ms, vs):
        if decoupled:
            p *= 1 - lr * weight_decay
        elif weight_decay:
            g = g + weight_decay * p
        m += (1 - b1) * (g - m)
        v *= b2
        v += (1 - b2) * g * g
        root = np.sqrt(1 - b2 ** t)
        denom = (np.sqrt(v) + eps) / root if eps_inside else np.sqrt(v) / root + eps
        p -= lr / (1 - b1 ** t) * m / denom


def l2_penalty(grads, Ws, coef):
    """scikit-learn's alpha term: grads[i] += coef * W[i] in place; returns 0.5 coef sum W^2."""
    for g, W in zip(grads, Ws):
        g += coef * W
    return 0.5 * coef * sum(float(np.sum(W * W)) for W in Ws)


class MLP:
    """A plain NumPy network with the fit semantics of ``fastbp.Network``."""

    def __init__(self, sizes, activation="relu", loss="cross_entropy", seed=0, dtype=np.float32):
        self.sizes = list(sizes)
        n_hidden = len(sizes) - 2
        self.activations = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        self.loss_name = loss
        self.dtype = np.dtype(dtype)
        self.weights, self.biases = init_params(self.sizes, self.activations, seed, self.dtype)
        self._shuffle_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))

    def fit(self, X, y, epochs=10, lr=0.05, batch_size=None, momentum=0.0, nesterov=False,
            weight_decay=0.0, shuffle=True):
        """Minibatch SGD; returns the per-epoch sample-weighted mean of the batch losses."""
        X = np.ascontiguousarray(X, dtype=self.dtype)
        y = np.asarray(y)
        y = y.astype(np.int64) if self.loss_name == "cross_entropy" else y.astype(self.dtype)
        n = len(X)
        batch = n if batch_size is None else min(batch_size, n)
        params = [p for pair in zip(self.weights, self.biases) for p in pair]
        velocities = [np.zeros_like(p) for p in params]
        t = self.dtype.type
        history = []
        for _ in range(epochs):
            order = self._shuffle_rng.permutation(n) if shuffle else None
            total = 0.0
            for start in range(0, n, batch):
                rows = slice(start, start + batch) if order is None else order[start:start + batch]
                xb, yb = X[rows], y[rows]
                zs, inputs = forward(self.weights, self.biases, self.activations, xb)
                total += loss_value(self.loss_name, zs[-1], yb) * len(xb)
                dWs, dbs = backward(self.weights, self.activations, self.loss_name, zs, inputs, yb)
                grads = [g.astype(self.dtype, copy=False) for pair in zip(dWs, dbs) for g in pair]
                sgd_step(params, grads, velocities, t(lr), t(momentum), nesterov, t(weight_decay))
            history.append(total / n)
        return history

    def predict_proba(self, X):
        zs, _ = forward(self.weights, self.biases, self.activations,
                        np.asarray(X, dtype=self.dtype))
        return output(self.loss_name, zs[-1])

    def loss(self, X, y):
        zs, _ = forward(self.weights, self.biases, self.activations,
                        np.asarray(X, dtype=self.dtype))
        return loss_value(self.loss_name, zs[-1], y)
