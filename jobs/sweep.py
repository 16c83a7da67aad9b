"""Ray job entrypoint: a Ray Tune sweep over fine-tuning (method x label fraction x lr x seed).

ray job submit --working-dir . -- python jobs/sweep.py --config configs/sweep/label_fractions.yaml
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from eoforge.jobmain import job_main

if TYPE_CHECKING:
    from eoforge.config import SweepConfig


def _load(path: str, overrides: list[str]) -> SweepConfig:
    from eoforge.tune.sweep import load_sweep_config

    return load_sweep_config(path, overrides)


def _run(cfg: SweepConfig, path: str) -> None:
    from eoforge.tune.sweep import run_sweep

    run_sweep(cfg, path)


def main(argv: list[str] | None = None) -> int:
    """Validate the sweep and its base config before any work, then run the sweep."""
    return job_main(__doc__, "sweep", _load, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
