"""Every loss against an independent reference on random inputs (within 1e-5).

References: the ``lightly`` package's implementations where they exist (test-only dependency),
otherwise a direct transcription of the paper's formula written here, apart from the code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from eoforge.config.pretrain import ModelConfig, ObjectiveConfig
from eoforge.errors import ConfigError
from eoforge.ssl.barlow_twins import barlow_twins_loss
from eoforge.ssl.base import cosine_momentum
from eoforge.ssl.byol import byol_loss
from eoforge.ssl.decur import decur_loss
from eoforge.ssl.dual_simclr import dual_nt_xent
from eoforge.ssl.mae import mae_loss, patchify, random_masking
from eoforge.ssl.mma import mma_nce, mma_similarity
from eoforge.ssl.moco_v2 import moco_infonce
from eoforge.ssl.moco_v3 import moco_v3_ctr
from eoforge.ssl.objectives import build_objective, list_objectives
from eoforge.ssl.simclr import nt_xent
from eoforge.ssl.vicreg import vicreg_loss

lightly_loss = pytest.importorskip("lightly.loss")

TOL = 1e-5


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


@pytest.mark.parametrize(("n", "d", "tau"), [(4, 8, 0.07), (16, 32, 0.1), (7, 128, 0.5)])
def test_nt_xent_equals_lightly(n: int, d: int, tau: float) -> None:
    u, v = randn(n, d, seed=1), randn(n, d, seed=2)
    ref = lightly_loss.NTXentLoss(temperature=tau)(u, v)
    assert nt_xent(u, v, tau).item() == pytest.approx(ref.item(), abs=TOL, rel=TOL)
    assert dual_nt_xent(u, v, tau).item() == pytest.approx(ref.item(), abs=TOL, rel=TOL)


@pytest.mark.parametrize(("n", "d", "k", "tau"), [(8, 16, 32, 0.2), (5, 64, 200, 0.07)])
def test_moco_v2_infonce_equals_lightly_memory_bank(n: int, d: int, k: int, tau: float) -> None:
    q, key = F.normalize(randn(n, d, seed=3), dim=1), F.normalize(randn(n, d, seed=4), dim=1)
    queue = F.normalize(randn(k, d, seed=5), dim=1)
    ref_fn = lightly_loss.NTXentLoss(temperature=tau, memory_bank_size=(k, d))
    ref_fn.memory_bank.bank = queue.clone()
    ref = ref_fn(q, key)  # q has no grad: the bank is not updated
    assert moco_infonce(q, key, queue, tau).item() == pytest.approx(ref.item(), abs=TOL, rel=TOL)


def _moco_v3_reference(q: torch.Tensor, k: torch.Tensor, tau: float) -> float:
    """MoCo v3 Algorithm 1, written out per row: 2 tau * mean_i -log softmax(q_i . k / tau)[i]."""
    q = q / q.norm(dim=1, keepdim=True)
    k = k / k.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ k[j]) / tau for j in range(k.shape[0])]
        m = max(logits)
        total += -(logits[i] - m - math.log(sum(math.exp(x - m) for x in logits)))
    return 2 * tau * total / q.shape[0]


def test_moco_v3_ctr_equals_paper_transcription() -> None:
    q, k = randn(6, 16, seed=6), randn(6, 16, seed=7)
    assert moco_v3_ctr(q, k, 0, 0.2).item() == pytest.approx(_moco_v3_reference(q, k, 0.2), abs=TOL, rel=TOL)
    # a worker holding rows 2..3 of the global batch sees its positives at the offset
    part = moco_v3_ctr(q[2:4], k, 2, 0.2).item()
    logits = F.normalize(q[2:4], dim=1) @ F.normalize(k, dim=1).T / 0.2
    assert part == pytest.approx(0.4 * F.cross_entropy(logits, torch.tensor([2, 3])).item(), abs=TOL)


def test_byol_loss_equals_lightly_negative_cosine() -> None:
    p, z = randn(10, 32, seed=8), randn(10, 32, seed=9)
    ref = 2 + 2 * lightly_loss.NegativeCosineSimilarity()(p, z)  # BYOL: 2 - 2 cos
    assert byol_loss(p, z).item() == pytest.approx(ref.item(), abs=TOL, rel=TOL)


@pytest.mark.parametrize(("n", "d", "lam"), [(8, 16, 0.0051), (32, 64, 0.005)])
def test_barlow_twins_equals_lightly(n: int, d: int, lam: float) -> None:
    a, b = randn(n, d, seed=10), randn(n, d, seed=11)
    ref = lightly_loss.BarlowTwinsLoss(lambda_param=lam)(a, b)
    assert barlow_twins_loss(a, b, lam).item() == pytest.approx(ref.item(), abs=TOL, rel=TOL)


@pytest.mark.parametrize(("n", "d"), [(8, 16), (32, 64)])
def test_vicreg_equals_lightly(n: int, d: int) -> None:
    a, b = randn(n, d, seed=12), 0.3 * randn(n, d, seed=13)
    ref = lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4)(a, b)
    assert vicreg_loss(a, b, 25.0, 25.0, 1.0, 1e-4).item() == pytest.approx(ref.item(), abs=TOL, rel=TOL)


def _decur_reference(z1a, z1b, z2a, z2b, k: int, lam: float) -> float:
    """ssl-methods.md §2.1 written with explicit index loops (DeCUR, ECCV 2024)."""

    def bn(z: torch.Tensor) -> list[list[float]]:
        z = z.double()
        n = z.shape[0]
        cols = []
        for j in range(z.shape[1]):
            mean = sum(float(z[i, j]) for i in range(n)) / n
            var = sum((float(z[i, j]) - mean) ** 2 for i in range(n)) / n
            cols.append([(float(z[i, j]) - mean) / math.sqrt(var + 1e-5) for i in range(n)])
        return cols  # cols[j][i]

    def corr(a, b) -> list[list[float]]:
        ca, cb = bn(a), bn(b)
        n = a.shape[0]
        return [[sum(ca[i][s] * cb[j][s] for s in range(n)) / n for j in range(len(cb))] for i in range(len(ca))]

    def intra(a, b) -> float:
        c = corr(a, b)
        d = len(c)
        return sum((1 - c[i][i]) ** 2 for i in range(d)) + lam * sum(
            c[i][j] ** 2 for i in range(d) for j in range(d) if i != j
        )

    c = corr(z1a, z2a)
    d = len(c)
    l_com = sum((1 - c[i][i]) ** 2 for i in range(k)) + lam * sum(
        c[i][j] ** 2 for i in range(k) for j in range(k) if i != j
    )
    l_uni = sum(c[i][i] ** 2 for i in range(k, d)) + lam * sum(
        c[i][j] ** 2 for i in range(k, d) for j in range(k, d) if i != j
    )
    return (intra(z1a, z1b) + intra(z2a, z2b) + (l_com + l_uni) / 2) / 3


def test_decur_equals_formula_transcription() -> None:
    z = [randn(12, 8, seed=s) for s in (14, 15, 16, 17)]
    got = decur_loss(*z, common=6, lambda_offdiag=0.0051).item()
    assert got == pytest.approx(_decur_reference(*z, k=6, lam=0.0051), abs=TOL, rel=TOL)


def _mma_reference(a: torch.Tensor, b: torch.Tensor, shift: int, tau: float) -> float:
    """Windsor et al. / SSLTransformerRS utils.py, per pair: max over offsets of the mean dot product."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    n, _, h, w = a.shape
    sim = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            best = -math.inf
            for dy in range(-shift, shift + 1):
                for dx in range(-shift, shift + 1):
                    s = 0.0
                    for y in range(h):
                        for x in range(w):
                            yy, xx = y + dy, x + dx
                            if 0 <= yy < h and 0 <= xx < w:
                                s += float(a[i, :, yy, xx] @ b[j, :, y, x])
                    best = max(best, s / (h * w))
            sim[i, j] = best
    rows = torch.softmax(sim / tau, dim=1).diag()
    cols = torch.softmax(sim / tau, dim=0).diag()
    return float(torch.cat([-rows.log(), -cols.log()]).mean())


@pytest.mark.parametrize("shift", [0, 1])
def test_mma_equals_repo_transcription(shift: int) -> None:
    a, b = randn(4, 8, 3, 3, seed=18), randn(4, 8, 3, 3, seed=19)
    got = mma_nce(mma_similarity(a, b, shift), 0.1).item()
    assert got == pytest.approx(_mma_reference(a, b, shift, 0.1), abs=TOL, rel=TOL)


def _mae_reference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """MAE forward_loss (norm_pix_loss=True), one patch at a time."""
    num, den = 0.0, 0.0
    for b in range(pred.shape[0]):
        for p in range(pred.shape[1]):
            t = target[b, p].double()
            t = (t - t.mean()) / math.sqrt(float(t.var()) + 1e-6)
            err = float(((pred[b, p].double() - t) ** 2).mean())
            num += err * float(mask[b, p])
            den += float(mask[b, p])
    return num / den


def test_mae_loss_equals_paper_transcription_and_patchify_matches_patch_embed() -> None:
    pred, target = randn(3, 16, 48, seed=20), randn(3, 16, 48, seed=21)
    _, mask = random_masking(3, 16, 0.75, torch.device("cpu"))
    assert mask.sum().item() == 3 * 12
    assert mae_loss(pred, target, mask).item() == pytest.approx(_mae_reference(pred, target, mask), abs=TOL)
    # patchify's pixel order matches a p x p convolution over the same patches
    x = randn(2, 3, 8, 8, seed=22)
    w = randn(5, 3, 4, 4, seed=23)
    conv = F.conv2d(x, w, stride=4).flatten(2).transpose(1, 2)  # (B, N, 5)
    flat = w.permute(0, 2, 3, 1).reshape(5, -1)  # (out, p*p*C) in (row, col, band) order
    assert torch.allclose(patchify(x, 4) @ flat.T, conv, atol=1e-5)


def test_cosine_momentum_equals_lightly_schedule() -> None:
    from lightly.utils.scheduler import cosine_schedule

    for step in (0, 3, 9):
        assert cosine_momentum(0.99, step / 9) == pytest.approx(cosine_schedule(step, 10, 0.99, 1.0), abs=1e-9)


def test_registry_lists_every_kind_and_configs_pick_them() -> None:
    names = [n for n, _ in list_objectives()]
    assert names == sorted(ObjectiveConfig.by_kind)
    assert {
        "dual_simclr",
        "simclr",
        "mma",
        "moco_v2",
        "moco_v3",
        "byol",
        "barlow_twins",
        "vicreg",
        "decur",
        "mae",
    } <= set(names)
    cfg = ObjectiveConfig.model_validate({"kind": "moco_v2", "queue_size": 16, "views": "intra"})
    assert type(cfg).__name__ == "MoCoV2Config" and cfg.queue_size == 16
    with pytest.raises(ConfigError, match="ViT"):
        build_objective(ObjectiveConfig.model_validate({"kind": "mae"}), ModelConfig(backbone="resnet18"))


@pytest.mark.parametrize("kind", ["simclr", "moco_v2", "byol", "barlow_twins", "vicreg", "moco_v3"])
def test_intra_objectives_train_one_modality_when_asked(kind: str) -> None:
    extra = {"queue_size": 16} if kind == "moco_v2" else {}
    cfg = ObjectiveConfig.model_validate({"kind": kind, "views": "intra", "modalities": ["s2"], **extra})
    obj = build_objective(cfg, ModelConfig(backbone="resnet18", proj_dim=16, proj_hidden_dim=32))
    obj.train()
    loss = obj(torch.randn(4, 2, 32, 32), torch.randn(4, 12, 32, 32))
    loss.backward()
    trained = [n for n, p in obj.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for n, p in obj.named_parameters() if p.requires_grad), trained
    assert not any(n.startswith("backbones.s1.") for n in trained)


def test_cross_views_share_one_geometry_and_differ_in_radiometry() -> None:
    """Dual-SimCLR's pair: the same crop box, flip and rotation for S1 and S2, noise and dropout per sensor."""
    from eoforge.config.pretrain import AugmentConfig
    from eoforge.ssl.augment import augment_pair

    torch.manual_seed(0)
    ramp = torch.arange(16.0).repeat(16, 1)  # a column index ramp: geometry shows where it lands
    s2 = ramp.expand(4, 12, 16, 16).clone()
    s1 = ramp.expand(4, 2, 16, 16).clone()
    geometric = AugmentConfig(crop_scale=(0.3, 0.6), band_dropout=0.0, noise_std=0.0, s2_jitter=0.0)
    a, b = augment_pair(s1, s2, geometric)
    torch.testing.assert_close(a[:, 0], b[:, 0])  # one geometry: identical views of identical inputs
    assert not torch.allclose(a, s1)  # and it did move the pixels
    noisy = AugmentConfig(crop_scale=(1.0, 1.0), flip=False, rot90=False, band_dropout=0.0, noise_std=0.1, s2_jitter=0)
    a, b = augment_pair(s1, s2, noisy)
    assert not torch.allclose(a[:, 0], b[:, 0])  # noise drawn per sensor
    jitter_only = AugmentConfig(crop_scale=(1.0, 1.0), flip=False, rot90=False, band_dropout=0.0, noise_std=0.0)
    a, b = augment_pair(s1, s2, jitter_only)
    torch.testing.assert_close(a, s1)  # no colour jitter on SAR
    assert not torch.allclose(b, s2)


def test_dual_simclr_augments_its_pair_only_while_training() -> None:
    cfg = ObjectiveConfig.model_validate({"kind": "dual_simclr"})
    obj = build_objective(cfg, ModelConfig(backbone="resnet18", proj_dim=16, proj_hidden_dim=32))
    s1, s2 = torch.randn(4, 2, 32, 32), torch.randn(4, 12, 32, 32)
    obj.eval()
    assert obj.cross_views(s1, s2)[0] is s1
    obj.train()
    a, b = obj.cross_views(s1, s2)
    assert a.shape == s1.shape and b.shape == s2.shape and not torch.equal(b, s2)
    off = build_objective(
        ObjectiveConfig.model_validate({"kind": "dual_simclr", "augment": None}), ModelConfig(backbone="resnet18")
    ).train()
    assert off.cross_views(s1, s2)[1] is s2
