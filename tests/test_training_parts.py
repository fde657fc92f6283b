"""Pure parts of the training recipe and the multitask network (no dataset needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pancreas_multitask.profiles import load_parameters
from pancreas_multitask.model.aggregation import aggregate_class_probabilities, tile_foreground, tile_weight
from pancreas_multitask.model.network import ClassificationHead, build_multitask_network
from pancreas_multitask.training.schedule import best_epoch, class_weights, criterion, loss_weights, should_stop
from pancreas_multitask.model.settings import HeadConfig, LossSchedule, MultitaskSettings


def test_loss_weight_schedule() -> None:
    s = LossSchedule(start=(0.9, 0.1), end=(0.5, 0.5), phase1_epochs=20, ramp_epochs=40)
    assert loss_weights(0, s) == (0.9, 0.1)
    assert loss_weights(19, s) == (0.9, 0.1)
    assert loss_weights(20, s) == pytest.approx((0.9, 0.1))  # the ramp starts here
    assert loss_weights(40, s) == pytest.approx((0.7, 0.3))  # mid-ramp
    assert loss_weights(60, s) == pytest.approx((0.5, 0.5))
    assert loss_weights(499, s) == pytest.approx((0.5, 0.5))
    assert loss_weights(25, LossSchedule(phase1_epochs=20, ramp_epochs=0)) == pytest.approx((0.5, 0.5))


def test_class_weights_from_counts() -> None:
    w = class_weights([62, 106, 84])
    assert w.mean() == pytest.approx(1.0)
    assert w[0] > w[2] > w[1]  # rarer class, larger weight
    missing = class_weights([10, 0, 5])
    assert np.isfinite(missing).all() and missing.argmax() == 1
    with pytest.raises(ValueError, match="smoothing"):
        class_weights([1, 2, 3], smoothing=0)


def test_early_stopping_bookkeeping() -> None:
    history = [0.1, 0.5, 0.4, 0.45, 0.5, 0.3]
    assert best_epoch(history) == 1  # the first maximum
    assert not should_stop(history[:4], patience=3)
    assert should_stop(history[:5], patience=3)
    assert not should_stop([], patience=1) and best_epoch([np.nan]) == -1
    assert criterion(0.8, 0.6, 0.5) == pytest.approx(0.7)


def test_settings_round_trip(tmp_path) -> None:
    s = MultitaskSettings.from_dict({"num_epochs": 7, "head": {"pooling": "lesion"}, "schedule": {"start": [0.8, 0.2]}})
    assert s.head.pooling == "lesion" and s.schedule.start == (0.8, 0.2)
    s.save(tmp_path)
    assert MultitaskSettings.load(tmp_path) == s
    with pytest.raises(ValueError, match="unknown trainer setting"):
        MultitaskSettings.from_dict({"epochs": 3})


def _configuration(features: list[int], strides: list[list[int]], blocks: list[int]):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    n = len(features)
    return ConfigurationManager({
        "patch_size": [64, 128, 192], "batch_size": 2, "spacing": [2.0, 0.73, 0.73], "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor",
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n,
                            "strides": strides, "n_blocks_per_stage": blocks, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
    })


REDUCED = _configuration([8, 16, 32, 64], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [1, 3, 4, 6])
# the ResEncM topology nnU-Net plans for the quiz data (patch 64x128x192 at 2.0x0.73x0.73 mm)
RESENC_M = _configuration([32, 64, 128, 256, 320, 320], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [1, 3, 4, 6, 6, 6])


@pytest.mark.parametrize(("config", "shape"), [(REDUCED, (2, 1, 16, 32, 32)), (RESENC_M, (1, 1, 32, 64, 64))], ids=["reduced", "resenc_m"])
def test_head_output_shapes(config, shape) -> None:
    torch.manual_seed(0)
    net = build_multitask_network(None, config, 1, 2, True, HeadConfig(num_classes=3), has_regions=True)
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert isinstance(out, list) and out[0].shape == (shape[0], 2, *shape[2:])  # deep supervision kept
    assert net.last_class_logits.shape == (shape[0], 3)
    assert net.head.mlp[1].in_features == config.network_arch_init_kwargs["features_per_stage"][-1]


def test_one_encoder_pass_and_unchanged_segmentation() -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.manual_seed(0)
    net = build_multitask_network(None, REDUCED, 1, 2, False, HeadConfig(pooling="foreground"), has_regions=True).eval()
    calls = []
    net.encoder.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        seg = net(x)
    assert len(calls) == 1
    plain = nnUNetTrainer.build_network_architecture(None, REDUCED, 1, 2, False).eval()
    missing, unexpected = plain.load_state_dict({k: v for k, v in net.state_dict().items()}, strict=False)
    assert not missing and all(k.startswith("head.") for k in unexpected)  # same keys as nnU-Net's network
    with torch.no_grad():
        torch.testing.assert_close(seg, plain(x))  # the segmentation is exactly nnU-Net's


def test_weighted_pooling_follows_the_weights() -> None:
    head = ClassificationHead(2, HeadConfig(pooling="lesion", hidden=4))
    features = torch.zeros(1, 2, 4, 4, 4)
    features[0, 0, :2] = 10.0  # channel 0 lives in the upper half
    features[0, 1, 2:] = 10.0  # channel 1 in the lower half
    weights = torch.zeros(1, 1, 8, 8, 8)
    weights[0, 0, 4:] = 1.0  # the "lesion" is in the lower half
    captured = {}
    head.mlp[0].register_forward_hook(lambda m, inp, out: captured.update(pooled=inp[0].clone()))
    head(features, weights)
    pooled = captured["pooled"][0]
    assert pooled[1] > 9.9 and pooled[0] < 0.1


def test_tile_without_foreground_has_no_weight() -> None:
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    seg = torch.full((2, 2, 4, 4, 4), -20.0)  # both regions ~0 everywhere
    seg[1, 0] = 20.0  # tile 1 is all foreground
    weights = tile_foreground(seg, has_regions=True)
    assert weights[0] == pytest.approx(0.0, abs=1e-6) and weights[1] == pytest.approx(1.0)
    probs = aggregate_class_probabilities(logits, weights)
    assert probs.argmax() == 2 and probs.sum() == pytest.approx(1.0)
    uniform = aggregate_class_probabilities(logits, torch.zeros(2))  # no foreground anywhere: tiles count equally
    assert uniform[0] == pytest.approx(uniform[2])


def test_head_learns_at_a_scaled_rate_with_the_same_decay() -> None:
    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import HeadAwarePolyLR

    backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)
    optimizer = torch.optim.AdamW([{"params": backbone.parameters()}, {"params": head.parameters()}], lr=1e-3)
    scheduler = HeadAwarePolyLR(optimizer, 1e-3, 10, head_factor=5.0)
    for epoch in (0, 4, 9):
        scheduler.step(epoch)
        base = 1e-3 * (1 - epoch / 10) ** 0.9
        assert optimizer.param_groups[0]["lr"] == pytest.approx(base)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(5 * base)


def test_training_pools_over_the_ground_truth_lesion() -> None:
    torch.manual_seed(0)
    net = build_multitask_network(None, REDUCED, 1, 2, True, HeadConfig(pooling="lesion"), has_regions=True)
    x = torch.randn(1, 1, 16, 32, 32)
    target = torch.zeros(1, 2, 16, 32, 32)  # region channels: whole pancreas, lesion
    target[0, 1, :8] = 1.0
    guide = net.guide_from_target(target)
    assert torch.equal(guide, target[:, 1:2])
    captured = {}
    net.head.mlp[0].register_forward_hook(lambda m, inp, out: captured.update(pooled=inp[0].clone()))
    with torch.no_grad():
        net.eval()
        skips = net.encoder(x)
        net(x, guide)
    w = torch.nn.functional.interpolate(guide, size=skips[-1].shape[2:], mode="area")
    expected = (skips[-1] * w).sum(dim=(2, 3, 4)) / w.sum(dim=(2, 3, 4))
    torch.testing.assert_close(captured["pooled"], expected)
    plain = build_multitask_network(None, REDUCED, 1, 3, True, HeadConfig(pooling="foreground"), has_regions=False)
    labels = torch.tensor([0, 1, 2, 2]).view(1, 1, 4, 1, 1)
    assert plain.guide_from_target(labels).flatten().tolist() == [False, True, True, True]


@pytest.mark.parametrize("fallback", ["foreground", "average"])
def test_a_tile_without_predicted_lesion_pools_over_its_predicted_gland(fallback: str) -> None:
    """At inference (no guide), lesion pooling falls back to the predicted gland, or to the whole tile (``fallback``)."""
    net = build_multitask_network(None, REDUCED, 1, 2, True, HeadConfig(pooling="lesion", fallback=fallback), has_regions=True)
    logits = torch.full((2, 2, 4, 8, 8), -5.0)  # region logits: whole pancreas, lesion
    logits[:, 0, :2] = 5.0  # both tiles: gland in the first two slices
    logits[0, 1, 0, :2, :2] = 5.0  # tile 0 also shows a small lesion; tile 1 none
    weights = net.pooling_weights(logits)
    assert torch.equal(weights[0, 0], (logits[0, 1] > 0).float())  # a predicted lesion: pooled over it alone
    if fallback == "foreground":
        assert torch.equal(weights[1, 0], (logits[1, 0] > 0).float())  # no lesion: the predicted gland
    else:
        assert weights[1].sum() == 0  # no lesion: the head pools the plain average (ClassificationHead.WEIGHT_FLOOR)
    with pytest.raises(ValueError, match="fallback"):
        HeadConfig(fallback="gland")


def test_settings_from_profile_parameters(repo) -> None:
    import yaml

    from pancreas_multitask.model.settings import settings_from_parameters

    demo = yaml.safe_load((repo / "notebooks" / "params" / "demo.yaml").read_text())
    s = settings_from_parameters(demo, num_classes=3)
    assert (s.num_epochs, s.iterations_per_epoch, s.initial_lr, s.save_every) == (demo["epochs"], demo["iterations_per_epoch"], demo["initial_lr"], demo["save_every"])
    assert {k: getattr(s.head, k) for k in demo["head"]} == {k: tuple(v) if isinstance(v, list) else v for k, v in demo["head"].items()} and s.head.num_classes == 3
    assert s.head == HeadConfig()  # the profiles' head is the default
    assert s.schedule.phase1_epochs == demo["loss_schedule"]["phase1_epochs"]
    assert s.head_lr_factor == demo["trainer_extra"]["head_lr_factor"]
    gpu = settings_from_parameters(load_parameters(repo / "notebooks" / "params", "local"), num_classes=3)
    assert (gpu.num_epochs, gpu.iterations_per_epoch, gpu.initial_lr, gpu.patience) == (500, 250, 1e-4, 100)


def test_under_lesion_pooling_tiles_that_show_lesion_decide() -> None:
    seg = torch.full((3, 2, 4, 4, 4), -20.0)
    seg[:, 0] = 20.0  # every tile all foreground
    seg[1, 1, :2] = 20.0  # tile 1: half of it lesion
    weights = tile_weight(seg, has_regions=True, pooling="lesion")
    assert weights[1] > 100 * weights[0] and weights[0] == pytest.approx(weights[2])
    assert torch.equal(tile_weight(seg, has_regions=True, pooling="foreground"), torch.ones(3))
    no_lesion = tile_weight(seg[[0, 2]], has_regions=True, pooling="lesion")  # no tile shows lesion: foreground decides
    assert no_lesion.min() > 0


HEAD_VARIANTS = [
    HeadConfig(pooling="avg"),  # the seed's
    HeadConfig(pooling="lesion", reducer="mean_std"),
    HeadConfig(pooling="lesion", reducer="attention"),
    HeadConfig(pooling="lesion", source="encoder", stages=(0, 2)),
    HeadConfig(pooling="lesion", source="decoder", reducer="mean_std"),
]


@pytest.mark.parametrize("head", HEAD_VARIANTS, ids=lambda h: h.describe())
def test_head_variants_read_their_features_and_keep_nnunets_network(head) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.manual_seed(0)
    net = build_multitask_network(None, REDUCED, 1, 2, False, head, has_regions=True).eval()
    features = REDUCED.network_arch_init_kwargs["features_per_stage"]
    expected = {"bottleneck": [features[-1]], "decoder": [features[0]], "encoder": [features[s] for s in head.stages]}[head.source]
    assert net.head.channels == expected
    assert net.head.mlp[1].in_features == sum(expected) * (2 if head.reducer == "mean_std" else 1)
    seen = {}
    net.head.register_forward_pre_hook(lambda m, args: seen.update(shapes=[tuple(f.shape[1:]) for f in args[0]]))
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        seg, logits = net.forward_with_class(x)
    assert logits.shape == (2, 3) and [s[0] for s in seen["shapes"]] == expected
    if head.source == "decoder":
        assert seen["shapes"][0][1:] == (16, 32, 32)  # full resolution: what nnU-Net's segmentation layer sees
    plain = nnUNetTrainer.build_network_architecture(None, REDUCED, 1, 2, False).eval()
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(k.startswith("head.") for k in unexpected)
    with torch.no_grad():
        torch.testing.assert_close(seg, plain(x))  # every variant leaves the segmentation exactly nnU-Net's


def test_second_order_and_attention_pooling_stay_inside_the_mask() -> None:
    features = torch.zeros(1, 1, 4, 4, 4)
    features[0, 0, 2:] = torch.tensor([0.0, 4.0]).repeat(2, 4, 2)[:, :, :4]  # lower half: 0 and 4 alternating (sd 2)
    features[0, 0, :2] = 100.0  # upper half: outside the mask, far away
    weights = torch.zeros(1, 1, 4, 4, 4)
    weights[0, 0, 2:] = 1.0
    stats = ClassificationHead(1, HeadConfig(pooling="lesion", reducer="mean_std", hidden=4))
    mean, std = stats.pool(0, features, weights)[0]
    assert float(mean) == pytest.approx(2.0) and float(std) == pytest.approx(2.0, rel=1e-3)  # nothing of the upper half
    empty = stats.pool(0, features, torch.zeros_like(weights))[0]  # an empty mask: the whole map
    assert float(empty[0]) == pytest.approx(51.0, rel=1e-4)
    attention = ClassificationHead(1, HeadConfig(pooling="lesion", reducer="attention", hidden=4))
    torch.nn.init.zeros_(attention.attention[0].weight)
    torch.nn.init.zeros_(attention.attention[0].bias)  # a flat score: attention is the masked average
    assert float(attention.pool(0, features, weights)[0, 0]) == pytest.approx(2.0, rel=1e-4)
    assert float(attention.pool(0, features, None)[0, 0]) == pytest.approx(51.0, rel=1e-4)  # no mask: every voxel


def test_head_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="reducer"):
        HeadConfig(reducer="max")
    with pytest.raises(ValueError, match="out of range"):
        build_multitask_network(None, REDUCED, 1, 2, False, HeadConfig(source="encoder", stages=(7,)), has_regions=True)
    again = MultitaskSettings.from_dict(MultitaskSettings(head=HeadConfig(source="encoder", stages=(1, 2), pooling="avg")).to_dict())
    assert again.head.stages == (1, 2) and again.head.describe() == "encoder stages 1,2 · avg · mean"


def test_patience_must_reach_the_next_case_level_pass() -> None:
    """The criterion exists only where a case-level pass ran: patience below case_val_every would stop before the next one."""
    from pancreas_multitask.model.settings import MultitaskSettings

    with pytest.raises(ValueError, match=r"patience \(3\) must be at least case_val_every \(10\)"):
        MultitaskSettings(patience=3, case_val_every=10)
    with pytest.raises(ValueError, match="case_val_every must be at least 1"):
        MultitaskSettings(case_val_every=0)
    assert MultitaskSettings(patience=10, case_val_every=10).patience == 10
