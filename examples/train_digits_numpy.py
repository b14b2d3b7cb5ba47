"""Train an MLP with cnorm.BatchNorm1d on scikit-learn's digits, in pure NumPy.

Everything but the normalization is written out by hand: Linear layers (He-uniform
init), ReLU, softmax cross-entropy, plain SGD with momentum. The BatchNorm layers are
cnorm's: ``bn(x)`` in training mode uses the batch statistics and updates the running
ones, ``bn.backward(dy)`` returns dx and accumulates ``weight_grad`` / ``bias_grad``;
``bn.eval()`` switches to the running statistics for the test set.

    64 -> Linear(64, 128) -> BatchNorm1d(128) -> ReLU
       -> Linear(128, 64) -> BatchNorm1d(64)  -> ReLU -> Linear(64, 10)

Run:  python examples/train_digits_numpy.py [--epochs 30] [--out DIR]
      (writes train_digits_numpy.png: loss and accuracy curves; needs scikit-learn)
"""

from __future__ import annotations

import os
import time

# The matrices here are tiny (64 x 128): one BLAS thread is fastest, and a multi-threaded
# OpenBLAS pool busy-waiting next to other work on a small or shared machine can make
# each matmul 10-100x slower. Set before NumPy loads OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _common import output_path, require, save_figure, training_parser  # noqa: E402

import cnorm  # noqa: E402


class Linear:
    def __init__(self, n_in, n_out, rng):
        bound = np.sqrt(6.0 / n_in)  # He-uniform, for ReLU nets
        self.weight = rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32)
        self.bias = np.zeros(n_out, np.float32)

    def forward(self, x):
        self.x = x
        return x @ self.weight + self.bias

    def backward(self, dy):
        self.weight_grad = self.x.T @ dy
        self.bias_grad = dy.sum(axis=0)
        return dy @ self.weight.T

    def params(self):
        return [(self, "weight"), (self, "bias")]


class ReLU:
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask

    def params(self):
        return []


class BN:
    """Adapter: a cnorm.BatchNorm1d as one layer of the list below."""

    def __init__(self, n):
        self.bn = cnorm.BatchNorm1d(n)

    def forward(self, x):
        return self.bn(x)

    def backward(self, dy):
        return self.bn.backward(dy)

    def params(self):
        return [(self.bn, "weight"), (self.bn, "bias")]


def softmax_cross_entropy(logits, labels):
    """Mean loss and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = labels.shape[0]
    loss = -logp[np.arange(n), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1
    return float(loss), (grad / n).astype(np.float32)


def make_model(rng):
    return [Linear(64, 128, rng), BN(128), ReLU(), Linear(128, 64, rng), BN(64), ReLU(), Linear(64, 10, rng)]


def forward(model, x):
    for layer in model:
        x = layer.forward(x)
    return x


def set_training(model, mode):
    for layer in model:
        if isinstance(layer, BN):
            layer.bn.train(mode)


def load_data(seed):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(X))
    n_test = len(X) // 5
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def train(epochs=30, batch=64, lr=0.05, momentum=0.9, seed=0, log=print):
    rng = np.random.default_rng(seed)
    Xtr, ytr, Xte, yte = load_data(seed)
    model = make_model(rng)
    velocity = {}
    hist = {"loss": [], "train_acc": [], "test_acc": [], "test_loss": []}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        set_training(model, True)
        order = rng.permutation(len(Xtr))
        losses, correct = [], 0
        for i in range(0, len(order) - 1, batch):
            idx = order[i : i + batch]
            if len(idx) < 2:  # BatchNorm needs 2 samples
                continue
            logits = forward(model, Xtr[idx])
            loss, grad = softmax_cross_entropy(logits, ytr[idx])
            losses.append(loss)
            correct += int((logits.argmax(axis=1) == ytr[idx]).sum())
            for layer in reversed(model):
                grad = layer.backward(grad)
            for layer in model:  # SGD with momentum
                for owner, name in layer.params():
                    g = getattr(owner, name + "_grad")
                    v = velocity.setdefault((id(owner), name), np.zeros_like(g))
                    v *= momentum
                    v += g
                    getattr(owner, name)[...] -= lr * v
                if isinstance(layer, BN):
                    layer.bn.zero_grad()  # cnorm accumulates, like torch
        set_training(model, False)  # running statistics
        logits = forward(model, Xte)
        test_loss, _ = softmax_cross_entropy(logits, yte)
        hist["loss"].append(float(np.mean(losses)))
        hist["train_acc"].append(correct / len(Xtr))
        hist["test_loss"].append(test_loss)
        hist["test_acc"].append(float((logits.argmax(axis=1) == yte).mean()))
        log(
            f"epoch {epoch + 1:3d}  loss {hist['loss'][-1]:.4f}  train acc "
            f"{hist['train_acc'][-1]:.3f}  test loss {test_loss:.4f}  test acc "
            f"{hist['test_acc'][-1]:.3f}"
        )
    hist["seconds"] = time.perf_counter() - t0
    return hist


def plot(hist, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = np.arange(1, len(hist["loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, hist["loss"], marker="o", ms=3, label="train (mean over the epoch)")
    a.plot(ep, hist["test_loss"], marker="o", ms=3, label="test (eval mode)")
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.set_title("loss")
    a.legend()
    b.plot(ep, hist["train_acc"], marker="o", ms=3, label="train")
    b.plot(ep, hist["test_acc"], marker="o", ms=3, label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.set_ylim(min(0.8, min(hist["train_acc"] + hist["test_acc"])) - 0.02, 1.005)
    b.set_title(f"accuracy (final test: {hist['test_acc'][-1]:.3f})")
    b.legend()
    b.grid(alpha=0.3)
    fig.suptitle(
        f"NumPy MLP with cnorm.BatchNorm1d on sklearn digits ({hist['seconds']:.1f} s for {len(ep)} epochs)"
    )
    save_figure(fig, path)


def main(argv=None):
    p = training_parser("NumPy MLP + cnorm.BatchNorm1d on digits", "3 epochs", epochs=30, batch=64)
    args = p.parse_args(argv)
    require("sklearn", "matplotlib")
    hist = train(3 if args.quick else args.epochs, args.batch, args.lr, seed=args.seed)
    path = output_path(args.out, "train_digits_numpy.png")
    plot(hist, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
