"""Ray job entrypoint: map an area with a registered model; COGs + a STAC collection.

ray job submit --working-dir . -- python jobs/predict.py --config configs/predict/demo.yaml
"""

from __future__ import annotations

import sys

from eoforge.config import PredictConfig, load_config
from eoforge.jobmain import job_main


def _load(path: str, overrides: list[str]) -> PredictConfig:
    return load_config(path, PredictConfig, overrides)


def _run(cfg: PredictConfig, _path: str) -> None:
    from eoforge.predict.job import run_predict

    run_predict(cfg)


def main(argv: list[str] | None = None) -> int:
    """Validate the config before any work, then predict."""
    return job_main(__doc__, "predict", _load, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
