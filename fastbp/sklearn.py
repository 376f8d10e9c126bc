"""scikit-learn estimators on fastbp's compiled kernels: swap
``from sklearn.neural_network import MLPClassifier`` for ``from fastbp.sklearn import
MLPClassifier`` (likewise ``MLPRegressor``) and keep the rest of the code.

Same parameters, meanings and fitted attributes as scikit-learn's, for every solver: 'sgd' and
'adam' run fastbp's compiled epochs through fastbp's training driver; 'lbfgs' runs
``scipy.optimize``'s L-BFGS-B over fastbp's compiled loss and gradient of the flat parameter
buffer, minimising scikit-learn's objective. The same random_state gives the same initial weights,
the same early-stopping split and the same epoch orders as scikit-learn, and the updates are
scikit-learn's (its momentum form, its Adam eps placement, its alpha penalty on weights only), so
the weights after training agree with scikit-learn's to rounding; the arithmetic is fastbp's
compiled kernels (float32 data trains in float32, like scikit-learn).

Needs scikit-learn (``pip install 'fastbp[sklearn]'``); ``import fastbp`` does not import it.
"""
import warnings
from numbers import Integral, Real

import numpy as np

try:
    import sklearn  # noqa: F401
except ImportError:
    raise ImportError("fastbp.sklearn needs scikit-learn: pip install 'fastbp[sklearn]'") from None
import scipy.optimize
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network._base import LOSS_FUNCTIONS as _SK_LOSSES
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                      validate_data)

from . import optim, schedules
from .network import Network
from .engine import FullBatch
from .training import DivergenceError, fit as _train

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}


class _Adaptive(schedules.Adaptive):
    """scikit-learn's adaptive rate, reduced by the estimator itself: its rule counts epochs
    without improvement of the training loss, or of the validation score under early stopping."""

    needs_loss = False


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: scikit-learn's _fit_stochastic loop around
    fastbp's compiled epochs."""

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun

    # -------------------------------------------------------------- fitted parameters

    # coefs_ and intercepts_ are lists of views of the network's flat parameter buffer, so
    # in-place edits reach the network; a list or an element assigned in their place is copied
    # into the buffer before the next use (_pull), as scikit-learn would use it.

    def _publish(self):
        self.coefs_, self.intercepts_ = self._net.weights, self._net.biases
        self._published = (self.coefs_, self.intercepts_, list(self.coefs_),
                           list(self.intercepts_))

    def _pull(self):
        """Copy assigned coefs_ / intercepts_ into the network (shapes checked)."""
        pub = vars(self).get("_published")
        if pub is None:
            return
        coefs, inters = vars(self).get("coefs_"), vars(self).get("intercepts_")
        if (coefs is pub[0] and inters is pub[1] and all(a is b for a, b in zip(coefs, pub[2]))
                and all(a is b for a, b in zip(inters, pub[3]))):
            return
        self._assign(coefs, inters)
        self._publish()

    def _assign(self, coefs, inters):
        net = self._net
        if len(coefs) != len(net.weights) or len(inters) != len(net.biases):
            raise ValueError(f"coefs_ and intercepts_ need {len(net.weights)} arrays each, one "
                             f"per layer; got {len(coefs)} and {len(inters)}")
        for name, given, views in (("coefs_", coefs, net.weights),
                                   ("intercepts_", inters, net.biases)):
            for i, (g, v) in enumerate(zip(given, views)):
                g = np.asarray(g)
                if g.shape != v.shape:
                    raise ValueError(f"{name}[{i}] has shape {g.shape}; the network needs "
                                     f"{v.shape}")
                v[...] = g

    def __getstate__(self):
        # the views would unpickle as copies, cut off from the network: rebuilt on load
        self._pull()
        state = dict(super().__getstate__())
        for key in ("coefs_", "intercepts_", "_published"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_net" in vars(self):
            self._publish()

    # -------------------------------------------------------------- fitting

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X (n_samples, n_features) and y; returns self."""
        self._validate_params()
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental):
        hidden = self.hidden_layer_sizes
        hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
        if any(h <= 0 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden}.")
        # as scikit-learn: assigned coefs_ (no fit yet) or a fitted model is continued by
        # warm_start and partial_fit
        first_pass = "coefs_" not in vars(self) or (not self.warm_start and not incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        rs = check_random_state(self.random_state)
        assigned = None
        if not first_pass and "_net" not in vars(self):  # coefs_ set by hand before any fit
            assigned = (self.coefs_, self.intercepts_)
        if first_pass or assigned is not None:
            self._initialize(X, Y, hidden, rs)
            if assigned is not None:
                self._assign(*assigned)
        else:
            self._pull()
            if self._net.sizes[1:-1] != tuple(hidden) or self._net.dtype != X.dtype:
                raise ValueError("warm_start/partial_fit need the same hidden_layer_sizes and "
                                 f"input dtype as the first fit: {list(self._net.sizes[1:-1])},"
                                 f" {self._net.dtype}")
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, Y, sample_weight)
        else:
            self._fit_stochastic(X, Y, sample_weight, rs, incremental)
        return self

    def _initialize(self, X, Y, hidden, rs):
        n_out = Y.shape[1]
        sizes = [X.shape[1], *hidden, n_out]
        self.n_outputs_ = n_out
        net = Network(sizes, activation=_ACTIVATIONS[self.activation], loss=self._loss_name(n_out),
                      seed=0, dtype=X.dtype)
        # scikit-learn's initialisation, draw for draw: Glorot-uniform weights and biases (bound
        # sqrt(6 / (fan_in + fan_out)), sqrt(2 / ...) for logistic), layer by layer.
        factor = 2.0 if self.activation == "logistic" else 6.0
        for W, b in zip(net.weights, net.biases):
            bound = np.sqrt(factor / (W.shape[0] + W.shape[1]))
            W[...] = rs.uniform(-bound, bound, W.shape)
            b[...] = rs.uniform(-bound, bound, b.shape)
        self._net = net
        self._publish()
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(sizes)
        self.out_activation_ = self._out_activation(n_out)
        self._best_params = net._params.copy()
        if self.solver == "lbfgs":  # as scikit-learn: the stochastic bookkeeping only for those
            return
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # CSR/CSC through the compiled sparse first layer
        return tags

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    # -------------------------------------------------------------- L-BFGS

    def _packing(self):
        """Positions in the flat buffer of scikit-learn's packed vector (every layer's weights,
        then every layer's biases): L-BFGS sees the parameters in scikit-learn's order."""
        layout = self._net._layout
        w = [np.arange(w0, w0 + c * oc) for c, oc, w0, _ in layout]
        b = [np.arange(b0, b0 + oc) for _, oc, _, b0 in layout]
        return np.concatenate(w + b), np.concatenate(w)

    def _loss_grad_lbfgs(self, packed, X, Y, sample_weight=None, *unused):
        """scikit-learn's objective and its gradient at ``packed`` (its parameter order), as
        its own ``_loss_grad_lbfgs`` (Y binarised as scikit-learn's)."""
        full = FullBatch(self._net, *self._full_batch_data(X, Y, sample_weight))
        with full.threads():
            return self._objective(full, np.asarray(Y), sample_weight)(packed)

    def _full_batch_data(self, X, Y, sample_weight):
        dt = self._net.dtype
        SW = (np.empty(0, dt) if sample_weight is None
              else np.ascontiguousarray(sample_weight, dtype=dt))
        T = np.ascontiguousarray(self._targets(np.asarray(Y)), dtype=dt).reshape(len(Y), -1)
        return self._net._X(X), T, SW

    def _objective(self, full, Y, sample_weight):
        """packed -> (scikit-learn's loss, its gradient in its order). The gradient: fastbp's
        compiled mean-loss gradient rescaled to scikit-learn's units, plus alpha W / (weight sum)
        on the weights. The loss: scikit-learn's own loss function of fastbp's outputs (its
        log-loss clips probabilities at eps, which the line search sees at saturated points),
        plus alpha/2 |W|^2 / (weight sum): the same objective, so the same L-BFGS path."""
        net = self._net
        order, weights = self._packing()
        s = self._scale()
        wsum = len(full.index) if sample_weight is None else float(np.sum(sample_weight))
        alpha = self.alpha
        loss_fn = _SK_LOSSES[self._sklearn_loss()]

        def objective(packed):
            net._params[order] = packed
            value, grads = full()
            if not np.isfinite(value):
                return np.inf, np.zeros(len(order))
            out, _ = net._evaluate(full.input, check_finite=False)
            W = net._params[weights].astype(np.float64)
            g = grads.astype(np.float64) * s
            g[weights] += alpha * W / wsum
            loss = loss_fn(Y, out, sample_weight) + 0.5 * alpha * float(W @ W) / wsum
            return float(loss), g[order]
        return objective

    def _fit_lbfgs(self, X, Y, sample_weight):
        net = self._net
        full = FullBatch(net, *self._full_batch_data(X, Y, sample_weight))
        order, _ = self._packing()
        with full.threads():
            res = scipy.optimize.minimize(
                self._objective(full, Y, sample_weight), net._params[order], method="L-BFGS-B",
                jac=True, options=dict(maxfun=self.max_fun, maxiter=self.max_iter, gtol=self.tol,
                                       **_get_additional_lbfgs_options_dict(
                                           "iprint", 1 if self.verbose else -1)))
        self.n_iter_ = _check_optimize_result("lbfgs", res, self.max_iter)
        self.loss_ = float(res.fun)
        net._params[order] = res.x
        if not np.isfinite(net._params).all():
            raise DivergenceError("Solver produced non-finite parameter weights. The input data "
                                  "may contain large values and need to be preprocessed.", None)

    def _scale(self):
        """fastbp's losses are PyTorch's (means over every output); scikit-learn's gradient is of
        the loss summed over outputs (and halved for squared error). s = theirs / ours: the rate
        (SGD), eps (Adam) and alpha are rescaled by it so the updates are scikit-learn's."""
        return 1.0

    def _report(self):
        """scikit-learn's reported loss / fastbp's: s, except where scikit-learn reports another
        loss than the one it differentiates (several regression targets)."""
        return self._scale()

    def _fit_stochastic(self, X, Y, sample_weight, rs, incremental):
        if self.early_stopping:
            # as scikit-learn, whose binarised labels are booleans (its error messages name
            # the classes 'True' and 'False')
            stratify = Y.astype(bool) if is_classifier(self) and self.n_outputs_ == 1 else None
            parts = train_test_split(X, Y, *(() if sample_weight is None else (sample_weight,)),
                                     random_state=rs, test_size=self.validation_fraction,
                                     stratify=stratify)
            X_train, X_val, Y_train, Y_val = parts[:4]
            sw_train, sw_val = (None, None) if sample_weight is None else parts[4:]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            y_val = self._decode(Y_val)
        else:
            X_train, Y_train, sw_train = X, Y, sample_weight
        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n))

        s = self._scale()
        if self.solver == "sgd":
            opt = dict(optimizer=optim.SGD(
                self.learning_rate_init * s, momentum=self.momentum,
                nesterov=bool(self.nesterovs_momentum and self.momentum > 0),
                update_velocity=True))
            # invscaling: scikit-learn's rate follows its cumulative t_ across warm starts
            sched = {"constant": None,
                     "invscaling": schedules.InvScaling(self.power_t, seen=self.t_),
                     "adaptive": _Adaptive(min_lr=1e-6 * s)}[self.learning_rate]
        else:
            opt = dict(optimizer=optim.Adam(self.learning_rate_init, (self.beta_1, self.beta_2),
                                            self.epsilon / s, eps_inside=True))
            sched = None
        # partial_fit continues the optimiser (and its schedule); fit (warm_start or not) starts
        # a fresh one
        net = self._net
        resume = bool(incremental and net._train is not None)
        if resume:
            opt, sched = dict(optimizer=net._train.optimizer), net._train.schedule
        self.n_iter_ = 0  # as scikit-learn: the iterations of this call
        sample_idx = np.arange(n)

        def orders(m):
            # = sklearn.utils.shuffle(sample_idx, random_state=rs), draw for draw, without its
            # argument validation (0.4 ms an epoch, measured)
            nonlocal sample_idx
            perm = np.arange(m)
            rs.shuffle(perm)
            sample_idx = sample_idx[perm]
            return sample_idx

        def after_epoch(epoch, loss, val_loss, network):
            """scikit-learn's bookkeeping and stopping rule after each epoch; False stops."""
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = float(loss) * self._report()
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
            if self.early_stopping:
                self._update_validation(X_val, y_val, sw_val)
            else:
                self._update_loss()
            if self._no_improvement_count > self.n_iter_no_change:
                what = ("Validation score did not improve more than" if self.early_stopping
                        else "Training loss did not improve more than")
                msg = f"{what} tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
                schedule = network._train.schedule
                stop = (schedule.reduce() if isinstance(schedule, _Adaptive) else True)
                if stop:
                    if self.verbose:
                        print(msg + " Stopping.")
                    return False
                self._no_improvement_count = 0
            if not incremental and self.n_iter_ == self.max_iter:
                warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and "
                              "the optimization hasn't converged yet." % self.max_iter,
                              ConvergenceWarning)
            return True

        try:
            _train(net, X_train, self._targets(Y_train), dict(
                epochs=1 if incremental else self.max_iter, batch_size=batch, schedule=sched,
                shuffle=self.shuffle, sample_weight=sw_train,
                l2=(self.alpha / s, self.alpha / self._report()), resume=resume,
                orders=orders if self.shuffle else None, callbacks=[after_epoch],
                resume_any_batch=True, signed_weights=True, **opt))
        except DivergenceError as exc:
            if not self.early_stopping:
                raise DivergenceError(
                    "Solver produced non-finite parameter weights. The input data may contain "
                    f"large values and need to be preprocessed. ({exc})", exc.history) from None
            # scikit-learn scores the diverged epoch as NaN and keeps the best weights
            self.validation_scores_.append(np.nan)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            net._params[:] = self._best_params

    def _update_validation(self, X_val, y_val, sw_val):
        score = self._score(X_val, y_val, sw_val)
        self.validation_scores_.append(score)
        if self.verbose:
            print("Validation score: %f" % score)
        if score < self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            self._best_params = self._net._params.copy()

    def _update_loss(self):
        if self.loss_curve_[-1] > self.best_loss_ - self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if self.loss_curve_[-1] < self.best_loss_:
            self.best_loss_ = self.loss_curve_[-1]

    def _forward(self, X):
        """The output activation (probabilities, or the regression outputs), (n, n_outputs_)."""
        check_is_fitted(self)
        self._pull()
        return self._outputs(validate_data(self, X, accept_sparse=["csr", "csc"],
                                           dtype=(np.float64, np.float32), reset=False))

    def _outputs(self, X, check_finite=True):
        """_forward for X already validated (the early-stopping split, where scikit-learn scores
        non-finite outputs instead of raising: check_finite=False)."""
        out, _ = self._net._evaluate(self._net._X(X), check_finite=check_finite)
        return out


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """scikit-learn's ``MLPClassifier`` (solvers 'sgd' and 'adam') on fastbp's kernels: softmax
    and cross-entropy for multiclass, a logistic output for binary and multilabel targets. Labels
    may be any values scikit-learn accepts (strings, non-contiguous integers)."""

    def _loss_name(self, n_out):
        return "cross_entropy" if self._label_binarizer.y_type_ == "multiclass" else "bce"

    def _sklearn_loss(self):
        return "log_loss" if self.out_activation_ == "softmax" else "binary_log_loss"

    def _out_activation(self, n_out):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _scale(self):
        # summed over the outputs: multilabel bce is n_outputs x fastbp's mean
        return 1.0 if self.out_activation_ == "softmax" else float(self.n_outputs_)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32),
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if "classes_" not in vars(self) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes "
                                     f"as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(X.dtype)

    def _targets(self, Y):
        """Binarised Y as fastbp's losses take it: class indices for softmax, 0/1 otherwise."""
        return Y.argmax(axis=1) if self._label_binarizer.y_type_ == "multiclass" else Y

    def _decode(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    def _score(self, X, y, sample_weight=None):
        return accuracy_score(y, self._predict_validated(X), sample_weight=sample_weight)

    def _predict_validated(self, X):
        out = self._outputs(X, check_finite=False)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._label_binarizer.inverse_transform(out)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing the optimiser's state; ``classes`` (every label
        that will ever be seen) is required on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._validate_params()
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predicted labels, (n_samples,) (or (n_samples, n_classes) for multilabel)."""
        out = self._forward(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._label_binarizer.inverse_transform(out)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), in the order of classes_."""
        out = self._forward(X)
        if self.n_outputs_ == 1:
            return np.column_stack([1 - out[:, 0], out[:, 0]])
        return out

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        p = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(p, out=p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """scikit-learn's ``MLPRegressor`` on fastbp's kernels, with one or many targets. loss:
    'squared_error' (identity output) or 'poisson' (exp output, half the Poisson deviance)."""

    _parameter_constraints = {**_BaseMLP._parameter_constraints,
                              "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun)
        self.loss = loss

    def _loss_name(self, n_out):
        return "poisson" if self.loss == "poisson" else "mse"

    def _sklearn_loss(self):
        return self.loss

    def _out_activation(self, n_out):
        return "exp" if self.loss == "poisson" else "identity"

    def _scale(self):
        # poisson: summed over the outputs, n_outputs x fastbp's mean (its gradient too);
        # squared error: 0.5 * sum over outputs = (n_outputs / 2) x fastbp's mean
        return float(self.n_outputs_) if self.loss == "poisson" else self.n_outputs_ / 2.0

    def _report(self):
        # squared error: scikit-learn reports half the mean over samples and outputs
        return float(self.n_outputs_) if self.loss == "poisson" else 0.5

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        y = np.asarray(y, dtype=X.dtype)
        return X, y.reshape(len(y), -1)

    def _targets(self, Y):
        return Y

    def _decode(self, Y):
        return Y[:, 0] if Y.shape[1] == 1 else Y

    def _score(self, X, y, sample_weight=None):
        out = self._outputs(X, check_finite=False)
        pred = out[:, 0] if out.shape[1] == 1 else out
        if not np.isfinite(pred).all():
            return np.nan
        return r2_score(y, pred, sample_weight=sample_weight)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing the optimiser's state."""
        if "_net" not in vars(self):
            self._validate_params()
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions, (n_samples,) for one target, (n_samples, n_targets) for several."""
        out = self._forward(X)
        return out[:, 0] if out.shape[1] == 1 else out
