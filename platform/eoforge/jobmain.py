"""The shared ``main`` of the Ray job entrypoints in ``jobs/``.

Each entrypoint parses ``--config FILE`` and repeatable ``--set key=value``, validates the config
before any work (a bad file exits with code 2 and one line per problem) and runs its stage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from eoforge.errors import EoforgeError
from eoforge.redact import redact


def job_main(
    doc: str | None,
    kind: str,
    load: Callable[[str, list[str]], Any],
    run: Callable[[Any, str], Any],
    argv: list[str] | None = None,
) -> int:
    """Parse args, load + check the config with ``load(path, overrides)``, then ``run(cfg, path)``.

    Returns the process exit code: 0 on success, 2 on an :class:`EoforgeError` (bad config,
    missing input, unreachable service), printed as ``error: ...`` on stderr.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=f"kind: {kind} YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load(args.config, args.set)
        run(cfg, args.config)
    except EoforgeError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    return 0
