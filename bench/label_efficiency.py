"""Label efficiency: does self-supervised pretraining on an unlabelled pool cut the labels a task needs?

Runs what a user runs, on the local stack (``eoforge up``), through ``ray job submit``:

1. the demo world of ``--world-seed``: ``--scenes`` labelled scenes (train and test regions differ, as
   in DFC2020) and an unlabelled pool of ``--pool-scenes`` other places over four seasons; one chip
   plan each (``--chip-px``);
2. one pretraining per ``--objectives`` on the pool (``--pretrain-steps``), registered as
   ``eoforge-bench-<objective>``; a finished pretraining with the same config and pool is reused
   (``mlflow.reuse``). A backbone whose pretraining plan covers test chips is refused;
3. one sweep per ``--tasks`` with the protocol's arms, each over the same label subsets (stratified,
   nested, per seed), the same step budget (``--steps``) and the same lr grid (``--lrs``), the lr
   chosen on val and test reported once at the chosen checkpoint:
   ``scratch``, ``random_probe``, ``band_stats_probe`` and, per objective, ``<objective>_probe``,
   ``<objective>_knn``, ``<objective>_finetune`` and ``<objective>_lpft`` (the head first on the frozen
   backbone, then everything: :mod:`eoforge.finetune.policy`) (segmentation: no band-stats or kNN arm).
   Every trained arm augments its chips (flips, 90-degree rotations); a scratch backbone trains at the
   full lr, a pretrained one at ``backbone_lr_scale`` of it.

The last line printed is one JSON object: per task, arm and fraction the test metric's mean and std
over seeds; ``ssl_at_10_vs_scratch_at_100`` per task: the SSL arm with the best val metric at 10 %
labels (named) minus scratch at 100 % (the goal is >= 0); the pretraining steps and wall times; the
label-fraction PNG of each sweep (copied next to the bench's files).

Usage: python bench/label_efficiency.py [--world-seed 0] [--seeds 3] [--fractions 0.01,0.1,1.0]
       [--objectives simclr] [--tasks classification] [--down]

The sizes default to the demo's (16 labelled scenes, a 24-scene pool, 32 px chips, 1,200 pretraining
steps), with a resnet18 (the demo's is a resnet10t), and every trained arm gets 400 steps with a cosine
lr. With ``--fractions 0.1,1.0 --lrs 0.003`` and 3 seeds the 12 trained trials alone took 3,004 s on a
slow 2-core machine (docs/benchmarks.md, "A budget that settles", one trial at a time); the default
fractions and lr grid triple the trials. On CPU two trials now run at once on one core each
(``--concurrent-trials``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "classification": {"kind": "classification", "classes": "dfc8"},
    "multilabel": {"kind": "multilabel", "classes": "dfc8"},
    "segmentation": {"kind": "segmentation", "classes": "dfc8"},
}
#: The pretraining config of each objective: configs/pretrain/<objective>.yaml.
PRETRAIN_CONFIGS = {
    "dual_simclr": "configs/pretrain/dual_simclr.yaml",
    **{k: f"configs/pretrain/{k}.yaml" for k in ("simclr", "moco_v3", "barlow_twins", "vicreg", "decur", "mae")},
}

#: The objective a bare run pretrains: SimCLR, each sensor against itself, with its config's geometric views.
#: Val chose it: its frozen features led six objectives on one pool at 10 % labels (val AA 0.848, Dual-SimCLR
#: 0.784), and its geometric views raised that again (0.872) (docs/benchmarks.md, "Six objectives on one
#: pool" and "SimCLR with geometric views").
DEFAULT_OBJECTIVE = "simclr"

#: Changes to each objective's views (``--views``): ``config`` keeps its config's; ``geometric`` turns the
#: radiometric augmentations off (band dropout, noise, S2 brightness/contrast jitter), leaving one crop box,
#: flips and rotations: the views val chose for Dual-SimCLR (docs/benchmarks.md, "Choosing the views on val").
VIEWS: dict[str, dict] = {
    "config": {},
    "geometric": {"objective": {"augment": {"band_dropout": 0.0, "noise_std": 0.0, "s2_jitter": 0.0}}},
}

#: Objectives that only run on a ViT: they keep their config's backbone (``img_size`` set to the chips).
VIT_OBJECTIVES = {"mae"}


def sh(*cmd: str, env: dict[str, str] | None = None) -> str:
    """Run a command, stream its output to stderr as it comes (progress), return its stdout."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        lines.append(line)
    if proc.wait() != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])} ... failed ({proc.returncode})")
    return "".join(lines)


def world_tag(args: argparse.Namespace) -> str:
    """The bench's folder name for one world and size: ``w<seed>-s<scenes>-p<pool>-c<chip px>``."""
    return f"w{args.world_seed}-s{args.scenes}-p{args.pool_scenes}-c{args.chip_px}"


def open_stack(home: Path) -> tuple[dict[str, str], str]:
    """Start (or find) the local stack; (the environment for ``ray job submit`` and ``eoforge``, MLflow's URL).

    The stack's Ray token and MLflow login go into the returned environment and this process's MLflow
    variables; they are never printed.
    """
    env = {**os.environ, "EOFORGE_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    eoforge = str(Path(sys.executable).parent / "eoforge")
    sh(eoforge, "up", env=env)
    env["RAY_ADDRESS"] = sh(eoforge, "status", "--field", "ray_dashboard_url", env=env).strip()
    from eoforge.stack_secrets import client_env

    login = client_env(home)
    env.update(login)
    os.environ.update({k: v for k, v in login.items() if k.startswith("MLFLOW_")})  # this process's MLflow calls
    return env, sh(eoforge, "status", "--field", "mlflow_url", env=env).strip()


def build_world(args: argparse.Namespace, work: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """The demo world of ``args.world_seed`` and its two chip plans under ``work``.

    A rerun reuses them while the world's code (``eoforge/demo``) is the same; when it changed they are
    written again (a pretraining stays reused only if its pool plan's hash is unchanged).

    Returns:
        (the labelled plan, the unlabelled pool's plan).
    """
    work.mkdir(parents=True, exist_ok=True)
    plan, pool_plan = work / "plan.parquet", work / "pool-plan.parquet"
    stamp, version = work / "world-version.txt", world_version()
    if plan.exists() and pool_plan.exists() and stamp.exists() and stamp.read_text() == version:
        return plan, pool_plan
    if (work / "catalog").exists():
        say = f"bench: the world's code changed since {work / 'catalog'} was written: writing it again"
        print(say, file=sys.stderr)
        shutil.rmtree(work / "catalog")
    eoforge = str(Path(sys.executable).parent / "eoforge")
    sh(eoforge, "catalog", "demo", "--out", str(work / "catalog"), "--scenes", str(args.scenes),
       "--seed", str(args.world_seed), "--pool-scenes", str(args.pool_scenes), env=env)  # fmt: skip
    for src, url, out in (
        ("configs/data/demo.yaml", work / "catalog" / "catalog.json", plan),
        ("configs/data/demo-pool.yaml", work / "catalog" / "pool" / "catalog.json", pool_plan),
    ):
        data = yaml.safe_load((REPO / src).read_text())
        data["catalog"]["url"] = str(url)
        data["chips"]["size_px"] = args.chip_px
        (work / Path(src).name).write_text(yaml.safe_dump(data))
        sh(eoforge, "plan", "--config", str(work / Path(src).name), "--out", str(out), env=env)
    stamp.write_text(version)
    return plan, pool_plan


def world_version() -> str:
    """A digest of the synthetic world's code (``platform/eoforge/demo/*.py``): what the written world depends on."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "platform" / "eoforge" / "demo").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def deep_update(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested dicts key by key (``base`` is changed and returned)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def pretrain_on_pool(
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str],
    label: str,
    config: str,
    model: str,
    changes: dict,
) -> dict[str, object]:
    """One pretraining job on the world's pool, registered as ``model@candidate``; its steps, reuse and wall time.

    Args:
        label: names the written config (``pretrain-<label>.yaml``) and starts the run name (the rest is
            world, steps and scaling).
        config: the pretraining config it starts from (repository path).
        changes: nested keys set over that config (a recipe), after the bench's sizes.
    """
    t = time.perf_counter()
    pre = yaml.safe_load((REPO / config).read_text())
    pre["data"].update(
        {"plan": str(work / "pool-plan.parquet"), "config": str(work / "demo-pool.yaml"), "split": "train"}
    )
    pre["data"]["materialize"] = True  # every objective reads the same decoded pool
    pre["train"].update({"epochs": 1000, "max_steps": args.pretrain_steps})
    if str(pre["objective"]["kind"]) in VIT_OBJECTIVES:  # keeps its ViT, sized to the chips
        pre["model"]["img_size"] = args.chip_px
        if args.chip_px % int(pre["model"].get("patch_size", 16)):
            raise SystemExit(f"bench: {config}'s patch_size does not divide --chip-px {args.chip_px}")
    else:
        pre["model"]["backbone"] = args.backbone
        if not args.backbone.startswith(("vit", "swin")):  # a ViT config (MoCo v3's) run on a CNN
            pre["model"].pop("patch_size", None)
            pre["model"].pop("img_size", None)
    pre["scaling"].update(
        {"num_workers": args.num_workers, "cpus_per_worker": args.cpus_per_worker, "use_gpu": args.gpu}
    )
    pre["train"]["batch_size"] = max(2, args.pretrain_batch // args.num_workers)
    deep_update(pre, changes)
    scale = f"{args.num_workers}x{args.cpus_per_worker}-b{args.pretrain_batch}"
    bb = "" if args.backbone == "resnet18" else f"-{args.backbone}"  # resnet18 runs keep their names
    # the recipe's digest in the name: a changed config is a new run, never a resume of the old one's weights
    recipe = {k: v for k, v in pre.items() if k not in ("run", "mlflow")}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    pre["run"].update(
        {
            "name": f"bench-{label}-{world_tag(args)}{bb}-{args.pretrain_steps}-{scale}-{digest}",
            "storage_path": str(work / "ray"),
        }
    )
    pre["mlflow"].update({"experiment": "eoforge-bench", "registered_model": model})
    (work / f"pretrain-{label}.yaml").write_text(yaml.safe_dump(pre))
    submit = ["ray", "job", "submit", "--working-dir", "."]
    logs = sh(*submit, "--", "python", "jobs/pretrain.py", "--config", str(work / f"pretrain-{label}.yaml"), env=env)
    done_before = f"resumed from checkpoint at step {args.pretrain_steps} " in logs  # a finished run, resumed
    return {
        "steps": args.pretrain_steps,
        "reused": "pretraining reused" in logs or done_before,
        "wall_s": round(time.perf_counter() - t, 1),
    }


def refuse_overlap(mlflow_url: str, model_uri: str, plan: Path) -> None:
    """Stop the bench when the model's pretraining plan covers test chips of ``plan``.

    Raises:
        SystemExit: the pretraining plan and the labelled plan's test split share ground.
    """
    from eoforge.finetune.backbone_source import resolve_backbone
    from eoforge.finetune.overlap import pretraining_overlap

    card = resolve_backbone(model_uri, "resnet18", mlflow_url, "ssl4eo").card
    if not card.get("plan"):
        raise SystemExit(f"bench: {model_uri} does not name its pretraining plan; refusing to compare it")
    overlap = pretraining_overlap(str(card["plan"]), str(card.get("plan_split", "all")), str(plan))
    if overlap.chips:
        raise SystemExit(
            f"bench: {model_uri} was pretrained on {card['plan']}, which covers {overlap.chips} of "
            f"{overlap.test_chips} test chips (e.g. {overlap.places[:3]}): refusing a comparison on seen land"
        )


def bench_model(objective: str, views: str = "config") -> str:
    """The registered model of one objective's pretraining: ``eoforge-bench-<objective>[-<views>]``."""
    return f"eoforge-bench-{objective.replace('_', '-')}" + ("" if views == "config" else f"-{views}")


def arms(objectives: list[str], task: str, views: str = "config") -> dict[str, dict[str, str]]:
    """The sweep's methods: the controls, then each objective's probe, kNN, fine-tune and LP-FT."""
    whole_chip = task != "segmentation"
    out = {"scratch": {"source": "scratch", "mode": "finetune"}}
    out["random_probe"] = {"source": "scratch", "mode": "linear_probe"}
    if whole_chip:
        out["band_stats_probe"] = {"source": "band_stats", "mode": "linear_probe"}
    for obj in objectives:
        src = f"models:/{bench_model(obj, views)}@candidate"
        out[f"{obj}_probe"] = {"source": src, "mode": "linear_probe", "objective": obj}
        if whole_chip:
            out[f"{obj}_knn"] = {"source": src, "mode": "knn", "objective": obj}
        out[f"{obj}_finetune"] = {"source": src, "mode": "finetune", "objective": obj}
        out[f"{obj}_lpft"] = {"source": src, "mode": "lp_ft", "objective": obj}
    return out


#: Arms that are their own kind; an objective's arm's kind is what follows ``<objective>_``.
CONTROL_ARMS = ("scratch", "random_probe", "band_stats_probe")
ARM_KINDS = ("probe", "knn", "finetune", "lpft", *CONTROL_ARMS)


def pick_arms(methods: dict[str, dict[str, str]], kinds: str) -> dict[str, dict[str, str]]:
    """The methods whose kind is in the comma-separated ``kinds`` (every one when empty)."""
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    unknown = wanted - set(ARM_KINDS)
    if unknown:
        raise SystemExit(f"bench: unknown arm kind(s) {sorted(unknown)}; choose from {list(ARM_KINDS)}")
    if not wanted:
        return methods
    return {n: m for n, m in methods.items() if (n if n in CONTROL_ARMS else n.rsplit("_", 1)[-1]) in wanted}


def sweep_table(mlflow_url: str, sweep_name: str, out_dir: Path) -> tuple[Any, Any, str]:
    """(the sweep's parent MLflow run, its results table (DataFrame), the PNG's local path); files go to ``out_dir``."""
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("eoforge-bench-sweeps")
    run = client.search_runs([exp.experiment_id], f"tags.`eoforge.run_name` = '{sweep_name}'")[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "results/label_fractions.csv", str(out_dir)))
    png = client.download_artifacts(run.info.run_id, "results/label_fractions.png", str(out_dir))
    return run, table, png


def summarise(mlflow_url: str, sweep_name: str, out_dir: Path) -> tuple[dict, dict, str]:
    """(per arm and fraction: test mean/std/val mean, the 10 % vs 100 % comparison, the PNG's path)."""
    run, table, png = sweep_table(mlflow_url, sweep_name, out_dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in table.iterrows():
        results.setdefault(str(row["method"]), {})[f"{row['label fraction']:g}"] = {
            "mean": round(float(row["test_mean"]), 4),
            "std": round(float(row["test_std"]), 4),
            "val_mean": round(float(row["val_mean"]), 4),
            "seeds": int(row["seeds"]),
        }
    has_obj = "objective" in table.columns
    ssl = table[table["objective"].notna()] if has_obj else table.iloc[0:0]
    at10 = ssl[(ssl["label fraction"] - 0.1).abs() < 1e-9]
    scratch100 = table[(table["method"] == "scratch") & ((table["label fraction"] - 1.0).abs() < 1e-9)]
    compare: dict[str, object] = {"metric": run.data.tags.get("eoforge.test_metric", "test")}
    if not at10.empty and not scratch100.empty:
        best = at10.loc[at10["val_mean"].idxmax()]
        ref = scratch100.iloc[0]
        compare.update(
            {
                "arm": str(best["method"]),
                "ssl_at_10": round(float(best["test_mean"]), 4),
                "ssl_at_10_std": round(float(best["test_std"]), 4),
                "scratch_at_100": round(float(ref["test_mean"]), 4),
                "scratch_at_100_std": round(float(ref["test_std"]), 4),
                "gap": round(float(best["test_mean"] - ref["test_mean"]), 4),
            }
        )
    return results, compare, str(png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-seed", type=int, default=0, help="the synthetic world (land cover, regions, clouds)")
    ap.add_argument("--seeds", type=int, default=3, help="label-subset and init seeds per arm and fraction")
    ap.add_argument("--fractions", default="0.01,0.1,1.0", help="comma-separated label fractions; 1.0 is added")
    ap.add_argument(
        "--objectives",
        default=DEFAULT_OBJECTIVE,
        help=f"comma-separated, of {sorted(PRETRAIN_CONFIGS)}; default: val's choice (docs/benchmarks.md)",
    )
    ap.add_argument(
        "--views",
        choices=sorted(VIEWS),
        default="config",
        help="each objective's views: its config's, or geometric (no radiometric augmentation)",
    )
    ap.add_argument("--tasks", default="classification", help=f"comma-separated, of {sorted(TASKS)}")
    ap.add_argument("--scenes", type=int, default=16, help="labelled scenes (every 4th is a test region)")
    ap.add_argument("--pool-scenes", type=int, default=24, help="unlabelled pool scenes (four seasons each)")
    ap.add_argument("--chip-px", type=int, default=32, help="the demo's size (64: see docs/benchmarks.md)")
    ap.add_argument("--pretrain-steps", type=int, default=1200, help="optimiser steps of each pretraining")
    ap.add_argument("--backbone", default="resnet18", help="timm backbone of every pretraining and of the scratch arms")
    ap.add_argument(
        "--steps",
        type=int,
        default=400,
        help="optimiser steps of every trained arm (cosine lr to 0 over them; 200 left scratch at 100 %% 0.07 "
        "val AA short, docs/benchmarks.md)",
    )
    ap.add_argument("--lrs", default="0.001,0.003", help="the lr grid every trained arm gets")
    ap.add_argument("--num-workers", type=int, default=1, help="Ray Train workers of each pretraining and trial")
    ap.add_argument(
        "--cpus-per-worker",
        type=int,
        default=os.cpu_count() or 1,
        help="CPUs (torch threads) of each worker; default: this machine's cores, one worker using them all",
    )
    ap.add_argument(
        "--concurrent-trials",
        type=int,
        default=2,
        help="trials at once, each worker on --cpus-per-worker / N CPUs (CPU only; GPU trials run one at a "
        "time): two one-core trials do 1.4-1.9x the work of one two-core trial (bench/trial_threads.py, "
        "32 px, batch 32; resnet18 1.55x)",
    )
    ap.add_argument("--pretrain-batch", type=int, default=32, help="global pretraining batch (split over workers)")
    ap.add_argument("--gpu", action="store_true", help="trials and pretraining on GPU workers")
    ap.add_argument("--down", action="store_true", help="stop the local stack at the end")
    ap.add_argument(
        "--arms",
        default="",
        help="comma-separated arm kinds to run, of probe, knn, finetune, lpft, scratch, random_probe, band_stats_probe "
        "(default: all; e.g. the probes alone when only they changed)",
    )
    args = ap.parse_args()
    fractions = sorted({float(f) for f in args.fractions.split(",")} | {1.0})
    tasks = [t.strip() for t in args.tasks.split(",")]
    objectives = [o.strip() for o in args.objectives.split(",")]
    for name, given, known in (("task", tasks, TASKS), ("objective", objectives, PRETRAIN_CONFIGS)):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise SystemExit(f"bench: unknown {name}(s) {unknown}; choose from {sorted(known)}")

    t0 = time.perf_counter()
    home = Path(os.environ.get("EOFORGE_HOME", REPO / ".eoforge")).absolute()
    tag = world_tag(args)
    work = home / "bench-label-efficiency" / tag
    env, mlflow_url = open_stack(home)
    plan, _ = build_world(args, work, env)
    submit = ["ray", "job", "submit", "--working-dir", "."]

    pretrain: dict[str, dict[str, object]] = {}
    for obj in objectives:
        model = bench_model(obj, args.views)
        label = obj if args.views == "config" else f"{obj}-{args.views}"
        pretrain[obj] = pretrain_on_pool(args, work, env, label, PRETRAIN_CONFIGS[obj], model, VIEWS[args.views])
        refuse_overlap(mlflow_url, f"models:/{model}@candidate", plan)

    results, compare, pngs = {}, {}, {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    views = "" if args.views == "config" else f"-{args.views}-views"  # the sweep's name titles its PNG
    concurrent = 1 if args.gpu else max(1, min(args.concurrent_trials, args.cpus_per_worker))
    trial_cpus = args.cpus_per_worker // concurrent
    for task in tasks:
        base = yaml.safe_load((REPO / "configs/finetune/demo.yaml").read_text())
        base["data"].update({"plan": str(plan), "config": str(work / "demo.yaml")})
        base["task"].update(TASKS[task])
        base["backbone"]["name"] = args.backbone
        base["train"].update({"steps": args.steps})
        base["mlflow"].update({"experiment": "eoforge-bench", "registered_model": None})
        sweep = {
            "kind": "sweep",
            "base": base,
            "search": {
                "methods": pick_arms(arms(objectives, task, args.views), args.arms),
                "label_fractions": fractions,
                "lr": [float(x) for x in args.lrs.split(",")],
                "seeds": list(range(args.seeds)),
            },
            "resources": {
                "num_workers": args.num_workers,
                "cpus_per_worker": trial_cpus,
                "max_concurrent_trials": concurrent,
                "use_gpu": args.gpu,
            },
            "run": {"name": f"bench-{task}-{tag}{views}-{stamp}", "storage_path": str(work / "sweeps")},
            "mlflow": {"experiment": "eoforge-bench-sweeps", "registered_model": f"eoforge-bench-{task}"},
        }
        cfg_path = work / f"sweep-{task}.yaml"
        cfg_path.write_text(yaml.safe_dump(sweep))
        sh(*submit, "--", "python", "jobs/sweep.py", "--config", str(cfg_path), env=env)
        results[task], compare[task], pngs[task] = summarise(mlflow_url, sweep["run"]["name"], work / "results" / task)

    if args.down:
        sh(str(Path(sys.executable).parent / "eoforge"), "down", env=env)
    print(
        json.dumps(
            {
                "bench": "label_efficiency",
                "world_seed": args.world_seed,
                "results": results,
                "ssl_at_10_vs_scratch_at_100": compare,
                "goal_met": {t: c.get("gap", -1.0) >= 0 for t, c in compare.items()},
                "fractions": fractions,
                "seeds": args.seeds,
                "objectives": objectives,
                "views": args.views,
                "pretrain": pretrain,
                "finetune_steps": args.steps,
                "arms": args.arms or "all",
                "workers": {"num_workers": args.num_workers, "cpus_per_worker": args.cpus_per_worker},
                "trials": {"concurrent": concurrent, "cpus_per_worker": trial_cpus},
                "lrs": args.lrs,
                "scenes": args.scenes,
                "pool_scenes": args.pool_scenes,
                "chip_px": args.chip_px,
                "backbone": args.backbone,
                "png": pngs,
                "device": "cuda" if args.gpu else "cpu",
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
