"""2 workers x batch B give the loss and gradients of 1 worker x batch 2B.

Two real processes (torch.multiprocessing spawn) join a gloo process group and train under
DistributedDataParallel, the way Ray Train's workers do; no mocks. The objectives run in eval
mode so BatchNorm uses its running statistics: per-worker BatchNorm batch statistics are the
one thing that differs by design (SyncBatchNorm on CUDA), everything else must match.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from eoforge.config.pretrain import ModelConfig, ObjectiveConfig
from eoforge.ssl.gather import gather_cat
from eoforge.ssl.objectives import build_objective

KINDS = {
    "dual_simclr": {"temperature": 0.1},
    "barlow_twins": {},
    "moco_v3": {"pred_hidden_dim": 32},
}
MODEL = ModelConfig(backbone="resnet18", proj_dim=16, proj_hidden_dim=32)
B = 4  # per worker


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(2 * B, 2, 32, 32, generator=g), torch.randn(2 * B, 12, 32, 32, generator=g)


def _build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    obj = build_objective(ObjectiveConfig.model_validate({"kind": kind, **KINDS[kind]}), MODEL)
    return obj.eval()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    s1, s2 = _data()
    results = {}
    for kind in KINDS:
        ddp = torch.nn.parallel.DistributedDataParallel(_build(kind))
        loss = ddp(s1[rank * B : (rank + 1) * B], s2[rank * B : (rank + 1) * B])
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        results[kind] = {"loss": float(mean) / 2, "grads": _grads(ddp.module)}
    # uneven batches (3 + 5 rows) gather in rank order, gradient slices go back to their owners
    x = torch.arange(8.0).view(8, 1)[: 3 if rank == 0 else 8][(0 if rank == 0 else 3) :].requires_grad_(True)
    allx, offset = gather_cat(x)
    (allx.squeeze(1) * torch.arange(1.0, 9.0)).sum().backward()
    results["uneven"] = {"all": allx.detach(), "offset": offset, "grad": x.grad.clone()}
    if rank == 0:
        torch.save(results, out)
    else:
        torch.save(results, out + ".1")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = str(tmp_path_factory.mktemp("ddp") / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    return {0: torch.load(out, weights_only=True), 1: torch.load(out + ".1", weights_only=True)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_two_workers_equal_one_worker_with_the_global_batch(two_workers: dict, kind: str) -> None:
    model = _build(kind)
    s1, s2 = _data()
    loss = model(s1, s2)
    loss.backward()
    ref = _grads(model)
    got = two_workers[0][kind]
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert set(got["grads"]) == set(ref)
    # parameters whose true gradient is 0 (a bias in front of a standardisation) carry float noise only,
    # so each difference is measured against the largest gradient of the model
    scale = max(float(g.abs().max()) for g in ref.values())
    worst = max(float((got["grads"][n] - ref[n]).abs().max()) for n in ref) / scale
    assert worst < 1e-5, f"{kind}: largest gradient difference {worst:.2e} of the largest gradient"
    assert scale > 0
    # both workers hold the same (averaged) gradients
    for n in ref:
        assert torch.allclose(two_workers[1][kind]["grads"][n], got["grads"][n], atol=1e-7)


def test_uneven_worker_batches_gather_in_rank_order(two_workers: dict) -> None:
    r0, r1 = two_workers[0]["uneven"], two_workers[1]["uneven"]
    assert torch.equal(r0["all"].squeeze(1), torch.arange(8.0)) and (r0["offset"], r1["offset"]) == (0, 3)
    # each worker back-propagates the same global sum; its rows get the all-reduced gradient
    assert torch.equal(r0["grad"].squeeze(1), 2 * torch.arange(1.0, 4.0))
    assert torch.equal(r1["grad"].squeeze(1), 2 * torch.arange(4.0, 9.0))
    assert Path  # keep import for tmp paths
