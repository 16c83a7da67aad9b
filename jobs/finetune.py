"""Ray job entrypoint: fine-tune (or linear-probe) a backbone on a labelled chip plan.

ray job submit --working-dir . -- python jobs/finetune.py --config configs/finetune/demo.yaml
"""

from __future__ import annotations

import sys

from eoforge.config import FinetuneConfig, check_inputs, load_config
from eoforge.jobmain import job_main


def _load(path: str, overrides: list[str]) -> FinetuneConfig:
    cfg = load_config(path, FinetuneConfig, overrides)
    check_inputs(cfg)
    return cfg


def _run(cfg: FinetuneConfig, _path: str) -> None:
    from eoforge.finetune.run import run_finetune

    run_finetune(cfg)


def main(argv: list[str] | None = None) -> int:
    """Validate the config before any work, then fine-tune."""
    return job_main(__doc__, "finetune", _load, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
