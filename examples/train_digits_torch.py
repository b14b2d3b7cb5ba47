"""A small CNN with BatchNorm2d on scikit-learn's digits: torch.nn vs cnorm.torch.

The same model (same initial weights) is trained twice in one process, batch for
batch on the same data: once as built with torch.nn, once after
``cnorm.torch.convert(copy.deepcopy(model))``, which swaps its BatchNorm2d layers for
cnorm's drop-in ones (same parameters; forward and backward on the cnorm kernels).
The two runs take turns on every batch, so a busy machine slows both alike. The loss
curves agree to float32 rounding (the max difference is printed); the figure shows
both curves, their difference, and the time of one training step of each.

    (N, 1, 8, 8) -> Conv(1, 32) -> BN -> ReLU -> Conv(32, 64) -> BN -> ReLU -> MaxPool(2)
                 -> Conv(64, 64) -> BN -> ReLU -> global average pool -> Linear(64, 10)

Run:  python examples/train_digits_torch.py [--epochs 8] [--batch 128] [--out DIR]
      (writes train_digits_torch.png; needs torch and scikit-learn)
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
from _common import output_path, require, save_figure, training_parser

require("torch")  # a clear hint instead of a bare ModuleNotFoundError
import torch  # noqa: E402
from torch import nn  # noqa: E402

import cnorm  # noqa: E402
import cnorm.torch  # noqa: E402
from cnorm.benchmarks.torch_cases import make_cnn  # noqa: E402  (the bench's training-step case)


def load_data(seed):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.from_numpy((X / 16.0 - 0.5).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(y)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(X)))
    n_test = len(X) // 5
    return X[perm[n_test:]], y[perm[n_test:]], X[perm[:n_test]], y[perm[:n_test]]


def train(epochs=8, batch=128, lr=0.05, seed=0, max_steps=None, log=print):
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = load_data(seed)
    models = {"torch.nn": make_cnn()}
    models["cnorm.torch"] = cnorm.torch.convert(copy.deepcopy(models["torch.nn"]))
    opts = {k: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for k, m in models.items()}
    loss_fn = nn.CrossEntropyLoss()
    hist = {k: {"loss": [], "time": [], "test_acc": []} for k in models}
    rng = np.random.default_rng(seed)
    step = 0
    for epoch in range(epochs):
        for m in models.values():
            m.train()
        order = torch.from_numpy(rng.permutation(len(Xtr)))
        for i in range(0, len(order) - batch + 1, batch):  # full batches only
            xb, yb = Xtr[order[i : i + batch]], ytr[order[i : i + batch]]
            for name in (
                ("torch.nn", "cnorm.torch") if step % 2 == 0 else ("cnorm.torch", "torch.nn")
            ):  # alternate who goes first
                t0 = time.perf_counter()
                opts[name].zero_grad(set_to_none=True)
                loss = loss_fn(models[name](xb), yb)
                loss.backward()
                opts[name].step()
                hist[name]["time"].append(time.perf_counter() - t0)
                hist[name]["loss"].append(loss.item())
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        with torch.no_grad():
            for name, m in models.items():
                m.eval()
                acc = (m(Xte).argmax(1) == yte).float().mean().item()
                hist[name]["test_acc"].append(acc)
        diff = max(abs(a - b) for a, b in zip(hist["torch.nn"]["loss"], hist["cnorm.torch"]["loss"]))
        log(
            f"epoch {epoch + 1:2d}  loss {hist['torch.nn']['loss'][-1]:.4f} (torch.nn) "
            f"{hist['cnorm.torch']['loss'][-1]:.4f} (cnorm.torch)  test acc "
            f"{hist['torch.nn']['test_acc'][-1]:.3f} / {hist['cnorm.torch']['test_acc'][-1]:.3f}"
            f"  max |loss diff| so far {diff:.2e}"
        )
        if max_steps is not None and step >= max_steps:
            break
    return hist


def plot(hist, path, batch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = hist["torch.nn"], hist["cnorm.torch"]
    steps = np.arange(1, len(a["loss"]) + 1)
    diff = np.abs(np.array(a["loss"]) - np.array(b["loss"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.6, 1]})
    ax1.plot(steps, a["loss"], lw=2.5, color="tab:blue", label="torch.nn")
    ax1.plot(steps, b["loss"], lw=1, color="tab:orange", ls="--", label="cnorm.torch")
    ax1.set_yscale("log")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("cross-entropy (batch)")
    ax1.set_title(f"same loss curve: max |difference| {diff.max():.1e}")
    ax1b = ax1.twinx()
    ax1b.plot(
        steps,
        np.where(diff > 0, diff, np.nan),
        color="tab:gray",
        lw=0.8,
        alpha=0.7,
        marker=".",
        ms=3,
        label="|difference| (gaps: identical)",
    )
    ax1b.set_yscale("log")
    ax1b.set_ylabel("|torch.nn - cnorm.torch|", color="tab:gray")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="lower left")
    ta, tb = np.array(a["time"]) * 1e3, np.array(b["time"]) * 1e3
    ma, mb = np.median(ta), np.median(tb)
    ax2.boxplot([ta, tb], showfliers=False, widths=0.5)
    ax2.scatter(
        np.r_[np.full(len(ta), 1.0), np.full(len(tb), 2.0)]
        + np.random.default_rng(0).uniform(-0.15, 0.15, len(ta) + len(tb)),
        np.r_[ta, tb],
        s=4,
        alpha=0.3,
        color="black",
    )
    ax2.set_xticks([1, 2], [f"torch.nn\nmedian {ma:.1f} ms", f"cnorm.torch\nmedian {mb:.1f} ms"])
    ax2.set_ylabel("ms per training step (fwd + bwd + SGD)")
    ax2.set_ylim(0, np.percentile(np.r_[ta, tb], 98) * 1.15)
    ax2.set_title(f"step time (batch {batch}): ratio {mb / ma:.2f}")
    fig.suptitle(
        f"CNN with 3 BatchNorm2d on sklearn digits, {torch.get_num_threads()} "
        f"thread(s); final test accuracy {a['test_acc'][-1]:.3f} / {b['test_acc'][-1]:.3f}"
    )
    save_figure(fig, path)


def main(argv=None):
    p = training_parser(
        "torch.nn vs cnorm.torch CNN on digits", "one epoch of at most 6 steps", epochs=8, batch=128
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for torch and cnorm (default: torch's default, one per "
        "core; on a busy machine fewer threads are faster)",
    )
    args = p.parse_args(argv)
    require("sklearn", "matplotlib")
    if args.threads:
        torch.set_num_threads(args.threads)
        cnorm.set_num_threads(args.threads)
    hist = train(
        1 if args.quick else args.epochs, args.batch, args.lr, args.seed, max_steps=6 if args.quick else None
    )
    a, b = hist["torch.nn"], hist["cnorm.torch"]
    diff = max(abs(x - y) for x, y in zip(a["loss"], b["loss"]))
    ma, mb = statistics.median(a["time"]) * 1e3, statistics.median(b["time"]) * 1e3
    print(f"max |loss difference| over {len(a['loss'])} steps: {diff:.3e}")
    print(f"median step time: torch.nn {ma:.2f} ms, cnorm.torch {mb:.2f} ms (ratio {mb / ma:.2f})")
    path = output_path(args.out, "train_digits_torch.png")
    plot(hist, path, args.batch)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
