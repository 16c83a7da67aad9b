"""The sweep's results table and label-fraction plot.

Protocol: for every (method, label fraction, seed), the trial with the best validation
metric (over lrs and samples) is selected and its test metric is reported; the table then
gives mean ± std over seeds per (method, fraction). The plot draws the test metric against
the label fraction, one line per method, error bars = std over seeds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def select_best_lr(trials: pd.DataFrame, val_metric: str) -> pd.DataFrame:
    """One row per (method, fraction, seed): the finished trial with the highest ``val_metric``."""
    done = trials.dropna(subset=[val_metric])
    if done.empty:
        return done
    idx = done.groupby(["method", "label_fraction", "seed"])[val_metric].idxmax()
    return done.loc[idx].reset_index(drop=True)


def summarise(trials: pd.DataFrame, val_metric: str, test_metric: str) -> pd.DataFrame:
    """Mean ± std over seeds of the selected trials, per (method, label fraction)."""
    best = select_best_lr(trials, val_metric)
    if best.empty:
        return pd.DataFrame(columns=["label fraction", "method"])
    grouped = best.groupby(["label_fraction", "method"])
    out = grouped.agg(
        test_mean=(test_metric, "mean"),
        test_std=(test_metric, lambda s: float(s.std(ddof=0))),
        val_mean=(val_metric, "mean"),
        seeds=("seed", "nunique"),
        lr=("lr", lambda s: ",".join(f"{v:.2g}" for v in sorted(set(s)))),
    ).reset_index()
    return out.rename(columns={"label_fraction": "label fraction"}).sort_values(["label fraction", "method"])


def markdown_table(summary: pd.DataFrame, test_metric: str) -> str:
    """The summary as a Markdown table headed ``label fraction``."""
    from tabulate import tabulate

    name = test_metric.split("/", 1)[-1]
    rows = [
        [
            f"{row['label fraction']:.0%}" if row["label fraction"] >= 0.01 else f"{row['label fraction']:.1%}",
            row["method"],
            f"{row['test_mean']:.4f} ± {row['test_std']:.4f}",
            f"{row['val_mean']:.4f}",
            int(row["seeds"]),
            row["lr"],
        ]
        for _, row in summary.iterrows()
    ]
    headers = ["label fraction", "method", f"test {name} (mean ± std)", f"val {name}", "seeds", "lr"]
    return tabulate(rows, headers=headers, tablefmt="github")


def plot_label_fractions(summary: pd.DataFrame, test_metric: str, out: str | Path, title: str = "") -> Path:
    """Test metric vs label fraction, one line per method with std error bars; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, part in summary.groupby("method"):
        part = part.sort_values("label fraction")
        ax.errorbar(
            part["label fraction"] * 100, part["test_mean"], yerr=part["test_std"], marker="o", capsize=3, label=method
        )
    ax.set_xscale("log")
    ax.set_xlabel("label fraction (%)")
    ax.set_ylabel(f"test {test_metric.split('/', 1)[-1]}")
    ax.set_title(title or "label efficiency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
