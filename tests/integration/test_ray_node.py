"""The Ray nodes eoforge starts run with eoforge.ray_node's settings (the real local stack)."""

from __future__ import annotations

from pathlib import Path

from tests.support.cluster import descendants


def test_the_stacks_raylet_frees_dead_objects_one_by_one(stack) -> None:
    # eoforge up starts Ray with eoforge.ray_node's settings: the raylet (which frees the objects
    # that went out of scope) must have them in its own environment, not only the CLI that started it
    from eoforge.ray_node import RAY_NODE_ENV

    # eoforge up returns once the head's node is ALIVE (not only once its dashboard answers)
    raylets = [p for p in descendants(stack.ray_pid) if b"/raylet" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert raylets, f"no raylet under the stack's Ray (pid {stack.ray_pid})"
    for pid in raylets:
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
        got = {k: env.get(k.encode(), b"").decode() for k in RAY_NODE_ENV}
        assert got == RAY_NODE_ENV, f"raylet {pid}"
