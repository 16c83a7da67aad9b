"""Where a predict job's fixed start goes: warm jobs on a small area beside the pieces of their start.

A local stack (``eoforge.stack.up`` on random ports) and a registered classifier, as in
``bench/predict.py``; then, on the same warm Ray, each timed ``--repeats`` times:

- ``job_wall_s``: ``run_predict`` on ``--scenes`` demo scenes of ``--size-px`` (the first run is the
  untimed warm-up of Ray's workers);
- ``predictor_actor_ready_s``: a bare :class:`eoforge.predict.model.WindowPredictor` actor until it is
  constructed (imports, model weights, module built);
- ``torch_timm_actor_ready_s``: an actor that only imports torch and timm (the floor of the above);
- ``empty_actor_ready_s``: an actor that does nothing;
- ``ray_data_two_pools_s``: a Ray Data pipeline with two identity actor pools shaped like the job's
  (readers, then one inference actor) over 8 rows.

Prints one JSON line last; values are the medians over repeats, with every run under ``runs``.

    PYTHONPATH=$PWD/platform:$PWD python bench/predict_start.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from predict import register_model, run_eoforge, say  # noqa: E402  (bench/predict.py's helpers)


def ready_s(actor_class: Any, *args: Any) -> float:
    """Seconds until a new actor of ``actor_class`` (1 CPU) is constructed; the actor is then killed."""
    import ray

    t0 = time.perf_counter()
    actor = ray.remote(num_cpus=1)(actor_class).remote(*args)
    ray.get(actor.__ray_ready__.remote())
    took = time.perf_counter() - t0
    ray.kill(actor)
    return took


class Empty:
    def __init__(self) -> None:
        pass


class TorchTimm:
    def __init__(self) -> None:
        import timm  # noqa: F401
        import torch  # noqa: F401


class Identity:
    def __call__(self, batch: dict) -> dict:
        return batch


def two_pools_s() -> float:
    import ray.data

    t0 = time.perf_counter()
    ds = ray.data.from_items([{"x": k} for k in range(8)], override_num_blocks=8)
    ds = ds.map_batches(Identity, batch_size=1, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
    ds = ds.map_batches(Identity, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    assert sum(len(b["x"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy")) == 8
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--size-px", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=".eoforge/bench-predict-start")
    args = ap.parse_args()
    out = Path(args.out).absolute()
    shutil.rmtree(out, ignore_errors=True)
    from eoforge.stack_secrets import ensure_ray_token

    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ensure_ray_token(out / "home"))})
    import ray
    from eoforge.demo.catalog import write_demo_catalog
    from eoforge.predict.model import WindowPredictor, resolve_models, share_weights
    from eoforge.stack import StackPorts, down, up
    from eoforge.stack_secrets import client_env

    cat = write_demo_catalog(out / "cat", scenes=args.scenes + 1, seed=0, dates_per_scene=1, size_px=args.size_px)
    items, home = list(cat.s2_item_ids[1:]), out / "home"
    state = up(home, StackPorts.random())
    os.environ.update({"MLFLOW_TRACKING_URI": state.mlflow_url, "EOFORGE_HOME": str(home), **client_env(home)})
    runs: dict[str, list[float]] = {}
    t_all = time.perf_counter()
    try:
        ray.init(address=state.ray_address, log_to_driver=False)
        uri = register_model(state.mlflow_url)
        job = {"uri": uri, "mlflow_url": state.mlflow_url, "ray_pid": state.ray_pid}
        run_eoforge(cat, items[:1], out / "warmup", **job)
        say("warm; timing")
        spec = resolve_models(state.mlflow_url, uri, None, ["classes"], None)
        weights = share_weights(spec, state.mlflow_url)
        for i in range(args.repeats):
            runs.setdefault("job_wall_s", []).append(run_eoforge(cat, items, out / f"job{i}", **job)["wall_s"])
            runs.setdefault("predictor_actor_ready_s", []).append(ready_s(WindowPredictor, spec.to_dict(), weights))
            runs.setdefault("torch_timm_actor_ready_s", []).append(ready_s(TorchTimm))
            runs.setdefault("empty_actor_ready_s", []).append(ready_s(Empty))
            runs.setdefault("ray_data_two_pools_s", []).append(two_pools_s())
    finally:
        ray.shutdown()
        down(home)
    res: dict[str, Any] = {"bench": "predict_start", "scenes": args.scenes, "size_px": args.size_px}
    res |= {k: round(statistics.median(v), 2) for k, v in runs.items()}
    res["runs"] = {k: [round(x, 2) for x in v] for k, v in runs.items()}
    res |= {"repeats": args.repeats, "cores": os.cpu_count(), "wall_s": round(time.perf_counter() - t_all, 1)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
