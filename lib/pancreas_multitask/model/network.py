"""The multitask network: nnU-Net's encoder and decoder, plus a subtype head on the deepest encoder stage.

``forward`` returns exactly what nnU-Net's network returns (the segmentation, or its deep-supervision
list), so nnU-Net's loss, validation and predictor work unchanged. The encoder runs once per forward;
the class logits of that forward are kept in ``last_class_logits``. ``forward_with_class`` returns
both instead, for callers that compile the network or batch their own passes.
"""

from __future__ import annotations

import torch
from torch import nn

from .settings import HeadConfig


class ClassificationHead(nn.Module):
    """Pooling of the bottleneck features, then a small MLP with dropout, to ``num_classes`` logits.

    The MLP starts with a LayerNorm: nnU-Net's instance-normalised features pool to vectors whose
    class-relevant directions are small next to their overall scale, and without it the head learns
    an order of magnitude more slowly.

    ``pooling='avg'`` is global average pooling. ``'foreground'`` / ``'lesion'`` average over the
    predicted foreground (pancreas + lesion) or lesion mask, resampled to the bottleneck grid and
    detached (the weights steer the head, not the segmentation). A small floor keeps the pooling
    defined, and equal to the plain average, where nothing is predicted.
    """

    WEIGHT_FLOOR = 1e-3

    def __init__(self, in_channels: int, config: HeadConfig):
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_channels),
            nn.Linear(in_channels, config.hidden),
            nn.LeakyReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        dims = tuple(range(2, features.ndim))
        if weights is None:
            pooled = features.mean(dim=dims)
        else:
            w = nn.functional.interpolate(weights, size=features.shape[2:], mode="area") + self.WEIGHT_FLOOR
            pooled = (features * w).sum(dim=dims) / w.sum(dim=dims)
        return self.mlp(pooled)


class MultitaskNetwork(nn.Module):
    """nnU-Net's ``encoder``/``decoder`` (same attribute names, same state-dict keys) plus ``head``."""

    def __init__(self, segmentation_network: nn.Module, head: ClassificationHead, has_regions: bool):
        super().__init__()
        self.encoder = segmentation_network.encoder
        self.decoder = segmentation_network.decoder
        self.head = head
        self.has_regions = has_regions
        self.last_class_logits: torch.Tensor | None = None

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
        early in training, when the background still holds sigmoid outputs of about 0.3.
        """
        pooling = self.head.config.pooling
        if pooling == "avg":
            return None
        logits = segmentation.detach().float()
        if self.has_regions:  # channel 0: whole pancreas region, channel 1: lesion region
            probability = torch.sigmoid(logits[:, :1] if pooling == "foreground" else logits[:, 1:2])
        else:
            probs = torch.softmax(logits, dim=1)
            probability = 1.0 - probs[:, :1] if pooling == "foreground" else probs[:, 2:3]
        return (probability > 0.5).float()

    def forward_with_class(self, x: torch.Tensor, guide: torch.Tensor | None = None):
        """(segmentation as nnU-Net returns it, class logits), without side effects (``torch.compile`` traces it whole).

        ``guide`` (B, 1, ...) replaces the predicted pooling weights: training passes the ground-truth
        mask so that the head learns from the lesion from the first epoch on, before the segmentation
        is any good; inference pools with the prediction.
        """
        skips = self.encoder(x)
        segmentation = self.decoder(skips)
        full_resolution = segmentation[0] if isinstance(segmentation, (list, tuple)) else segmentation
        weights = self.pooling_weights(full_resolution)
        if weights is not None and guide is not None:
            weights = guide.float()
        return segmentation, self.head(skips[-1], weights)

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
    bottleneck = configuration_manager.network_arch_init_kwargs["features_per_stage"][-1]
    return MultitaskNetwork(backbone, ClassificationHead(int(bottleneck), head), has_regions)
