"""Sparse (CSR/CSC) input trains, predicts and differentiates as its dense twin: the first layer
reads the stored values where they are (never densified); the rest of the network is shared."""
import numpy as np
import pytest

import fastbp

sp = pytest.importorskip("scipy.sparse")


def _data(n=120, d=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.2)
    return X, rng.integers(0, 3, n)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("sizes", [[30, 8, 3], [30, 64, 32, 3]], ids=["small", "blas"])
def test_sparse_fit_predict_and_gradients_match_dense(fmt, sizes):
    X, y = _data()
    Xs = sp.csr_matrix(X) if fmt == "csr" else sp.csc_matrix(X)
    kw = dict(epochs=4, batch_size=16, lr=0.05, optimizer="adam")
    dense = fastbp.Network(sizes, seed=1, dtype=np.float64)
    sparse = fastbp.Network(sizes, seed=1, dtype=np.float64)
    h_dense, h_sparse = dense.fit(X, y, **kw), sparse.fit(Xs, y, **kw)
    np.testing.assert_allclose(sparse._params, dense._params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_sparse.loss, h_dense.loss, rtol=1e-10)
    np.testing.assert_allclose(sparse.predict_proba(Xs), dense.predict_proba(X), rtol=1e-10,
                               atol=1e-12)
    (dW_s, db_s), (dW_d, db_d) = sparse.gradients(Xs, y), dense.gradients(X, y)
    for a, b in zip(dW_s + db_s, dW_d + db_d):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
