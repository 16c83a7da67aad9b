"""Label efficiency: does the SSL backbone with 10 % of the labels match scratch with 100 %?

Runs what a user runs, on the local stack (``eoforge up``), through ``ray job submit``:

1. the demo catalog (``--scenes`` scenes) and its chip plan;
2. Dual-SimCLR pretraining (``--pretrain-epochs``, registered as ``eoforge-bench-dual-simclr``),
   skipped with ``--reuse-pretrain`` when that model already has a ``candidate``;
3. one label-fraction sweep per task: {ssl, scratch} x ``--fractions`` x ``--seeds`` seeds
   (ssl: the pretrained backbone, ``--ssl-mode``; scratch: random init, full fine-tuning),
   each trial selected on val and reported on test.

The last line printed is one JSON object: per task and fraction, the SSL and scratch test
metric (mean and std over seeds, population std), ``ssl_at_10_vs_scratch_at_100`` (SSL at the
smallest fraction minus scratch at 100 %, per task; the goal is >= 0), the pretraining budget
and the wall time. Intermediate numbers and the sweeps' MLflow runs stay on the stack.

Usage: python bench/label_efficiency.py [--seeds 3] [--fractions 0.1,1.0] [--tasks classification]
       [--pretrain-epochs 3] [--epochs 8] [--scenes 4] [--reuse-pretrain] [--down]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL = "eoforge-bench-dual-simclr"
TASKS = {
    "classification": {"kind": "classification", "classes": "dfc8"},
    "multilabel": {"kind": "multilabel", "classes": "dfc8"},
    "segmentation": {"kind": "segmentation", "classes": "dfc8"},
}


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


def has_candidate(mlflow_url: str) -> bool:
    import mlflow

    try:
        mlflow.MlflowClient(mlflow_url).get_model_version_by_alias(MODEL, "candidate")
    except mlflow.exceptions.MlflowException:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", default="0.1,1.0", help="comma-separated label fractions; 1.0 is always added")
    ap.add_argument("--tasks", default="classification", help=f"comma-separated, of {sorted(TASKS)}")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs per trial")
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--ssl-mode", default="linear_probe", choices=["linear_probe", "finetune"])
    ap.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per trial")
    ap.add_argument("--gpu", action="store_true", help="trials and pretraining on GPU workers")
    ap.add_argument("--reuse-pretrain", action="store_true")
    ap.add_argument("--down", action="store_true", help="stop the local stack at the end")
    args = ap.parse_args()
    fractions = sorted({float(f) for f in args.fractions.split(",")} | {1.0})
    tasks = [t.strip() for t in args.tasks.split(",")]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"bench: unknown task(s) {unknown}; choose from {sorted(TASKS)}")

    t0 = time.perf_counter()
    home = Path(os.environ.get("EOFORGE_HOME", REPO / ".eoforge")).absolute()
    work = home / "bench-label-efficiency"
    env = {**os.environ, "EOFORGE_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    eoforge = str(Path(sys.executable).parent / "eoforge")
    sh(eoforge, "up", env=env)
    env["RAY_ADDRESS"] = sh(eoforge, "status", "--field", "ray_dashboard_url", env=env).strip()
    mlflow_url = sh(eoforge, "status", "--field", "mlflow_url", env=env).strip()
    work.mkdir(parents=True, exist_ok=True)
    submit = ["ray", "job", "submit", "--working-dir", "."]

    plan = work / "plan.parquet"
    if not plan.exists():
        sh(
            eoforge,
            "catalog",
            "demo",
            "--out",
            str(work / "catalog"),
            "--scenes",
            str(args.scenes),
            "--seed",
            "0",
            env=env,
        )
        data = yaml.safe_load((REPO / "configs/data/demo.yaml").read_text())
        data["catalog"]["url"] = str(work / "catalog" / "catalog.json")
        data["splits"] = {"train": 0.6, "val": 0.2, "test": 0.2}  # enough val/test chips for stable numbers
        (work / "data.yaml").write_text(yaml.safe_dump(data))
        sh(eoforge, "plan", "--config", str(work / "data.yaml"), "--out", str(plan), env=env)

    pretrain_s = 0.0
    if not (args.reuse_pretrain and has_candidate(mlflow_url)):
        t = time.perf_counter()
        pre = yaml.safe_load((REPO / "configs/pretrain/demo.yaml").read_text())
        pre["data"].update({"plan": str(plan), "config": str(work / "data.yaml")})
        pre["train"]["epochs"] = args.pretrain_epochs
        pre["scaling"]["use_gpu"] = args.gpu
        pre["run"].update({"name": f"bench-dual-simclr-e{args.pretrain_epochs}", "storage_path": str(work / "ray")})
        pre["mlflow"].update({"experiment": "eoforge-bench", "registered_model": MODEL})
        (work / "pretrain.yaml").write_text(yaml.safe_dump(pre))
        sh(*submit, "--", "python", "jobs/pretrain.py", "--config", str(work / "pretrain.yaml"), env=env)
        pretrain_s = time.perf_counter() - t

    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    gap: dict[str, float] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for task in tasks:
        base = yaml.safe_load((REPO / "configs/finetune/demo.yaml").read_text())
        base["data"].update({"plan": str(plan), "config": str(work / "data.yaml")})
        base["task"].update(TASKS[task])
        base["train"].update({"epochs": args.epochs, "eval_every_epochs": 1})
        base["mlflow"].update({"experiment": "eoforge-bench", "registered_model": None})
        sweep = {
            "kind": "sweep",
            "base": base,
            "search": {
                "methods": {
                    "ssl": {"source": f"models:/{MODEL}@candidate", "mode": args.ssl_mode},
                    "scratch": {"source": "scratch", "mode": "finetune"},
                },
                "label_fractions": fractions,
                "seeds": list(range(args.seeds)),
            },
            "resources": {"num_workers": args.num_workers, "max_concurrent_trials": 1, "use_gpu": args.gpu},
            "run": {"name": f"bench-{task}-{stamp}", "storage_path": str(work / "sweeps")},
            "mlflow": {"experiment": "eoforge-bench-sweeps", "registered_model": f"eoforge-bench-{task}"},
        }
        cfg_path = work / f"sweep-{task}.yaml"
        cfg_path.write_text(yaml.safe_dump(sweep))
        sh(*submit, "--", "python", "jobs/sweep.py", "--config", str(cfg_path), env=env)
        results[task], gap[task] = summarise(mlflow_url, sweep["run"]["name"], fractions[0])

    if args.down:
        sh(eoforge, "down", env=env)
    print(
        json.dumps(
            {
                "bench": "label_efficiency",
                "results": results,
                "ssl_at_10_vs_scratch_at_100": gap,
                "goal_met": {t: g >= 0 for t, g in gap.items()},
                "smallest_fraction": fractions[0],
                "seeds": args.seeds,
                "ssl_mode": args.ssl_mode,
                "pretrain": {
                    "objective": "dual_simclr",
                    "epochs": args.pretrain_epochs,
                    "reused": pretrain_s == 0.0,
                    "wall_s": round(pretrain_s, 1),
                },
                "finetune_epochs": args.epochs,
                "scenes": args.scenes,
                "device": "cuda" if args.gpu else "cpu",
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
    )


def summarise(mlflow_url: str, sweep_name: str, smallest: float) -> tuple[dict[str, dict[str, float]], float]:
    """Per fraction and method: test metric mean/std over seeds, from the sweep's results table."""
    import tempfile

    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("eoforge-bench-sweeps")
    run = client.search_runs([exp.experiment_id], f"tags.`eoforge.run_name` = '{sweep_name}'")[0]
    with tempfile.TemporaryDirectory() as tmp:
        table = pd.read_csv(client.download_artifacts(run.info.run_id, "results/label_fractions.csv", tmp))
    out: dict[str, dict[str, float]] = {}
    for _, row in table.iterrows():
        out.setdefault(f"{row['label fraction']:g}", {}).update(
            {
                f"{row['method']}_mean": round(float(row["test_mean"]), 4),
                f"{row['method']}_std": round(float(row["test_std"]), 4),
            }
        )
    out["metric"] = run.data.tags.get("eoforge.test_metric", "test")  # type: ignore[assignment]
    gap = out[f"{smallest:g}"]["ssl_mean"] - out["1"]["scratch_mean"]
    return out, round(gap, 4)


if __name__ == "__main__":
    main()
