"""Oracle pooling: the deployed case-level estimator, with the head pooling over the *true* lesion.

For the learnability study's error decomposition (``benchmarks/classification_learnability.py``): the
same sliding window, tiles, passes and tile aggregation as ``MultitaskPredictor.predict_preprocessed``,
except that every tile's head pools over the ground-truth mask (as in training, ``guide``) and every tile
is weighted by the true lesion it shows. The difference to the deployed estimator is what the predicted
lesion costs the classification.

The truth travels through nnU-Net's sliding window as an extra input channel, so it is cut, padded and
flipped exactly like the image; the forward function splits it off before the network sees the image.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.aggregation import LESION_FIRST
from .predictor import MultitaskPredictor


class OraclePoolingPredictor(MultitaskPredictor):
    """``predict_with_truth(data, truth)``: segmentation logits and subtype probabilities under oracle pooling.

    Use it with a mode that batches its own passes (``tile_batch_size`` > 1 or ``flips_in_batch``): nnU-Net's
    own mirroring would call the network without the split.
    """

    def __init__(self, *args, engine: str = "torch", **kwargs) -> None:
        super().__init__(*args, engine="torch", **kwargs)  # the truth channel is split off in Python: torch only

    def use_network(self, *args, **kwargs) -> None:
        super().use_network(*args, **kwargs)
        if self._nnunet_passes:
            raise ValueError("oracle pooling needs a mode that batches its own passes (tile_batch_size > 1 or flips_in_batch)")
        network = self._network_module
        self._guide: torch.Tensor | None = None

        def forward_with_truth(x: torch.Tensor):
            image, truth = x[:, :-1], x[:, -1:]
            self._guide = torch.cat([truth == 2, truth > 0], dim=1).float()  # lesion, foreground
            guide = self._guide[:, :1] if network.head.config.pooling == "lesion" else self._guide[:, 1:]
            return network.forward_with_class(image, None if network.head.config.pooling == "avg" else guide)

        self._forward_with_class = forward_with_truth

    def _keep_tiles(self, output, class_logits: torch.Tensor) -> None:
        """Each tile weighted by the true structure it shows (lesion first, as ``tile_weight`` does with the prediction)."""
        if self._guide is None:
            raise RuntimeError("oracle pooling: a tile without its truth channel")
        lesion, foreground = self._guide[:, 0].flatten(1).mean(dim=1), self._guide[:, 1].flatten(1).mean(dim=1)
        weight = foreground if self._network_module.head.config.pooling != "lesion" else lesion + LESION_FIRST * foreground
        self._tiles[0].append(class_logits.float().cpu())
        self._tiles[1].append(weight.cpu())

    def predict_with_truth(self, data: np.ndarray, truth: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """(C, ...) preprocessed image and (1, ...) its label map on the same grid (0 background, 1 pancreas, 2 lesion;
        negative values outside nnU-Net's crop count as background) -> (logits, subtype probabilities)."""
        if truth.shape[1:] != data.shape[1:]:
            raise ValueError(f"truth of shape {truth.shape} for data of shape {data.shape}")
        stacked = np.concatenate([data, np.clip(truth, 0, None).astype(data.dtype)], axis=0)
        logits, probabilities = self.predict_preprocessed(stacked)
        return logits, probabilities
