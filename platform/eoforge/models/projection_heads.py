"""Projection heads and predictors shared by the objectives."""

from __future__ import annotations

from torch import nn


def projection_head(dim: int, hidden: int, out: int) -> nn.Sequential:
    """[ISPRS22] head: Linear(dim, hidden) -> ReLU -> Linear(hidden, out). Shape: (B, dim) -> (B, out)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def bn_mlp(dims: list[int], last_bn: bool = False, last_bn_affine: bool = True) -> nn.Sequential:
    """MLP with BatchNorm + ReLU after every hidden Linear (SimCLR/BYOL/Barlow/VICReg heads).

    Args:
        dims: widths, input first: ``[d, h, ..., out]``.
        last_bn: BatchNorm1d after the last Linear too (MoCo v3, Barlow Twins style).
        last_bn_affine: whether that last BatchNorm is affine.

    Shape: (B, dims[0]) -> (B, dims[-1]).
    """
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=not (last and last_bn) and last))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_bn_affine))
    return nn.Sequential(*layers)
