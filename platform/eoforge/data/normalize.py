"""Per-band normalisation with documented constants.

``ssl4eo`` is z-scoring with the SSL4EO-S12 statistics (Wang et al. 2022, computed on 50k
samples; see shared reference ssl-methods.md §3.3):

- Sentinel-2 L2A, reflectance x 10000, band order of :data:`eoforge.bands.S2_BAND_NAMES`;
- Sentinel-1 backscatter in dB, VV then VH.

``none`` keeps the physical units (S2 DN = reflectance x 10000, S1 dB). Masked pixels
(nodata, clouds) are set to 0 after normalisation, i.e. to the band mean for ``ssl4eo``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

S2_L2A_MEAN = np.array(
    [752.40, 884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65, 2645.52, 2368.51, 1805.07],
    dtype=np.float32,
)
S2_L2A_STD = np.array(
    [1108.03, 1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31, 1582.28, 1455.52, 1343.48],
    dtype=np.float32,
)
S1_DB_MEAN = np.array([-12.548, -20.192], dtype=np.float32)
S1_DB_STD = np.array([5.257, 5.912], dtype=np.float32)

NORMALIZATIONS = ("ssl4eo", "none")


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, valid: np.ndarray, mode: str) -> np.ndarray:
    """Normalise a chip in place-safe fashion.

    Args:
        x: float32 [C, H, W] in physical units.
        mean: float32 [C] band means.
        std: float32 [C] band standard deviations.
        valid: bool [H, W], False where this sensor's pixel is masked (``RawChip.valid[sensor]``).
        mode: ``"ssl4eo"`` or ``"none"``.

    Returns:
        float32 [C, H, W]; masked pixels are 0.
    """
    if mode == "ssl4eo":
        out = (x - mean[:, None, None]) / std[:, None, None]
    elif mode == "none":
        out = x.copy()
    else:
        raise ValueError(f"normalize: unknown mode {mode!r}; choose one of {NORMALIZATIONS}")
    out[:, ~valid] = 0.0
    return out.astype(np.float32, copy=False)


def normalize_batch(s2: Any, s1: Any, valid: Any, mode: str) -> tuple[Any, Any]:
    """Normalise a batch in storage units on the training worker's device.

    Args:
        s2: uint16 (or any numeric) tensor [B, 12, H, W], reflectance x 10000.
        s1: float16 (or any float) tensor [B, 2, H, W], dB.
        valid: bool tensor [B, 2, H, W], per sensor (channel 0 S2, 1 S1), False where the sensor's
            pixel is masked (a cloud masks S2 only).
        mode: ``"ssl4eo"`` or ``"none"``.

    Returns:
        (s2, s1) float32 tensors on the inputs' device; each sensor's masked pixels are 0.
    """
    import torch

    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize_batch: unknown mode {mode!r}; choose one of {NORMALIZATIONS}")
    keep_both = valid.to(torch.bool)
    if keep_both.ndim != 4 or keep_both.shape[1] != 2:
        raise ValueError(f"normalize_batch: valid must be [B, 2, H, W] (per sensor), got {tuple(keep_both.shape)}")
    out = []
    for c, (x, mean, std) in enumerate(((s2, S2_L2A_MEAN, S2_L2A_STD), (s1, S1_DB_MEAN, S1_DB_STD))):
        keep = keep_both[:, c : c + 1]
        x = x.to(torch.float32)
        if mode == "ssl4eo":
            m = torch.as_tensor(mean, device=x.device)[None, :, None, None]
            s = torch.as_tensor(std, device=x.device)[None, :, None, None]
            x = (x - m) / s
        out.append(torch.where(keep, x, torch.zeros((), dtype=torch.float32, device=x.device)))
    return out[0], out[1]
