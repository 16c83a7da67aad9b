"""Ray job entrypoint: Dual-SimCLR (or another objective) pretraining from a chip plan.

ray job submit --working-dir . -- python jobs/pretrain.py --config configs/pretrain/demo.yaml
"""

from __future__ import annotations

import sys

from eoforge.config import PretrainConfig, check_inputs, load_config
from eoforge.jobmain import job_main


def _load(path: str, overrides: list[str]) -> PretrainConfig:
    cfg = load_config(path, PretrainConfig, overrides)
    check_inputs(cfg)
    return cfg


def _run(cfg: PretrainConfig, _path: str) -> None:
    from eoforge.train.pretrain import run_pretrain

    run_pretrain(cfg)


def main(argv: list[str] | None = None) -> int:
    """Validate the config before any work, then pretrain."""
    return job_main(__doc__, "pretrain", _load, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
