"""Case-level subtype of a whole preprocessed case: all sliding-window tiles, foreground-weighted."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..inference.aggregation import aggregate_class_probabilities, tile_weight


@torch.no_grad()
def classify_case(network, data: np.ndarray, patch_size: Sequence[int], step: float, device: torch.device, tile_batch: int = 2) -> np.ndarray:
    """Class probabilities of one case ``data`` (C, ...) from every tile of nnU-Net's sliding-window grid.

    Tiles go through the network ``tile_batch`` at a time (on CPU a batch of 2 costs about as much as 1).
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = pad_nd_image(np.asarray(data, dtype=np.float32), list(patch_size), "constant", {"constant_values": 0}, False)
    steps = compute_steps_for_sliding_window(padded.shape[1:], list(patch_size), step)
    starts = np.array(np.meshgrid(*steps, indexing="ij")).reshape(len(steps), -1).T
    tiles = [padded[(slice(None), *(slice(int(s), int(s) + p) for s, p in zip(start, patch_size)))] for start in starts]
    logits, weights = [], []
    for i in range(0, len(tiles), tile_batch):
        batch = torch.from_numpy(np.stack(tiles[i : i + tile_batch])).to(device)
        segmentation = network(batch)
        full = segmentation[0] if isinstance(segmentation, (list, tuple)) else segmentation
        logits.append(network.last_class_logits.float().cpu())
        weights.append(tile_weight(full, network.has_regions, network.head.config.pooling).cpu())
    return aggregate_class_probabilities(torch.cat(logits), torch.cat(weights)).numpy()
