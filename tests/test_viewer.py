"""The evaluation case viewer: builds headless, starts at the largest lesion, follows plane/case/shortcut changes,
and falls back to a static montage under papermill."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pancreas_multitask.evaluation.evaluate import PER_CASE_COLUMNS
from pancreas_multitask.evaluation.figures import error_labels
from pancreas_multitask.evaluation.viewer import WINDOW_PRESETS, CaseViewer, readout_text, show_viewer, static_views
from pancreas_multitask.visualization import plane, window

SPACING = (0.8, 0.8, 2.5)
NAMES = ("subtype0", "subtype1", "subtype2")


def _save(path: Path, data: np.ndarray, dtype: type) -> str:
    nib.save(nib.Nifti1Image(data.astype(dtype), np.diag([*SPACING, 1.0])), str(path))
    return str(path)


def make_case(root: Path, name: str, shape: tuple[int, int, int], lesions: list[tuple[slice, slice, int]]) -> dict[str, str]:
    """HU image, GT with a pancreas block and lesion patches (x, y, z), prediction = GT shifted by one voxel in x."""
    rng = np.random.default_rng(len(name))
    image = rng.normal(40, 20, shape)
    gt = np.zeros(shape, np.uint8)
    gt[2:9, 4:10, 2:-2] = 1
    for xs, ys, z in lesions:
        gt[xs, ys, z] = 2
    pred = np.roll(gt, 1, axis=0)
    return {
        "image_file": _save(root / f"{name}_0000.nii.gz", image, np.int16),
        "gt_file": _save(root / f"{name}_gt.nii.gz", gt, np.uint8),
        "pred_file": _save(root / f"{name}_pred.nii.gz", pred, np.uint8),
    }


# case A (12, 14, 10): lesion 3x2 at z=4 (x 3-5, y 6-7) and 2 voxels at z=6 (x 5, y 7-8)
#   per z: z4=6, z6=2 -> axial 4; per y: y6=3, y7=4, y8=1 -> coronal 7; per x: x3=2, x4=2, x5=4 -> sagittal 5
A_LESIONS = [(slice(3, 6), slice(6, 8), 4), (slice(5, 6), slice(7, 9), 6)]
# case B (12, 14, 16): one 2x3 lesion at z=11 (x 6-7, y 5-7) -> axial 11, coronal 5, sagittal 6
B_LESIONS = [(slice(6, 8), slice(5, 8), 11)]
C_LESIONS = [(slice(4, 6), slice(8, 10), 3)]


@pytest.fixture(scope="module")
def per_case(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("viewer")
    a = make_case(root, "A", (12, 14, 10), A_LESIONS)
    b = make_case(root, "B", (12, 14, 16), B_LESIONS)
    c = make_case(root, "C", (12, 14, 10), C_LESIONS)
    rows = [
        # case, files, true, predicted, p, DSC pancreas, DSC lesion
        {"case": "A", **a, "subtype_true": 0, "subtype_pred": 0, "prob_pred": 0.91, "dsc_pancreas": 0.9, "dsc_lesion": 0.8},
        {"case": "B", **b, "subtype_true": 1, "subtype_pred": 2, "prob_pred": 0.64, "dsc_pancreas": 0.7, "dsc_lesion": 0.3},  # misclassified
        {"case": "C", **c, "subtype_true": 2, "subtype_pred": 2, "prob_pred": 0.55, "dsc_pancreas": 0.85, "dsc_lesion": 0.1234},  # worst
        {"case": "D", **a, "pred_file": "", "subtype_true": 0, "subtype_pred": None, "prob_pred": np.nan, "dsc_pancreas": np.nan, "dsc_lesion": np.nan},
        {"case": "E", **a, "image_file": np.nan, "subtype_true": 1, "subtype_pred": 0, "prob_pred": 0.5, "dsc_pancreas": 0.0, "dsc_lesion": 0.0},
    ]
    frame = pd.DataFrame([{**r, "mask_file": f"{r['case']}.nii.gz"} for r in rows], columns=PER_CASE_COLUMNS)
    frame["subtype_pred"] = frame["subtype_pred"].astype("Int64")
    return frame


@pytest.fixture()
def viewer(per_case: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> CaseViewer:
    built = CaseViewer(per_case, NAMES)
    assert "skipping 2 case(s)" in capsys.readouterr().out
    return built


def _image_axes(viewer: CaseViewer):
    assert isinstance(viewer.figure, Figure)
    return next(ax for ax in viewer.figure.axes if ax.images)


def test_builds_headless_at_largest_lesion(viewer: CaseViewer) -> None:
    assert isinstance(viewer.widget, ipywidgets.VBox)
    assert [value for _, value in viewer.case.options] == ["A", "B", "C"]  # D (no prediction) and E (no image) skipped
    assert viewer.case.value == "A" and viewer.plane.value == "axial"
    assert (viewer.slice.value, viewer.slice.max) == (4, 9)
    ax = _image_axes(viewer)
    assert ax.get_aspect() == pytest.approx(SPACING[1] / SPACING[0])
    assert "A: error, axial 4/9 (largest GT lesion)" in ax.get_title()
    assert "DSC pancreas <b>0.900</b>" in viewer.readout.value and "lesion <b>0.800</b>" in viewer.readout.value


@pytest.mark.parametrize(("axis", "start", "top", "aspect"), [("coronal", 7, 13, 2.5 / 0.8), ("sagittal", 5, 11, 2.5 / 0.8), ("axial", 4, 9, 1.0)])
def test_plane_sets_slider_range_start_and_aspect(viewer: CaseViewer, axis: str, start: int, top: int, aspect: float) -> None:
    viewer.plane.value = axis
    assert (viewer.slice.value, viewer.slice.max) == (start, top)
    viewer.slice.value = 0
    viewer.plane.value = "coronal" if axis == "sagittal" else "sagittal"
    viewer.plane.value = axis  # back again: the slider returns to the lesion slice
    assert (viewer.slice.value, viewer.slice.max) == (start, top)
    assert _image_axes(viewer).get_aspect() == pytest.approx(aspect)
    assert _image_axes(viewer).images[0].get_array().shape == plane(np.zeros((12, 14, 10)), SPACING, start, axis)[0].shape


def test_case_change_updates_slider_and_readout(viewer: CaseViewer) -> None:
    viewer.case.value = "B"
    assert (viewer.slice.value, viewer.slice.max) == (11, 15)
    text = viewer.readout.value
    assert "DSC pancreas <b>0.700</b>" in text and "lesion <b>0.300</b>" in text
    assert "subtype2" in text and "(p=0.64)" in text and "true <b>subtype1</b>" in text and "misclassified" in text
    viewer.plane.value = "coronal"
    assert (viewer.slice.value, viewer.slice.max) == (5, 13)
    viewer.case.value = "A"  # keeps the plane, jumps to A's coronal lesion slice
    assert (viewer.slice.value, viewer.slice.max) == (7, 13)
    assert "subtype0" in viewer.readout.value and "correct" in viewer.readout.value


def test_controls_redraw_with_window_opacity_and_view(viewer: CaseViewer) -> None:
    vols = viewer.volumes("A")
    viewer.slice.value = 6
    viewer.window.value = "wide W1500/L-300"
    viewer.opacity.value = 0.25
    ax = _image_axes(viewer)
    ct, overlay = ax.images
    level, width = WINDOW_PRESETS["wide W1500/L-300"]
    np.testing.assert_allclose(ct.get_array(), window(plane(vols.image, SPACING, 6, "axial")[0], level, width))
    np.testing.assert_array_equal(overlay.get_array(), plane(error_labels(vols.gt, vols.pred), SPACING, 6, "axial")[0])
    assert overlay.get_alpha() == 0.25 and "axial 6/9" in ax.get_title() and "largest" not in ax.get_title()
    viewer.view.value = "prediction"
    np.testing.assert_array_equal(_image_axes(viewer).images[1].get_array(), plane(vols.pred, SPACING, 6, "axial")[0])
    viewer.view.value = "ground truth"
    np.testing.assert_array_equal(_image_axes(viewer).images[1].get_array(), plane(vols.gt, SPACING, 6, "axial")[0])


def test_shortcuts_select_worst_and_misclassified(viewer: CaseViewer) -> None:
    viewer.show_misclassified()
    assert [value for _, value in viewer.case.options] == ["B"]
    assert viewer.case.value == "B" and (viewer.slice.value, viewer.slice.max) == (11, 15)
    viewer.show_worst()
    assert [value for _, value in viewer.case.options] == ["C", "B", "A"]  # by the lower of the two DSCs
    assert viewer.case.value == "C" and "lesion <b>0.123</b>" in viewer.readout.value
    assert viewer.slice.value == 3
    viewer.step()
    assert viewer.case.value == "B"
    viewer.case_list.value = "all cases"
    assert viewer.case.value == "A"


def test_cache_keeps_only_the_last_cases(per_case: pd.DataFrame) -> None:
    small = CaseViewer(per_case, NAMES, cache_size=2)
    first = small.volumes("A")
    assert small.volumes("A") is first  # cached, not reloaded
    small.case.value = "B"
    small.case.value = "C"
    assert list(small._cache) == ["B", "C"]


def test_readout_text_formats_and_missing_prediction(per_case: pd.DataFrame) -> None:
    rows = per_case.set_index("case", drop=False)
    assert readout_text(rows.loc["B"], NAMES) == "B: DSC pancreas 0.700, lesion 0.300; subtype: predicted subtype2 (p=0.64), true subtype1, misclassified"
    assert readout_text(rows.loc["D"], NAMES) == "D: DSC pancreas n/a, lesion n/a; subtype: no prediction (true subtype0)"


def test_no_viewable_case_is_an_error(per_case: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no case"):
        CaseViewer(per_case[per_case["case"].isin(["D", "E"])], NAMES)


@pytest.mark.parametrize(("n", "rows"), [(1, ["C", "B"]), (3, ["C", "B", "A"])])
def test_static_views_rows_are_worst_and_misclassified(per_case: pd.DataFrame, n: int, rows: list[str]) -> None:
    fig = static_views(per_case, NAMES, n=n)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * len(rows)
    titles = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert [t.split("] ")[1].split(":")[0] for t in titles] == rows
    expected = "[misclassified] B: DSC pancreas 0.700" if n == 1 else "[worst DSC] B: DSC pancreas 0.700"
    assert titles[1].startswith(expected) and "predicted subtype2 (p=0.64), true subtype1" in titles[1]
    # C's lesion: axial 3, coronal 8, sagittal 4
    assert [ax.get_title() for ax in fig.axes[:3]] == ["axial 3", "coronal 8", "sagittal 4"]


def test_show_viewer_headless_returns_static_figure(per_case: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANCREAS_HEADLESS", "1")
    monkeypatch.setattr("pancreas_multitask.evaluation.viewer.widgets_available", lambda: True)
    shown = show_viewer(per_case, NAMES)
    assert isinstance(shown, Figure) and len(shown.axes) == 9


def test_show_viewer_interactive_returns_widget(per_case: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PANCREAS_HEADLESS", raising=False)
    assert isinstance(show_viewer(per_case, NAMES), Figure)  # no kernel in pytest: static fallback
    monkeypatch.setattr("pancreas_multitask.evaluation.viewer.widgets_available", lambda: True)
    assert isinstance(show_viewer(per_case, NAMES), ipywidgets.VBox)


def test_lesion_slice_takes_float_masks_as_they_are_stored() -> None:
    from pancreas_multitask.visualization import lesion_slice

    labels = np.zeros((6, 6, 5), dtype=np.float32)
    labels[1:4, 1:4, 1] = 1.0000152587890625  # pancreas only
    labels[2, 2, 3] = 1.9999847  # one lesion voxel, stored just below 2
    assert lesion_slice(labels, "axial") == 3 and lesion_slice(labels, "sagittal") == 2
    assert lesion_slice(np.where(labels > 1.5, 0, labels), "axial") == 1  # no lesion: most foreground
