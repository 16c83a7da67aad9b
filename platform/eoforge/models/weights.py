"""Checkpoint files hold tensors and plain values only; loading one never runs code.

Every checkpoint eoforge writes (``state.pt`` of pretraining, ``finetune_state.pt`` of
fine-tuning) is a ``torch.save`` of dicts, lists, numbers, strings and tensors. It is read back
with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which builds only those
types and refuses any other object, so a checkpoint that someone planted with a pickled object
(whose ``__reduce__`` would run a command) is refused without running it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from eoforge.errors import UnsafeArtifactError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state dict saved at ``path`` (on the CPU), read with ``torch.load(weights_only=True)``.

    Raises:
        UnsafeArtifactError: the file holds something other than tensors and plain values (a pickled
            object: code would run to rebuild it), or is not a torch checkpoint at all.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeArtifactError(
            f"checkpoint {path}: refused, it holds more than tensors and plain values ({reason}). "
            "eoforge loads checkpoints with torch.load(weights_only=True) only, so that no file can run code; "
            "re-save it as a dict of tensors (e.g. torch.save({'model': model.state_dict()}, path)) "
            "from a process you trust, or train again with this eoforge"
        ) from None
    if not isinstance(state, dict):
        raise UnsafeArtifactError(f"checkpoint {path}: holds a {type(state).__name__}, not a dict of state")
    return state
