import math

import pytest
import torch
from eoforge.ssl.dual_simclr import DualSimCLRLoss, dual_nt_xent


def reference_loss(u: torch.Tensor, v: torch.Tensor, tau: float) -> float:
    """Straightforward loops over the 2N anchors (ssl-methods.md §1.3)."""
    feats = [x / x.norm() for x in torch.cat([u, v]).double()]
    n = u.shape[0]
    total = 0.0
    for a in range(2 * n):
        pos = a + n if a < n else a - n
        denom = sum(math.exp(float(feats[a] @ feats[k]) / tau) for k in range(2 * n) if k != a)
        total += -math.log(math.exp(float(feats[a] @ feats[pos]) / tau) / denom)
    return total / (2 * n)


@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 0.5), (8, 16, 0.07), (5, 128, 0.2)])
def test_loss_equals_reference(n: int, d: int, tau: float) -> None:
    g = torch.Generator().manual_seed(n * d)
    u, v = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert dual_nt_xent(u, v, tau).item() == pytest.approx(reference_loss(u, v, tau), rel=1e-5)


def test_loss_is_symmetric_and_rewards_alignment() -> None:
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    assert dual_nt_xent(u, v, 0.1).item() == pytest.approx(dual_nt_xent(v, u, 0.1).item(), rel=1e-6)
    assert dual_nt_xent(u, u + 0.01 * v, 0.1) < dual_nt_xent(u, v, 0.1)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 pairs"):
        dual_nt_xent(torch.randn(1, 4), torch.randn(1, 4), 0.1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        dual_nt_xent(torch.randn(4, 4), torch.randn(4, 5), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        DualSimCLRLoss(0.0)
