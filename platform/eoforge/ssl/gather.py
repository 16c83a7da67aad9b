"""Cross-worker gathering of embeddings, with gradients, for batch-global losses.

Contrastive and redundancy-reduction losses need the *global* batch: with 4 workers x 128
chips, NT-Xent must see 1,022 negatives per anchor, not 254. :func:`gather_cat` concatenates
every worker's rows (in rank order, worker batches may differ in size) and keeps the graph:
its backward sums the incoming gradients of all workers (all-reduce) and hands each worker
the slice of its own rows. Each worker then computes the same global loss L; DDP averages the
parameter gradients over W workers, and since every worker back-propagates L, the sum over
workers of dL/dx_local is W x dL/dx_local, so the averaged gradient is exactly dL/dtheta,
the gradient of one worker holding the whole batch.

Outside ``torch.distributed`` (one process) the functions return their input unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sizes(n: int, device: torch.device) -> list[int]:
    _, w = world()
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(w)]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def _all_gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    pad = max(sizes) - x.shape[0]
    xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    xp = xp.contiguous()
    bufs = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(bufs, xp)
    return torch.cat([b[:n] for b, n in zip(bufs, sizes, strict=True)])


class _GatherCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int) -> Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_cat(x: Tensor) -> tuple[Tensor, int]:
    """Concatenate every worker's rows of ``x``, differentiably.

    Args:
        x: this worker's rows. Shape: (n_local, ...); n_local may differ between workers.

    Returns:
        (x_all, offset): x_all has shape (sum of n_local, ...) in rank order; offset is the
        index of this worker's first row in x_all.
    """
    rank, w = world()
    if w == 1:
        return x, 0
    sizes = _sizes(x.shape[0], x.device)
    if x.requires_grad:
        return _GatherCat.apply(x, sizes, rank), sum(sizes[:rank])
    return _all_gather_padded(x, sizes), sum(sizes[:rank])


@torch.no_grad()
def gather_nograd(x: Tensor) -> Tensor:
    """Concatenate every worker's rows of ``x`` without a graph (keys of momentum encoders)."""
    return gather_cat(x.detach())[0]
