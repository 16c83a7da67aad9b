"""Choose a pretraining recipe on val: frozen-feature quality of a few recipes on the same pool.

A pretraining recipe (optimiser, schedule, temperature, ...) is a choice like any other
hyperparameter: it is made on the validation split, never on test. This bench pretrains each
recipe of ``--recipes`` on the unlabelled pool of the label-efficiency world
(:mod:`bench.label_efficiency`'s world and plans, shared with it), then runs one sweep whose arms
are each recipe's linear probe and kNN probe at 10 % and 100 % of the labels over ``--seeds``
label subsets. Probes train nothing in the backbone, so they read what the pretraining learned,
and they cost seconds, not minutes.

It prints **val only** (the test metric exists in the sweep's MLflow run, but choosing on it would
leak test into the recipe): per recipe and arm the mean and std of val AA, the recipes' mean over
their probe and kNN arms, and the recipe with the best mean.

Usage: python bench/pretrain_recipes.py [--world-seed 0] [--recipes demo,cosine] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import (
    REPO,
    VIEWS,
    build_world,
    open_stack,
    pretrain_on_pool,
    refuse_overlap,
    sh,
    sweep_table,
    world_tag,
)

#: Changes to configs/pretrain/dual_simclr.yaml (Dual-SimCLR) that make each recipe.
RECIPES: dict[str, dict] = {
    # the demo's: AdamW 3e-4, constant, tau 0.1, geometric views only (since session 12: "geometric" below won)
    "demo": {},
    # the demo's recipe before session 12: with band dropout 0.1, noise 0.05 and S2 jitter 0.2
    "radiometric": {"objective": {"augment": {"band_dropout": 0.1, "noise_std": 0.05, "s2_jitter": 0.2}}},
    # warm-up then cosine decay, as MoCo v3, DINO and the SSL4EO-S12 runs schedule their pretraining
    "cosine": {"optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 100, "min_lr": 1e-5}},
    # the demo's without the radiometric augmentations (band dropout, noise, S2 brightness/contrast jitter):
    # one crop box, flips and rotations only. Cross-modal views differ in radiometry already (SAR against
    # optics); jitter may teach invariance to the spectra that separate land-cover classes
    "geometric": VIEWS["geometric"],
    # no augmentation at all: the raw co-located pair, as ISPRS22 pretrained Dual-SimCLR (ssl-methods.md §7.1)
    "raw-pair": {"objective": {"augment": None}},
    # the same with tau 0.2 (D-Swin's and MoCo's temperature; 0.07-0.1 is tuned for large batches)
    "cosine-t02": {
        "optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 100, "min_lr": 1e-5},
        "objective": {"temperature": 0.2},
    },
}


def val_table(mlflow_url: str, sweep_name: str, out_dir: Path) -> list[dict]:
    """The sweep's rows (method, label fraction, val mean over seeds), without test."""
    _, table, _ = sweep_table(mlflow_url, sweep_name, out_dir)
    return [
        {"method": str(r["method"]), "fraction": float(r["label fraction"]), "val_mean": round(float(r["val_mean"]), 4)}
        for _, r in table.iterrows()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {sorted(RECIPES)}")
    ap.add_argument("--seeds", type=int, default=3, help="label subsets per probe and fraction")
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--pool-scenes", type=int, default=24)
    ap.add_argument("--chip-px", type=int, default=32)
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--cpus-per-worker", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",")]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"bench: unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")

    t0 = time.perf_counter()
    home = Path(os.environ.get("EOFORGE_HOME", REPO / ".eoforge")).absolute()
    work = home / "bench-label-efficiency" / world_tag(args)
    env, mlflow_url = open_stack(home)
    plan, _ = build_world(args, work, env)

    pretrain, methods = {}, {}
    for name in recipes:
        model = f"eoforge-recipe-{name}"
        pretrain[name] = pretrain_on_pool(
            args, work, env, f"recipe-{name}", "configs/pretrain/dual_simclr.yaml", model, RECIPES[name]
        )
        refuse_overlap(mlflow_url, f"models:/{model}@candidate", plan)
        src = f"models:/{model}@candidate"
        methods[f"{name}_probe"] = {"source": src, "mode": "linear_probe", "objective": f"dual_simclr/{name}"}
        methods[f"{name}_knn"] = {"source": src, "mode": "knn", "objective": f"dual_simclr/{name}"}

    base = yaml.safe_load((REPO / "configs/finetune/demo.yaml").read_text())
    base["data"].update({"plan": str(plan), "config": str(work / "demo.yaml")})
    base["backbone"]["name"] = args.backbone
    base["mlflow"].update({"experiment": "eoforge-bench", "registered_model": None})
    name = f"recipes-{world_tag(args)}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep = {
        "kind": "sweep",
        "base": base,
        "search": {"methods": methods, "label_fractions": [0.1, 1.0], "lr": [0.003], "seeds": list(range(args.seeds))},
        "resources": {"num_workers": 1, "cpus_per_worker": args.cpus_per_worker, "max_concurrent_trials": 1},
        "run": {"name": name, "storage_path": str(work / "sweeps")},
        "mlflow": {"experiment": "eoforge-bench-sweeps", "registered_model": "eoforge-recipes-classification"},
    }
    cfg = work / "sweep-recipes.yaml"
    cfg.write_text(yaml.safe_dump(sweep))
    sh("ray", "job", "submit", "--working-dir", ".", "--", "python", "jobs/sweep.py", "--config", str(cfg), env=env)
    rows = val_table(mlflow_url, name, work / "results" / "recipes")
    score = {}
    for r in recipes:
        mine = [x["val_mean"] for x in rows if x["method"] in (f"{r}_probe", f"{r}_knn")]
        score[r] = round(sum(mine) / len(mine), 4)
    print(
        json.dumps(
            {
                "bench": "pretrain_recipes",
                "world_seed": args.world_seed,
                "recipes": {r: RECIPES[r] for r in recipes},
                "val": rows,
                "val_mean_of_probes": score,
                "chosen": max(score, key=score.get),
                "pretrain": pretrain,
                "seeds": args.seeds,
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
