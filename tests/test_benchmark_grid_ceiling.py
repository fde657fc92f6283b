"""The grid's ceiling (``benchmarks/grid_ceiling.py``): a true mask through nnU-Net's resampling to a grid and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid():
    return load_script(REPO / "benchmarks" / "grid_ceiling.py")


def _mask() -> np.ndarray:
    z, y, x = np.ogrid[:24, :60, :60]
    seg = np.zeros((24, 60, 60), np.int16)
    seg[((z - 12) / 9.0) ** 2 + ((y - 30) / 22.0) ** 2 + ((x - 30) / 22.0) ** 2 <= 1] = 1
    seg[((z - 12) / 2.0) ** 2 + ((y - 28) / 4.0) ** 2 + ((x - 33) / 4.0) ** 2 <= 1] = 2  # a small lesion: a few mm
    return seg


def test_the_image_grid_keeps_the_mask_and_a_coarse_one_loses_the_small_lesion_first(grid) -> None:
    seg, spacing = _mask(), (2.0, 0.75, 0.75)
    truth = {name: np.isin(seg, labels) for name, labels in grid.REGIONS.items()}
    same = grid.round_trip(seg, spacing, spacing)
    assert grid.dice(same["pancreas"], truth["pancreas"]) == pytest.approx(1.0) and grid.dice(same["lesion"], truth["lesion"]) == pytest.approx(1.0)
    coarse = grid.round_trip(seg, spacing, (4.0, 3.0, 3.0))
    pancreas, lesion = grid.dice(coarse["pancreas"], truth["pancreas"]), grid.dice(coarse["lesion"], truth["lesion"])
    assert 0.8 < pancreas < 1.0 and lesion < pancreas  # the boundary costs the small structure more
    assert coarse["pancreas"].shape == seg.shape
    assert grid.dice(np.zeros(3, bool), np.zeros(3, bool)) is None


def test_the_summary_and_table(grid) -> None:
    cases = {f"c{i}": {"spacing": [2.0, 0.7, 0.7], "by_spacing": {"2.5×1.5×1.5": {"pancreas": 0.9 + 0.01 * i, "lesion": None if i == 0 else 0.8}}} for i in range(3)}
    summary = grid.summarise(cases, [[2.5, 1.5, 1.5]], resamples=200)
    entry = summary["2.5×1.5×1.5"]
    assert entry["pancreas"]["mean"] == pytest.approx(0.91) and entry["pancreas"]["min"] == pytest.approx(0.9) and entry["lesion"]["cases"] == 2
    text = grid.markdown({"cases": 3, "data": "real_ct", "median_spacing": [2.0, 0.7, 0.7], "summary": summary})
    assert "| 2.5×1.5×1.5 | 0.910 [" in text and "| 0.800 [0.800, 0.800] | 0.800 |" in text
