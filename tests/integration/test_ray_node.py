"""The Ray nodes eoforge starts run with eoforge.ray_node's settings (the real local stack)."""

from __future__ import annotations

from pathlib import Path


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: each process's parent)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out += kids
        todo += kids
    return out


def test_the_stacks_raylet_frees_dead_objects_one_by_one(stack) -> None:
    # eoforge up starts Ray with eoforge.ray_node's settings: the raylet (which frees the objects
    # that went out of scope) must have them in its own environment, not only the CLI that started it
    from eoforge.ray_node import RAY_NODE_ENV

    # eoforge up returns once the head's node is ALIVE (not only once its dashboard answers)
    raylets = [p for p in _children(stack.ray_pid) if b"/raylet" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert raylets, f"no raylet under the stack's Ray (pid {stack.ray_pid})"
    for pid in raylets:
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
        got = {k: env.get(k.encode(), b"").decode() for k in RAY_NODE_ENV}
        assert got == RAY_NODE_ENV, f"raylet {pid}"
