"""Every registered backbone builds for 2, 12, 13 and 202 bands and runs forward and backward."""

from __future__ import annotations

import pytest
import torch
from eoforge.config.pretrain import ModelConfig
from eoforge.errors import ConfigError
from eoforge.models.backbones import create_backbone, list_backbones, spatial_features
from eoforge.models.dual import DualBackbone, build_dual_backbone
from eoforge.models.spectral import SpectralAdapter
from timm.models import adapt_input_conv

SIZE = {"cnn": 32, "swin": 64, "vit": 32}


@pytest.mark.parametrize("bands", [2, 12, 13, 202])
@pytest.mark.parametrize("name", [b.name for b in list_backbones()])
def test_backbone_builds_for_band_count_and_backpropagates(name: str, bands: int) -> None:
    family = next(b.family for b in list_backbones() if b.name == name)
    size = SIZE[family]
    net = create_backbone(name, bands, img_size=size if family != "cnn" else None)
    x = torch.randn(2, bands, size, size)
    out = net(x)
    assert out.shape == (2, net.num_features)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    fmap = spatial_features(net, x)
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, net.num_features)
    # the fine-tuning contract: timm's forward_intermediates works on the raw module
    assert len(net.forward_intermediates(x, intermediates_only=True)) >= 1


def test_dswin_matches_the_cvprw22_configuration() -> None:
    net = create_backbone("swin_t_dswin", 13, img_size=224)
    assert net.num_features == 768 and net.embed_dim == 96
    assert [len(layer.blocks) for layer in net.layers] == [2, 2, 6, 2]
    assert net.layers[0].blocks[0].window_size == (7, 7)
    assert net.patch_embed.patch_size == (4, 4) and getattr(net, "absolute_pos_embed", None) is None


def test_vit_takes_patch_and_image_size_from_config() -> None:
    net = create_backbone("vit_s16", 12, img_size=64, patch_size=8)
    assert net.patch_embed.num_patches == 64 and net.num_features == 384
    with pytest.raises(ConfigError, match="patch size"):
        create_backbone("resnet18", 12, patch_size=8)
    with pytest.raises(ConfigError, match="neither an eoforge backbone nor a timm model"):
        create_backbone("resnet_does_not_exist", 12)


def test_spectral_adapter_front_takes_hyperspectral_input() -> None:
    hyper = [f"band{i:03d}" for i in range(202)]
    dual = build_dual_backbone(ModelConfig(backbone="resnet18", spectral_adapter=8), s2_bands=hyper)
    assert isinstance(dual.s2_adapter, SpectralAdapter) and dual.s2.conv1.in_channels == 8
    out = dual(torch.randn(2, 2, 32, 32), torch.randn(2, 202, 32, 32))
    assert out.shape == (2, 1024) and dual.s2_bands == hyper
    out.mean().backward()
    assert dual.s2_adapter.net[0].weight.grad is not None


def test_in_chans_rule_is_timms_adapt_input_conv() -> None:
    """Documented rule: repeat RGB kernels ceil(C/3) times, truncate to C, scale by 3/C."""
    rgb = torch.randn(64, 3, 7, 7)
    for c in (2, 12, 13, 202):
        w = adapt_input_conv(c, rgb.clone())
        reps = -(-c // 3)
        expected = rgb.repeat(1, reps, 1, 1)[:, :c] * (3 / c)
        assert torch.allclose(w, expected)


def test_dual_backbone_contract_is_kept() -> None:
    dual = build_dual_backbone(ModelConfig(backbone="resnet18"))
    assert isinstance(dual, DualBackbone) and dual.backbone_name == "resnet18"
    assert len(dual.s1_bands) == 2 and len(dual.s2_bands) == 12
    assert dual(torch.zeros(3, 2, 64, 64), torch.zeros(3, 12, 64, 64)).shape == (3, 1024)
