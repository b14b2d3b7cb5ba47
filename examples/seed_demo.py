"""What BatchNorm does to the features of a linear layer (NumPy + cnorm, fixed seed).

100 random samples go through a Linear(100, 50) layer (a NumPy matmul with weights
drawn from a seeded generator, as torch's default init: U(-1/sqrt(100), 1/sqrt(100)))
and then through cnorm.BatchNorm1d(50) in training mode. The figure shows the
distribution of all values and the variance of each of the 50 features before and
after the normalization: before, every feature has its own scale and offset; after,
each has mean 0 and (biased) variance 1 (up to eps).

Run:  python examples/seed_demo.py [--out DIR] [--seed N]     (writes seed_demo.png)
"""

from __future__ import annotations

import numpy as np
from _common import output_path, parser, require, save_figure

import cnorm


def compute(seed: int = 0, n_samples: int = 100, n_in: int = 100, n_out: int = 50):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, n_in)).astype(np.float32)
    bound = 1.0 / np.sqrt(n_in)
    weight = rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32)
    bias = rng.uniform(-bound, bound, n_out).astype(np.float32)
    h = x @ weight.T + bias  # Linear(100, 50)
    bn = cnorm.BatchNorm1d(n_out)  # training mode: batch statistics
    y = bn(h)
    return h, y, bn


def plot(h, y, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    bins = np.linspace(min(h.min(), y.min()), max(h.max(), y.max()), 60)
    for ax, data, title, color in (
        (axes[0, 0], h, "before BatchNorm (Linear output)", "tab:blue"),
        (axes[0, 1], y, "after cnorm.BatchNorm1d", "tab:orange"),
    ):
        ax.hist(data.ravel(), bins=bins, color=color, alpha=0.85)
        ax.set_title(f"{title}\nmean {data.mean():+.3f}, std {data.std():.3f}")
        ax.set_xlabel("value")
        ax.set_ylabel("count (100 samples x 50 features)")
    feats = np.arange(h.shape[1])
    for ax, data, title, color in (
        (axes[1, 0], h, "per-feature variance before", "tab:blue"),
        (axes[1, 1], y, "per-feature variance after", "tab:orange"),
    ):
        ax.bar(feats, data.var(axis=0), color=color)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_title(title)
        ax.set_xlabel("feature")
        ax.set_ylabel("variance over the batch")
    top = max(h.var(axis=0).max(), 1.0) * 1.15
    axes[1, 0].set_ylim(0, top)
    axes[1, 1].set_ylim(0, top)
    fig.suptitle("Linear(100, 50) then BatchNorm1d(50) on 100 random samples (seeded)")
    save_figure(fig, path)


def main(argv=None):
    args = parser("BatchNorm before/after histograms", "(no effect: this demo is quick)").parse_args(argv)
    require("matplotlib")
    h, y, bn = compute(args.seed)
    print(
        f"before: feature variances {h.var(axis=0).min():.3f} .. {h.var(axis=0).max():.3f}, "
        f"means {h.mean(axis=0).min():+.3f} .. {h.mean(axis=0).max():+.3f}"
    )
    print(
        f"after : feature variances {y.var(axis=0).min():.4f} .. {y.var(axis=0).max():.4f}, "
        f"|means| <= {np.abs(y.mean(axis=0)).max():.1e}"
    )
    print(f"running_var after one step (momentum 0.1): {bn.running_var[:3]} ...")
    path = output_path(args.out, "seed_demo.png")
    plot(h, y, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
