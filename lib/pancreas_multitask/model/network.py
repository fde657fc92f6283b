"""The multitask network: nnU-Net's encoder and decoder, plus a subtype head on encoder or decoder features.

``forward`` returns exactly what nnU-Net's network returns (the segmentation, or its deep-supervision
list), so nnU-Net's loss, validation and predictor work unchanged. The encoder runs once per forward;
the class logits of that forward are kept in ``last_class_logits``. ``forward_with_class`` returns
both instead, for callers that compile the network or batch their own passes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .settings import HeadConfig


class ClassificationHead(nn.Module):
    """Masked pooling of one or more feature maps, concatenated, then a small MLP with dropout, to ``num_classes`` logits.

    Each map is pooled on its own grid, with the mask (``weights``, (B, 1, ...) at full resolution)
    area-resampled to it: ``mean`` is the masked average, ``mean_std`` adds the masked standard
    deviation per channel (texture), ``attention`` a softmax over the masked voxels of a learned
    1x1x1 score. Where the mask is empty the pooling is the plain one over the whole map, as it is
    without weights (``pooling='avg'``).

    The MLP starts with a LayerNorm: nnU-Net's instance-normalised features pool to vectors whose
    class-relevant directions are small next to their overall scale, and without it the head learns
    an order of magnitude more slowly.
    """

    WEIGHT_FLOOR = 1e-3

    def __init__(self, channels: int | Sequence[int], config: HeadConfig):
        super().__init__()
        self.config = config
        self.channels = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
        if config.reducer == "attention":
            self.attention = nn.ModuleList(nn.Conv3d(c, 1, kernel_size=1) for c in self.channels)
        width = sum(self.channels) * (2 if config.reducer == "mean_std" else 1)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, config.hidden),
            nn.LeakyReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def pool(self, index: int, features: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """(B, C, ...) features -> (B, C) or (B, 2C) pooled vector, under the (B, 1, ...) mask ``weights``.

        In float32 whatever the autocast: sums over a full-resolution map overflow half precision."""
        features = features.float()
        dims = tuple(range(2, features.ndim))
        if weights is None:
            w = torch.ones((features.shape[0], 1, *features.shape[2:]), dtype=features.dtype, device=features.device)
        else:
            w = nn.functional.interpolate(weights.float(), size=features.shape[2:], mode="area")
            w = w + self.WEIGHT_FLOOR * (w.sum(dim=dims, keepdim=True) <= 0)  # an empty mask pools like the plain average
        if self.config.reducer == "attention":  # softmax over voxels of score + log(mask): masked voxels only, in effect
            scores = (self.attention[index](features).float() + torch.log(w)).flatten(2)
            attention = torch.softmax(scores, dim=-1)
            return (features.flatten(2) * attention).sum(dim=-1)
        total = w.sum(dim=dims)
        mean = (features * w).sum(dim=dims) / total
        if self.config.reducer == "mean":
            return mean
        centred = features - mean[(...,) + (None,) * len(dims)]
        std = torch.sqrt((centred.square() * w).sum(dim=dims) / total + 1e-6)
        return torch.cat([mean, std], dim=1)

    def forward(self, features: torch.Tensor | Sequence[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
        maps = [features] if isinstance(features, torch.Tensor) else list(features)
        if len(maps) != len(self.channels):
            raise ValueError(f"the head pools {len(self.channels)} feature map(s), got {len(maps)}")
        return self.mlp(torch.cat([self.pool(i, f, weights) for i, f in enumerate(maps)], dim=1))


class MultitaskNetwork(nn.Module):
    """nnU-Net's ``encoder``/``decoder`` (same attribute names, same state-dict keys) plus ``head``."""

    def __init__(self, segmentation_network: nn.Module, head: ClassificationHead, has_regions: bool):
        super().__init__()
        self.encoder = segmentation_network.encoder
        self.decoder = segmentation_network.decoder
        self.head = head
        self.has_regions = has_regions
        self.last_class_logits: torch.Tensor | None = None
        self._decoder_features: torch.Tensor | None = None
        if head.config.source == "decoder":  # nnU-Net's UNetDecoder runs its ``stages`` in order; the last one's output is what its seg layer sees
            self.decoder.stages[-1].register_forward_hook(self._keep_decoder_features)

    def guide_from_target(self, target: torch.Tensor) -> torch.Tensor | None:
        """The ground-truth counterpart of ``pooling_weights`` from nnU-Net's (highest-resolution) target."""
        pooling = self.head.config.pooling
        if pooling == "avg":
            return None
        if self.has_regions:  # binary region channels, like the logits
            return target[:, :1] if pooling == "foreground" else target[:, 1:2]
        return (target > 0) if pooling == "foreground" else (target == 2)

    def pooling_weights(self, segmentation: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, ...) predicted mask (probability > 0.5) for weighted pooling, from the segmentation logits.

        The hard mask matches the ground-truth masks the head is trained with; a soft map is useless
        early in training, when the background still holds sigmoid outputs of about 0.3. Under lesion pooling
        with ``fallback='foreground'``, a tile without predicted lesion pools over its predicted gland (which holds
        any lesion the segmentation missed) instead of the whole tile, which the head never saw in training.
        """
        pooling = self.head.config.pooling
        if pooling == "avg":
            return None
        logits = segmentation.detach().float()
        if self.has_regions:  # channel 0: whole pancreas region, channel 1: lesion region
            foreground, lesion = torch.sigmoid(logits[:, :1]), torch.sigmoid(logits[:, 1:2])
        else:
            probs = torch.softmax(logits, dim=1)
            foreground, lesion = 1.0 - probs[:, :1], probs[:, 2:3]
        if pooling == "foreground":
            return (foreground > 0.5).float()
        mask = (lesion > 0.5).float()
        if self.head.config.fallback == "foreground":
            empty = mask.flatten(1).sum(dim=1) == 0
            mask = torch.where(empty.view(-1, *([1] * (mask.ndim - 1))), (foreground > 0.5).float(), mask)
        return mask

    def forward_with_class(self, x: torch.Tensor, guide: torch.Tensor | None = None):
        """(segmentation as nnU-Net returns it, class logits); without side effects (``torch.compile`` traces it whole)
        except for ``source='decoder'``, whose features come from a forward hook on nnU-Net's last decoder stage.

        ``guide`` (B, 1, ...) replaces the predicted pooling weights: training passes the ground-truth
        mask so that the head learns from the lesion from the first epoch on, before the segmentation
        is any good; inference pools with the prediction.
        """
        skips = self.encoder(x)
        self._decoder_features = None
        segmentation = self.decoder(skips)
        full_resolution = segmentation[0] if isinstance(segmentation, (list, tuple)) else segmentation
        weights = self.pooling_weights(full_resolution)
        if weights is not None and guide is not None:
            weights = guide.float()
        return segmentation, self.head(self.head_features(skips), weights)

    def head_features(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The feature maps the head reads (``HeadConfig.source``), from this forward's encoder skips / decoder."""
        config = self.head.config
        if config.source == "bottleneck":
            return [skips[-1]]
        if config.source == "encoder":
            return [skips[s] for s in config.stages]
        features, self._decoder_features = self._decoder_features, None
        if features is None:
            raise RuntimeError("the last decoder stage did not run in this forward pass")
        return [features]

    def _keep_decoder_features(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._decoder_features = output

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None):
        """Segmentation as nnU-Net returns it; the class logits of this pass are kept in ``last_class_logits``."""
        segmentation, self.last_class_logits = self.forward_with_class(x, guide)
        return segmentation


def build_multitask_network(
    plans_manager,
    configuration_manager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool,
    head: HeadConfig,
    has_regions: bool,
) -> MultitaskNetwork:
    """nnU-Net's network from the plans (exactly as nnU-Net builds it), wrapped with the subtype head."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    backbone = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision
    )
    return MultitaskNetwork(backbone, ClassificationHead(head_channels(configuration_manager, head), head), has_regions)


def head_channels(configuration_manager, head: HeadConfig) -> list[int]:
    """Channels of the feature maps ``head`` reads, from the plans' ``features_per_stage``."""
    features = [int(f) for f in configuration_manager.network_arch_init_kwargs["features_per_stage"]]
    if head.source == "bottleneck":
        return [features[-1]]
    if head.source == "decoder":
        return [features[0]]  # the last decoder stage works at the first encoder stage's width
    bad = [s for s in head.stages if not 0 <= s < len(features)]
    if bad:
        raise ValueError(f"head stages {bad} out of range: these plans' encoder has stages 0..{len(features) - 1}")
    return [features[s] for s in head.stages]
