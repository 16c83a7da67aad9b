"""Ray node settings eoforge runs with, wherever a Ray node starts.

Every Ray process reads its system settings from ``RAY_<name>`` environment variables when it
starts, so the same settings are applied in three places from :data:`RAY_NODE_ENV`:

- ``eoforge up`` (:mod:`eoforge.stack`): the environment of ``ray start --head``;
- the embedded default (a job run without ``RAY_ADDRESS`` starts a local Ray): :func:`init_ray`
  puts them into this process's environment first, so the raylet it starts inherits them;
- Kubernetes: the ``env`` of every Ray container in ``k8s/base/raycluster.yaml`` (a test checks
  that the rendered manifests carry exactly these).

A value already set in the environment wins (an operator's override).

``free_objects_batch_size = 1``: a raylet frees the objects that went out of scope in batches of
this many (Ray's default 100, or after ``free_objects_period_milliseconds``, 1 s). A chip stream
retires blocks of up to 16 MiB tens of times a second, so with batches of 100 the store kept about
1.5 GB of dead blocks and its allocator kept handing out fresh pages; each consumer maps and
touches them, and its RSS (which counts those shared pages) climbed with the plan's length
(``bench/store_pages.py``: 16 MB objects, 6 alive: a consumer's touched store pages 496 -> 1409 MB
over 250 objects with Ray's default, 31 MB flat with 1). One free request per object costs little
next to a multi-MB block.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

RAY_NODE_ENV: dict[str, str] = {"RAY_free_objects_batch_size": "1"}


def with_node_env(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """``env`` with every :data:`RAY_NODE_ENV` setting it does not set already (in place; returned)."""
    for key, value in RAY_NODE_ENV.items():
        env.setdefault(key, value)
    return env


def init_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` with :data:`RAY_NODE_ENV` in this process's environment.

    A Ray node started here (no ``RAY_ADDRESS``: the embedded default) inherits them; connecting
    to a running cluster leaves its settings alone (they are the cluster's own).
    """
    import ray

    with_node_env(os.environ)
    ray.init(**kwargs)
