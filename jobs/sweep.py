"""Ray job entrypoint: a Ray Tune sweep over fine-tuning (method x label fraction x lr x seed).

ray job submit --working-dir . -- python jobs/sweep.py --config configs/sweep/label_fractions.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

from eoforge.errors import EoforgeError


def main(argv: list[str] | None = None) -> int:
    """Parse args, validate the sweep and its base config before any work, run the sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="kind: sweep YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from eoforge.tune.sweep import load_sweep_config, run_sweep

        cfg = load_sweep_config(args.config, args.set)
        run_sweep(cfg, args.config)
    except EoforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
