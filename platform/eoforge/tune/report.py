"""The sweep's results table and label-fraction plot.

Protocol: for every (arm, label fraction, seed), the trial with the best validation metric
(over lrs and samples) is selected and its test metric is reported; the table then gives
mean ± std over seeds per (arm, fraction). An arm is a ``method`` of the sweep (backbone
source + mode); when the trials table has an ``objective`` column (the pretraining objective
of the backbone), arms are (objective, method) pairs and a missing objective (e.g. scratch)
is its own group. Without that column there is one objective and nothing changes.

The plot draws the test metric against the label fraction on a log axis, one line per arm
with error bars = std over seeds, and the scratch arm's value at 100 % labels as a dashed
reference line.

Columns of the trials table (input of :func:`summarise`):
    method: the sweep's arm name (a key of ``search.methods``).
    objective: optional; the backbone's pretraining objective, empty for scratch.
    label_fraction: share of the train split's labels the trial trained on, in (0, 1].
    seed: label-subset and training seed.
    lr: learning rate of the trial.
    <val metric>, <test metric>: e.g. ``val/aa`` and ``test/aa``; NaN when unfinished.

Columns of the summary (output of :func:`summarise`, the ``label_fractions.csv`` artifact):
    label fraction: as ``label_fraction`` above.
    objective: only when the trials had it; as above.
    method: as above.
    test_mean, test_std: mean and population std (ddof=0) over seeds of the test metric of
        each seed's best-on-validation trial.
    val_mean: mean over seeds of those trials' validation metric.
    seeds: number of seeds with a finished trial.
    lr: the lrs those trials used, comma-separated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OBJECTIVE = "objective"
# pretty names of the metrics the tasks report (the part after "val/" / "test/")
METRIC_NAMES = {"aa": "AA", "oa": "OA", "map": "mAP", "miou": "mIoU", "f1": "F1", "acc": "accuracy"}
# the dashed line is reserved for the scratch reference; objectives get these styles
_OBJECTIVE_STYLES = [("o", "-"), ("s", "-."), ("^", ":"), ("D", (0, (5, 1, 1, 1, 1, 1))), ("v", (0, (1, 2)))]
_SCRATCH_COLOUR = "0.3"
#: tab20's dark shades, then its light ones, without its greys (14, 15: scratch is grey): 18 colours.
_TAB20_ORDER = [i for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]


def _arm_keys(frame: pd.DataFrame) -> list[str]:
    """The columns that name an arm: ``[objective, method]`` when the frame has an objective column."""
    return [OBJECTIVE, "method"] if OBJECTIVE in frame.columns else ["method"]


def select_best_lr(trials: pd.DataFrame, val_metric: str) -> pd.DataFrame:
    """One row per (arm, fraction, seed): the finished trial with the highest ``val_metric``."""
    done = trials.dropna(subset=[val_metric])
    if done.empty:
        return done
    keys = [*_arm_keys(done), "label_fraction", "seed"]
    idx = done.groupby(keys, dropna=False)[val_metric].idxmax()
    return done.loc[idx].reset_index(drop=True)


def summarise(trials: pd.DataFrame, val_metric: str, test_metric: str) -> pd.DataFrame:
    """Mean ± std over seeds of the selected trials, per (arm, label fraction); columns in the module doc."""
    best = select_best_lr(trials, val_metric)
    if best.empty:
        return pd.DataFrame(columns=["label fraction", *_arm_keys(trials)])
    keys = ["label_fraction", *_arm_keys(best)]
    grouped = best.groupby(keys, dropna=False)
    out = grouped.agg(
        test_mean=(test_metric, "mean"),
        test_std=(test_metric, lambda s: float(s.std(ddof=0))),
        val_mean=(val_metric, "mean"),
        seeds=("seed", "nunique"),
        lr=("lr", lambda s: ",".join(f"{v:.2g}" for v in sorted(set(s)))),
    ).reset_index()
    out = out.rename(columns={"label_fraction": "label fraction"})
    return out.sort_values(["label fraction", *keys[1:]]).reset_index(drop=True)


def _fraction_text(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.01 else f"{fraction:.1%}"


def markdown_table(summary: pd.DataFrame, test_metric: str) -> str:
    """The summary as a Markdown table headed ``label fraction`` (an ``objective`` column when present)."""
    from tabulate import tabulate

    name = test_metric.split("/", 1)[-1]
    has_objective = OBJECTIVE in summary.columns
    rows = []
    for _, row in summary.iterrows():
        objective = [row[OBJECTIVE] if isinstance(row[OBJECTIVE], str) else "-"] if has_objective else []
        rows.append(
            [
                _fraction_text(row["label fraction"]),
                *objective,
                row["method"],
                f"{row['test_mean']:.4f} ± {row['test_std']:.4f}",
                f"{row['val_mean']:.4f}",
                int(row["seeds"]),
                row["lr"],
            ]
        )
    headers = [
        "label fraction",
        *([OBJECTIVE] if has_objective else []),
        "method",
        f"test {name} (mean ± std)",
        f"val {name}",
        "seeds",
        "lr",
    ]
    return tabulate(rows, headers=headers, tablefmt="github")


def metric_label(test_metric: str) -> str:
    """``test/aa`` -> ``test AA``: the split and the metric's usual name, for axis labels."""
    split, _, name = test_metric.rpartition("/")
    pretty = METRIC_NAMES.get(name.lower(), name.replace("_", " "))
    return f"{split or 'test'} {pretty}"


def percent_text(fraction: float) -> str:
    """A label fraction as a tick label: 0.01 -> ``1 %``, 0.5 -> ``50 %``, 0.005 -> ``0.5 %``."""
    return f"{fraction * 100:.3g} %"


def _seed_text(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    n = f"{low}" if low == high else f"{low}–{high}"
    return f"{n} seed" if n == "1" else f"{n} seeds"


def _arm_label(objective: object, method: str) -> str:
    return f"{objective} · {method}" if isinstance(objective, str) and objective else str(method)


def label_fraction_figure(
    summary: pd.DataFrame,
    test_metric: str,
    title: str = "",
    *,
    task: str = "",
    plan: str = "",
    plan_hash: str = "",
    scratch_arm: str | None = "scratch",
    dodge: float = 0.012,
) -> Figure:
    """The label-fraction plot as a matplotlib Figure (Agg canvas, 7 x 4.5 in at 150 dpi).

    Args:
        summary: the output of :func:`summarise` (``label fraction``, ``method``, optional
            ``objective``, ``test_mean``, ``test_std``, ``seeds``).
        test_metric: e.g. ``test/aa``; names the y axis (``test AA``).
        title: the first title line, e.g. the sweep's run name (default ``label efficiency``).
        task: the task kind, shown in the title.
        plan: the plan's name, shown in the title.
        plan_hash: the plan's hash, shown shortened (8 characters) in the title.
        scratch_arm: the method trained from scratch; its mean at 100 % labels is drawn as a
            dashed horizontal reference (over objectives when it has several). ``None``: no line.
        dodge: horizontal offset between lines at the same fraction, in decades of the log
            axis, so error bars do not hide each other (0 draws them on the exact fraction).

    Returns:
        The Figure; its single Axes has one errorbar container per (objective, method) line and
        the reference line (linestyle ``--``) when the scratch arm has a 100 % point.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    fig = Figure(figsize=(7, 4.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y_name = metric_label(test_metric)

    data = summary.dropna(subset=["test_mean"]) if "test_mean" in summary.columns else summary.iloc[0:0]
    keys = _arm_keys(data)
    details = [f"task: {task}"] if task else []
    if plan or plan_hash:
        details.append("plan: " + " ".join(p for p in (plan, f"({plan_hash[:8]})" if plan_hash else "") if p))
    if not data.empty:
        details.append(_seed_text(data["seeds"]))
    ax.set_title("\n".join([title or "label efficiency", " · ".join(details)]).strip(), fontsize=10)
    ax.set_xlabel("label fraction (share of the train split's labels, log scale)")
    ax.set_ylabel(f"{y_name} (mean ± std over seeds)")
    ax.set_xscale("log")
    ax.grid(True, which="major", color="0.85", linewidth=0.6)
    ax.set_axisbelow(True)
    if data.empty:
        ax.text(0.5, 0.5, "no finished trials", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xlim(0.005, 1.5)
        ax.xaxis.set_major_locator(FixedLocator([0.01, 0.1, 1.0]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: percent_text(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        return fig

    lines = list(data.groupby(keys, dropna=False, sort=True))
    objectives = list(dict.fromkeys(k[0] if len(keys) == 2 else None for k, _ in lines))
    # per objective, the pretrained arms first and scratch last: the legend reads top-down like that
    lines.sort(key=lambda kp: (objectives.index(kp[0][0] if len(keys) == 2 else None), kp[0][-1] == scratch_arm))
    named = [o for o in objectives if isinstance(o, str) and o]
    # a colour per pretrained line, grey for scratch; marker and line style per objective
    pretrained = [k for k, _ in lines if k[-1] != scratch_arm]
    # the default cycle has 10 colours; an objectives sweep (6 objectives x probe and kNN) has more lines
    palette: list[Any] = [f"C{i}" for i in range(10)]
    if len(pretrained) > 10:
        from matplotlib import colormaps

        palette = [colormaps["tab20"](i) for i in _TAB20_ORDER]
    colour = {k: palette[i % len(palette)] for i, k in enumerate(pretrained)}
    seed_counts = {k: part["seeds"] for k, part in lines}
    per_line_n = data["seeds"].nunique() > 1  # title shows a range then; the legend says which line has what

    lows, highs = [], []
    for i, (key, part) in enumerate(lines):
        objective, method = (key[0], key[1]) if len(keys) == 2 else (None, key[0])
        part = part.sort_values("label fraction")
        style = named.index(objective) if objective in named else 0
        marker, linestyle = _OBJECTIVE_STYLES[style % len(_OBJECTIVE_STYLES)]
        shift = 10 ** ((i - (len(lines) - 1) / 2) * dodge)
        label = _arm_label(objective, method)
        if per_line_n:
            label += f" (n = {_seed_text(seed_counts[key]).split()[0]})"
        x = part["label fraction"].to_numpy(float) * shift
        mean = part["test_mean"].to_numpy(float)
        std = part["test_std"].fillna(0.0).to_numpy(float)
        ax.errorbar(
            x,
            mean,
            yerr=std,
            marker=marker,
            markersize=5,
            linestyle=linestyle,
            linewidth=1.5,
            color=colour.get(key, _SCRATCH_COLOUR),
            capsize=3,
            elinewidth=1,
            label=label,
        )
        lows.append(float((mean - std).min()))
        highs.append(float((mean + std).max()))

    if scratch_arm is not None:
        full = data[(data["method"] == scratch_arm) & (data["label fraction"] == 1.0)]
        if not full.empty:
            ref = float(full["test_mean"].mean())
            ax.axhline(ref, color=_SCRATCH_COLOUR, linestyle="--", linewidth=1, label=f"{scratch_arm} @ 100 %")
            lows.append(ref)
            highs.append(ref)

    low, high = min(lows), max(highs)
    span = max(high - low, 0.05)
    pad = 0.08 * span
    bottom, top = low - pad, high + pad
    if low >= 0:
        bottom = max(bottom, 0.0)
    if high <= 1 < top:
        top = 1 + min(pad, 0.02)
    ax.set_ylim(bottom, top)

    fractions = sorted(set(data["label fraction"].astype(float)))
    lo_x, hi_x = fractions[0], fractions[-1]
    decades = [10.0**e for e in range(math.floor(math.log10(lo_x)), math.ceil(math.log10(hi_x)) + 1)]
    ticks = sorted({*fractions, *(d for d in decades if lo_x <= d <= hi_x)})
    margin = 10 ** (max(0.12, (len(lines) / 2 + 1) * dodge))
    ax.set_xlim(lo_x / margin, hi_x * margin)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: percent_text(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: isinstance(handles[i], Line2D))  # the reference last
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        fontsize=8,
        borderaxespad=0,
    )
    return fig


def plot_label_fractions(
    summary: pd.DataFrame,
    test_metric: str,
    out: str | Path,
    title: str = "",
    *,
    task: str = "",
    plan: str = "",
    plan_hash: str = "",
    scratch_arm: str | None = "scratch",
) -> Path:
    """Write :func:`label_fraction_figure` as a PNG (1050 x 675 px) at ``out``; returns the path."""
    fig = label_fraction_figure(
        summary, test_metric, title, task=task, plan=plan, plan_hash=plan_hash, scratch_arm=scratch_arm
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
