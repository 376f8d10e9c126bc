"""fastbp.sklearn's estimators against scikit-learn's MLP on load_digits (real data, bundled with
scikit-learn): the same hyper-parameters and random_state, so both run the same epochs."""
import warnings


class DigitsMLPClassifier:
    """hidden (64,), 1344 training images, 5 epochs per fit; time per fit and final accuracy."""
    params = (["sklearn", "fastbp"], ["adam", "sgd"])
    param_names = ["impl", "solver"]
    timeout = 300

    def setup(self, impl, solver):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed in this environment")
        from sklearn.model_selection import train_test_split
        if impl == "fastbp":
            from fastbp.sklearn import MLPClassifier
        else:
            from sklearn.neural_network import MLPClassifier
        X, y = load_digits(return_X_y=True)
        self.Xtr, self.Xte, self.ytr, self.yte = train_test_split(
            X / 16, y, train_size=1344, stratify=y, random_state=0)
        self.make = lambda max_iter: MLPClassifier((64,), solver=solver, random_state=0,
                                                   max_iter=max_iter)
        warnings.simplefilter("ignore")  # ConvergenceWarning: few epochs on purpose
        self.make(1).fit(self.Xtr, self.ytr)  # compile / cache load outside the timing

    def time_fit_5_epochs(self, impl, solver):
        self.make(5).fit(self.Xtr, self.ytr)

    def track_accuracy_40_epochs(self, impl, solver):
        return float(self.make(40).fit(self.Xtr, self.ytr).score(self.Xte, self.yte))

    track_accuracy_40_epochs.unit = "accuracy"
