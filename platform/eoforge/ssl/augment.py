"""Earth-observation view augmentations, batched on the training device.

Two calls of :func:`augment_view` on the same chips give the two views of intra-modal
objectives (SimCLR, MoCo, BYOL, ...); :func:`augment_pair` gives the S1 and S2 views of
cross-modal ones (Dual-SimCLR, and the others with ``views: cross``) with one geometry for both.
Every sample draws its own parameters:

- random resized crop (area ``crop_scale``, aspect 3/4..4/3), resampled back to H x W
  (bilinear, via ``torchvision.ops.roi_align``);
- horizontal and vertical flips, rotations by multiples of 90 degrees (orientation carries no
  meaning in nadir imagery);
- band dropout: each band zeroed with probability ``band_dropout`` (0 is the masked value);
- additive Gaussian noise;
- S2 only: brightness/contrast jitter. SAR backscatter (dB) gets no colour jitter.

Inputs are normalised chips, (B, C, H, W), float.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import roi_align

from eoforge.config.pretrain import AugmentConfig


def _crop_boxes(b: int, h: int, w: int, scale: tuple[float, float], device: torch.device) -> Tensor:
    area = torch.empty(b, device=device).uniform_(scale[0], scale[1]) * h * w
    log_r = torch.empty(b, device=device).uniform_(math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(log_r)
    cw = torch.sqrt(area * ratio).clamp(1, w)
    ch = torch.sqrt(area / ratio).clamp(1, h)
    x0 = torch.rand(b, device=device) * (w - cw)
    y0 = torch.rand(b, device=device) * (h - ch)
    idx = torch.arange(b, device=device, dtype=cw.dtype)
    return torch.stack([idx, x0, y0, x0 + cw, y0 + ch], dim=1)


def _per_sample(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _geometry(x: Tensor, boxes: Tensor | None, flip_h: Tensor, flip_v: Tensor, k: Tensor | None) -> Tensor:
    """Crop (roi_align to the input size), flips and 90-degree rotations with drawn parameters."""
    h, w = x.shape[-2:]
    if boxes is not None:
        x = roi_align(x, boxes, output_size=(h, w), aligned=True)
    x = _per_sample(flip_h, x.flip(-1), x)
    x = _per_sample(flip_v, x.flip(-2), x)
    if k is not None:
        out = x.clone()
        for r in (1, 2, 3):
            out = _per_sample(k == r, torch.rot90(x, r, dims=(-2, -1)), out)
        x = out
    return x


def _draw_geometry(
    b: int, h: int, w: int, cfg: AugmentConfig, dev: torch.device
) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
    boxes = _crop_boxes(b, h, w, cfg.crop_scale, dev) if cfg.crop_scale != (1.0, 1.0) else None
    no = torch.zeros(b, dtype=torch.bool, device=dev)
    flip_h = torch.rand(b, device=dev) < 0.5 if cfg.flip else no
    flip_v = torch.rand(b, device=dev) < 0.5 if cfg.flip else no
    k = torch.randint(0, 4, (b,), device=dev) if cfg.rot90 and h == w else None
    return boxes, flip_h, flip_v, k


def _radiometry(x: Tensor, cfg: AugmentConfig, sar: bool) -> Tensor:
    """Band dropout, S2-only brightness/contrast jitter, Gaussian noise (per sample, per sensor)."""
    b, c = x.shape[:2]
    dev = x.device
    if cfg.band_dropout > 0:
        keep = (torch.rand(b, c, 1, 1, device=dev) >= cfg.band_dropout).to(x.dtype)
        x = x * keep
    if not sar and cfg.s2_jitter > 0:
        j = cfg.s2_jitter
        contrast = 1 + torch.empty(b, 1, 1, 1, device=dev).uniform_(-j, j)
        brightness = torch.empty(b, 1, 1, 1, device=dev).uniform_(-j, j)
        x = x * contrast + brightness
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn_like(x)
    return x


def augment_view(x: Tensor, cfg: AugmentConfig, sar: bool) -> Tensor:
    """One random view of each chip.

    Args:
        x: normalised chips. Shape: (B, C, H, W).
        cfg: augmentation settings.
        sar: True for Sentinel-1 (no brightness/contrast jitter).

    Returns:
        The augmented chips. Shape: (B, C, H, W).
    """
    b, _, h, w = x.shape
    x = x.float()
    return _radiometry(_geometry(x, *_draw_geometry(b, h, w, cfg, x.device)), cfg, sar)


def augment_pair(s1: Tensor, s2: Tensor, cfg: AugmentConfig) -> tuple[Tensor, Tensor]:
    """The two cross-modal views of each chip: one geometry for both sensors, radiometry per sensor.

    As the Dual-SimCLR code does, S1 and S2 of a chip get the same random crop box, flips and
    rotation, so the pair still shows the same ground; band dropout and noise are drawn per
    sensor, and only S2 gets brightness/contrast jitter (SAR backscatter has no colour).

    Args:
        s1: normalised S1 chips. Shape: (B, 2, H, W).
        s2: normalised S2 chips. Shape: (B, 12, H, W), the same H, W.
        cfg: augmentation settings.

    Returns:
        (s1 view, s2 view), shapes as the inputs.
    """
    b, _, h, w = s2.shape
    geometry = _draw_geometry(b, h, w, cfg, s2.device)
    return (
        _radiometry(_geometry(s1.float(), *geometry), cfg, sar=True),
        _radiometry(_geometry(s2.float(), *geometry), cfg, sar=False),
    )
