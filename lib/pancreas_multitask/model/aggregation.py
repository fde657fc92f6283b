"""Case-level subtype from per-tile class logits, weighted by how much of the pooled structure each tile shows."""

from __future__ import annotations

import torch


def tile_foreground(segmentation_logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """Fraction of each tile predicted foreground (pancreas + lesion probability > 0.5): (B, C, ...) -> (B,)."""
    logits = segmentation_logits.float()
    if has_regions:  # channel 0 is the whole-pancreas region
        foreground = torch.sigmoid(logits[:, 0])
    else:
        foreground = 1.0 - torch.softmax(logits, dim=1)[:, 0]
    return (foreground > 0.5).float().flatten(1).mean(dim=1)


LESION_FIRST = 1e-3  # foreground's share of a tile's weight under lesion pooling: decides only where no tile shows lesion


def tile_weight(segmentation_logits: torch.Tensor, has_regions: bool, pooling: str) -> torch.Tensor:
    """(B,) weight of each tile in the case's subtype: its predicted foreground fraction, and under ``lesion``
    pooling its predicted lesion fraction first (a tile without predicted lesion pooled a global average,
    which carries no lesion evidence), with the foreground deciding only when no tile shows lesion."""
    foreground = tile_foreground(segmentation_logits, has_regions)
    if pooling != "lesion":
        return foreground
    logits = segmentation_logits.float()
    lesion = torch.sigmoid(logits[:, 1]) if has_regions else torch.softmax(logits, dim=1)[:, 2]
    return (lesion > 0.5).float().flatten(1).mean(dim=1) + LESION_FIRST * foreground


def aggregate_class_probabilities(tile_logits: torch.Tensor, tile_weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the tiles' softmax probabilities: (T, K) logits, (T,) weights -> (K,).

    A tile with zero foreground gets zero weight. Only if no tile sees any foreground do all tiles
    count equally.
    """
    probs = torch.softmax(tile_logits.float(), dim=1)
    weights = tile_weights.float().clamp(min=0)
    if float(weights.sum()) <= 0:
        weights = torch.ones_like(weights)
    return (probs * weights[:, None]).sum(dim=0) / weights.sum()
