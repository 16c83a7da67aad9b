"""The sweep's label-fraction plot: a real PNG, and a figure a person can read (log x, % ticks, reference)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
from eoforge.tune.report import (
    label_fraction_figure,
    markdown_table,
    percent_text,
    plot_label_fractions,
    summarise,
)

FRACTIONS = (0.01, 0.1, 1.0)
SCRATCH_FULL = 0.71  # scratch's mean test AA at 100 % labels, both objectives


def _summary(objective: bool = True) -> pd.DataFrame:
    """Two arms x two objectives x three fractions, 3 seeds, made-up means and stds."""
    rows = []
    for obj_i, obj in enumerate(("dual_simclr", "mae") if objective else (None,)):
        for method in ("ssl", "scratch"):
            for frac_i, frac in enumerate(FRACTIONS):
                mean = (0.45 if method == "ssl" else 0.30) + 0.12 * frac_i + 0.03 * obj_i
                if method == "scratch" and frac == 1.0:
                    mean = SCRATCH_FULL
                row = {"label fraction": frac, "method": method, "test_mean": mean, "test_std": 0.01 + 0.01 * frac_i}
                row |= {"val_mean": mean + 0.01, "seeds": 3, "lr": "0.003"}
                if obj is not None:
                    row["objective"] = obj
                rows.append(row)
    return pd.DataFrame(rows)


def test_png_is_written_and_readable(tmp_path: Path) -> None:
    from PIL import Image

    out = plot_label_fractions(
        _summary(), "test/aa", tmp_path / "res" / "label_fractions.png", "demo", task="classification", plan="p"
    )
    assert out == tmp_path / "res" / "label_fractions.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (1050, 675)  # 7 x 4.5 in at 150 dpi
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something was drawn, not a blank canvas

    import matplotlib.image as mpimg

    assert mpimg.imread(out).shape[:2] == (675, 1050)


def test_figure_content() -> None:
    summary = _summary()
    fig = label_fraction_figure(
        summary, "test/aa", "demo-label-fractions", task="classification", plan="demo", plan_hash="0123456789abcdef"
    )
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    # one errorbar line per (objective, arm), labelled "objective · arm"
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 * 2
    _, labels = ax.get_legend_handles_labels()
    assert {"dual_simclr · ssl", "dual_simclr · scratch", "mae · ssl", "mae · scratch"} <= set(labels)
    for bar in bars:
        line = bar.lines[0]
        assert line.get_marker() not in (None, "None", "")
        assert bar.has_yerr
        np.testing.assert_allclose(line.get_xdata(), FRACTIONS, rtol=0.05)  # dodged a little, not moved
    # the scratch reference: a dashed horizontal line at scratch's 100 % value, labelled
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1
    np.testing.assert_allclose(dashed[0].get_ydata(), SCRATCH_FULL)
    assert dashed[0].get_label() == "scratch @ 100 %"
    assert "scratch @ 100 %" in labels
    # the legend sits right of the axes, off the data
    legend = ax.get_legend()
    assert legend is not None
    shown = [t.get_text() for t in legend.get_texts()]
    assert shown == ["dual_simclr · ssl", "dual_simclr · scratch", "mae · ssl", "mae · scratch", "scratch @ 100 %"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    # axis labels, ticks in percent, title names plan, task and seeds
    assert ax.get_ylabel().startswith("test AA")
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["1 %", "10 %", "100 %"]
    title = ax.get_title()
    assert "classification" in title and "demo" in title and "01234567" in title and "3 seeds" in title
    # y limits hold every error bar and stay inside [0, 1]-ish
    bottom, top = ax.get_ylim()
    assert 0 <= bottom < (summary["test_mean"] - summary["test_std"]).min()
    assert (summary["test_mean"] + summary["test_std"]).max() < top <= 1.02


def test_without_objective_column_and_without_scratch() -> None:
    summary = _summary(objective=False)
    fig = label_fraction_figure(summary, "test/miou", "run: segmentation")
    (ax,) = fig.axes
    _, labels = ax.get_legend_handles_labels()
    assert set(labels) == {"ssl", "scratch", "scratch @ 100 %"}
    assert ax.get_ylabel().startswith("test mIoU")
    assert "run: segmentation" in ax.get_title() and "3 seeds" in ax.get_title()

    no_full = summary[~((summary["method"] == "scratch") & (summary["label fraction"] == 1.0))]
    ax = label_fraction_figure(no_full, "test/aa").axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    ax = label_fraction_figure(summary[summary["method"] == "ssl"], "test/aa").axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]


def test_unequal_seed_counts_show_in_legend() -> None:
    summary = _summary(objective=False)
    summary.loc[summary["method"] == "scratch", "seeds"] = 2
    ax = label_fraction_figure(summary, "test/aa").axes[0]
    assert "2–3 seeds" in ax.get_title()
    _, labels = ax.get_legend_handles_labels()
    assert {"ssl (n = 3)", "scratch (n = 2)"} <= set(labels)


def test_empty_summary_still_writes_a_png(tmp_path: Path) -> None:
    out = plot_label_fractions(pd.DataFrame(columns=["label fraction", "method"]), "test/aa", tmp_path / "e.png")
    assert out.stat().st_size > 0


@pytest.mark.parametrize(("fraction", "text"), [(0.01, "1 %"), (0.1, "10 %"), (1.0, "100 %"), (0.005, "0.5 %")])
def test_percent_ticks(fraction: float, text: str) -> None:
    assert percent_text(fraction) == text


def _trials(objective: bool) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for obj in ("dual_simclr", "mae") if objective else (None,):
        for method in ("ssl", "scratch"):
            for frac in (0.1, 1.0):
                for seed in (0, 1, 2):
                    for lr in (1e-3, 3e-3):
                        val = float(rng.uniform(0.3, 0.9))
                        row = {"method": method, "label_fraction": frac, "seed": seed, "lr": lr}
                        row |= {"val/aa": val, "test/aa": val - 0.02}
                        if obj is not None:
                            row["objective"] = None if method == "scratch" else obj
                        rows.append(row)
    return pd.DataFrame(rows)


def test_summary_table_without_objective_is_unchanged() -> None:
    summary = summarise(_trials(objective=False), "val/aa", "test/aa")
    assert list(summary.columns) == ["label fraction", "method", "test_mean", "test_std", "val_mean", "seeds", "lr"]
    assert len(summary) == 2 * 2 and (summary["seeds"] == 3).all()
    header = markdown_table(summary, "test/aa").splitlines()[0]
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "label fraction",
        "method",
        "test aa (mean ± std)",
        "val aa",
        "seeds",
        "lr",
    ]


def test_summary_keeps_objectives_apart() -> None:
    # scratch has no objective: one scratch group, one per objective for ssl
    summary = summarise(_trials(objective=True), "val/aa", "test/aa")
    assert list(summary.columns)[:3] == ["label fraction", "objective", "method"]
    assert len(summary) == 2 * 3 and (summary["seeds"] == 3).all()
    table = markdown_table(summary, "test/aa")
    assert "| objective" in table and "dual_simclr" in table and "mae" in table
    ax = label_fraction_figure(summary, "test/aa").axes[0]
    _, labels = ax.get_legend_handles_labels()
    assert set(labels) == {"dual_simclr · ssl", "mae · ssl", "scratch", "scratch @ 100 %"}


def test_an_objectives_sweep_gets_a_colour_per_line() -> None:
    """Six objectives x (probe, kNN) are 12 lines: more than the 10-colour cycle, none may share a colour."""
    stats = {"test_mean": 0.6, "test_std": 0.01, "seeds": 3}
    rows = [
        {"label fraction": f, "objective": obj, "method": f"{obj}_{arm}", **stats}
        for obj in ("dual_simclr", "simclr", "moco_v3", "barlow_twins", "decur", "mae")
        for arm in ("probe", "knn")
        for f in (0.1, 1.0)
    ]
    rows += [{"label fraction": 1.0, "objective": None, "method": "scratch", **stats}]
    ax = label_fraction_figure(pd.DataFrame(rows), "test/aa").axes[0]
    handles, labels = ax.get_legend_handles_labels()
    lines = [(h.lines[0].get_color(), label) for h, label in zip(handles, labels, strict=True) if hasattr(h, "lines")]
    pretrained = [matplotlib.colors.to_hex(c) for c, label in lines if not label.startswith("scratch")]
    assert len(pretrained) == 12 and len(set(pretrained)) == 12
    assert matplotlib.colors.to_hex("0.3") not in pretrained  # scratch's grey
