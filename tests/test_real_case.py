"""The real quiz case (scaled int16, LPS) read through the project's own loader and scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from pancreas_multitask.dataset.scan import scan_raw
from pancreas_multitask.io import load_volume


def test_real_image_is_read_scaled_with_its_geometry(real_case_dir: Path) -> None:
    path = real_case_dir / "quiz_0_324_0000.nii.gz"
    raw = nib.load(str(path))
    assert raw.get_data_dtype() == np.int16 and raw.dataobj.slope != 1.0  # the quirk under test
    volume = load_volume(path)
    assert volume.data.dtype == np.float32
    assert volume.data.shape == (187, 95, 49)
    assert volume.orientation == "LPS"
    np.testing.assert_allclose(volume.spacing, (0.877, 0.877, 3.0), atol=1e-3)
    assert volume.data.min() == np.float32(-1030.0) and volume.data.max() == np.float32(2356.0)
    # scaling applied: raw integers times slope plus intercept
    stored = np.asarray(raw.dataobj.get_unscaled())
    np.testing.assert_allclose(volume.data, stored * raw.dataobj.slope + raw.dataobj.inter, rtol=1e-5, atol=1e-2)


def test_real_case_passes_the_scan(real_case_dir: Path, tmp_path: Path, manifest) -> None:
    folder = tmp_path / "quiz" / "train" / "subtype0"
    folder.mkdir(parents=True)
    for name in ("quiz_0_324_0000.nii.gz", "quiz_0_324.nii.gz"):
        shutil.copy(real_case_dir / name, folder / name)
    (tmp_path / "quiz" / "validation").mkdir()
    result = scan_raw(tmp_path / "quiz", manifest)
    assert not result.problems
    (case,) = result.cases
    assert (case.case_id, case.split, case.subtype, case.shape, case.orientation) == ("quiz_0_324", "train", 0, (187, 95, 49), "LPS")
    mask = load_volume(case.mask)
    assert set(np.unique(mask.data)) == {0.0, 1.0, 2.0}
