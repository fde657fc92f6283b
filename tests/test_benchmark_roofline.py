"""The inference benchmark's roofline figures (``benchmarks/roofline.py``) and the quiz-case section's helpers
(``benchmarks/quiz_case.py``): FLOP counts against hand-computed ones, tiles against nnU-Net's sliding window,
the peak from /proc/cpuinfo text, the case choice and the Markdown."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))  # quiz_case imports its sibling modules
    return load_script(REPO / "benchmarks" / f"{name}.py")


@pytest.fixture(scope="module")
def roofline():
    return _load("roofline")


def test_convolution_flops_are_counted_as_two_per_multiply_add_without_running_the_network(roofline) -> None:
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.ConvTranspose3d(4, 2, 2, stride=2))
    conv = 2 * (1 * 27) * 4 * 8**3  # every output voxel of 4 channels: 27 multiply-adds per input channel
    transposed = 2 * 4 * 8 * 2 * 8**3  # every input voxel of 4 channels: 2x2x2 kernel into 2 channels
    assert roofline.conv_flops_per_sample(network, (1, 8, 8, 8)) == conv + transposed
    assert next(network.parameters()).device.type == "cpu"  # the count runs on a meta copy


def test_the_count_of_the_project_network_on_meta_equals_the_count_of_a_real_forward(roofline, tiny_trained_model) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from pancreas_multitask.inference.predictor import make_predictor

    predictor = make_predictor(tiny_trained_model, "fast", engine="torch")
    patch = tuple(predictor.configuration_manager.patch_size)
    counted = roofline.conv_flops_per_sample(predictor.network, (1, *patch))
    real = FlopCounterMode(display=False)
    with real, torch.no_grad():
        predictor.network.forward_with_class(torch.randn(1, 1, *patch))
    convolutions = sum(v for k, v in real.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert counted == convolutions > 1e6


def test_tiles_follow_nnunets_sliding_window_and_pad_small_images(roofline) -> None:
    assert roofline.tiles_per_case((32, 64, 80), (32, 64, 80), 0.5) == 1
    assert roofline.tiles_per_case((20, 40, 50), (32, 64, 80), 0.5) == 1  # padded up to the patch
    assert roofline.tiles_per_case((48, 64, 120), (32, 64, 80), 0.5) == 2 * 1 * 2  # 16 over 32 -> 2 steps, 40 over 80 -> 2 steps


CPUINFO = "processor\t: 0\ncpu MHz\t\t: 2445.406\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\ncpu MHz\t\t: 2454.594\nflags\t\t: fpu sse avx avx2 fma\n"


def test_the_theoretical_peak_is_cores_times_clock_times_fma_width(roofline) -> None:
    peak = roofline.theoretical_peak(2, CPUINFO)
    assert peak["flop_per_cycle"] == 32 and peak["ghz"] == pytest.approx(2.45)
    assert peak["gflops"] == pytest.approx(2 * 2.45 * 32) and "2 cores x 2.45 GHz x 32 FLOP/cycle" == peak["how"]
    assert roofline.theoretical_peak(2, CPUINFO.replace("avx2 fma", "avx2 fma avx512f"))["gflops"] == pytest.approx(2 * 2.45 * 64)
    unknown = roofline.theoretical_peak(2, "")
    assert unknown["gflops"] is None and unknown["how"].startswith("unknown")
    assert roofline.flop_per_cycle({"sse", "avx"}) is None


def test_rates_are_shares_of_both_peaks_and_flag_an_effective_rate_above_the_peak(roofline) -> None:
    r = roofline.rates(100e9, 2.0, 157.0, 127.0)
    assert r["gflops"] == 50 and r["share_of_theoretical_peak"] == pytest.approx(50 / 157) and r["share_of_measured_peak"] == pytest.approx(50 / 127)
    assert not r["exceeds_peak"] and roofline.rates(400e9, 2.0, 157.0, 127.0)["exceeds_peak"]
    assert roofline.rates(1e9, 1.0, None, 10.0)["share_of_theoretical_peak"] is None


def test_the_matrix_product_peak_is_a_plausible_rate(roofline) -> None:
    assert 0.1 < roofline.measured_peak(size=256, repeats=2) < 1e5  # GFLOP/s


def _image(path: Path, size_zyx, spacing_zyx) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros(size_zyx, dtype=np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(image, str(path))
    return path


def test_the_case_closest_in_millimetres_to_the_quiz_median_is_chosen(tmp_path) -> None:
    quiz_case = _load("quiz_case")
    near = _image(tmp_path / "near.nii.gz", (60, 120, 170), (2.0, 0.75, 0.75))
    coarse_grid_same_extent = _image(tmp_path / "coarse.nii.gz", (43, 58, 87), (3.0, 1.5, 1.5))  # about the same mm: also close
    far = _image(tmp_path / "far.nii.gz", (30, 60, 90), (2.0, 0.73, 0.73))  # half the extent on every axis
    assert quiz_case.closest_to_quiz([far, near]) == near
    assert quiz_case.closest_to_quiz([far, coarse_grid_same_extent]) == coarse_grid_same_extent


def test_the_markdown_states_the_speedups_and_the_agreement(tmp_path) -> None:
    quiz_case = _load("quiz_case")
    result = {"features": [32, 64], "patch_size": [64, 128, 192], "spacing": [2.0, 0.73, 0.73], "iterations": 2,
              "case": {"id": "quiz_2_259", "shape": [55, 134, 176], "spacing": [2.0, 0.72, 0.72], "tiles": 1, "passes": 8, "gflop": 6640.0},
              "rows": [{"setting": "nnunet_defaults", "seconds": 120.0},
                       {"setting": "fast (torch)", "seconds": 100.0, "dice_vs_nnunet": {"pancreas": 1.0, "lesion": 0.9995}}]}
    text = "\n".join(quiz_case.quiz_case_markdown(result))
    assert "| fast (torch) | 100.0 | 1.20× | 1.0000 / 0.9995 |" in text and "| nnunet_defaults | 120.0 | 1.00× | – |" in text
    assert "2 CPU training iteration(s)" in text and "1 tile(s) × 8 passes" in text
