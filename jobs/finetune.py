"""Ray job entrypoint: fine-tune (or linear-probe) a backbone on a labelled chip plan.

ray job submit --working-dir . -- python jobs/finetune.py --config configs/finetune/demo.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

from eoforge.config import FinetuneConfig, check_inputs, load_config
from eoforge.errors import EoforgeError


def main(argv: list[str] | None = None) -> int:
    """Parse args, validate the config before any work, run the job."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="kind: finetune YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, FinetuneConfig, args.set)
        check_inputs(cfg)
        from eoforge.finetune.run import run_finetune

        run_finetune(cfg)
    except EoforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
