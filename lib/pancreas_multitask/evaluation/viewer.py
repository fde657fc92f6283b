"""Interactive case viewer (ipywidgets) for the evaluation notebook, with a static fallback when headless.

``show_viewer(per_case, class_names)`` shows ``CaseViewer`` in a live notebook and ``static_views``
under papermill (``PANCREAS_HEADLESS=1``) or without a widget frontend, so the exported HTML still
holds the same error overlays. ``per_case`` is the evaluation's per-case table (``PER_CASE_COLUMNS``).
Figures are built with ``matplotlib.figure.Figure`` (no pyplot: Agg-safe, never auto-displayed twice)
and shown as PNG images, whatever the notebook's matplotlib backend.
"""

from __future__ import annotations

import html
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..runtime import is_headless
from ..visualization import AXES, CT_WINDOW, label_overlay, lesion_slice, load_canonical
from .evaluate import worst_first
from .figures import error_legend, error_overlay

# name -> (level, width) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen / pancreas W400/L40": CT_WINDOW,
    "soft tissue W350/L50": (50.0, 350.0),
    "narrow (lesion) W150/L40": (40.0, 150.0),
    "liver W150/L30": (30.0, 150.0),
    "bone W1800/L400": (400.0, 1800.0),
    "wide W1500/L-300": (-300.0, 1500.0),
}
PLANES = ("axial", "coronal", "sagittal")
VIEWS = ("ground truth", "prediction", "error")
CASE_LISTS = ("all cases", "worst DSC first", "misclassified")
LABEL_LEGEND = (Patch(color=(0.1, 0.8, 0.2), label="pancreas"), Patch(color=(0.95, 0.15, 0.1), label="lesion"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (not isinstance(value, str) and pd.isna(value))


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if _missing(value) else f"{float(value):.{digits}f}"


def _class_name(value: Any, class_names: Sequence[str]) -> str | None:
    if _missing(value):
        return None
    k = int(value)
    return class_names[k] if 0 <= k < len(class_names) else f"class {k}"


def is_misclassified(case: pd.Series) -> bool:
    """True when the case has a predicted subtype that differs from the true one."""
    return not _missing(case["subtype_pred"]) and int(case["subtype_pred"]) != int(case["subtype_true"])


def viewable(per_case: pd.DataFrame, *, note: bool = True) -> pd.DataFrame:
    """The cases with an image and a predicted mask; the others are skipped (with a printed note)."""
    keep = [not (_missing(i) or _missing(p)) for i, p in zip(per_case["image_file"], per_case["pred_file"])]
    skipped = per_case.loc[[not k for k in keep], "case"].tolist()
    if skipped and note:
        print(f"viewer: skipping {len(skipped)} case(s) without an image or a predicted mask: {', '.join(map(str, skipped))}")
    return per_case.loc[keep]


def readout_text(case: pd.Series, class_names: Sequence[str]) -> str:
    """One line: the case's DSCs and its predicted vs true subtype with the predicted probability."""
    true_name = _class_name(case["subtype_true"], class_names)
    pred_name = _class_name(case["subtype_pred"], class_names)
    if pred_name is None:
        subtype = f"subtype: no prediction (true {true_name})"
    else:
        verdict = "misclassified" if is_misclassified(case) else "correct"
        subtype = f"subtype: predicted {pred_name} (p={_fmt(case['prob_pred'], 2)}), true {true_name}, {verdict}"
    return f"{case['case']}: DSC pancreas {_fmt(case['dsc_pancreas'])}, lesion {_fmt(case['dsc_lesion'])}; {subtype}"


def readout_html(case: pd.Series, class_names: Sequence[str]) -> str:
    """``readout_text`` as a small HTML block (misclassified subtypes in red)."""
    true_name = html.escape(str(_class_name(case["subtype_true"], class_names)))
    pred_name = _class_name(case["subtype_pred"], class_names)
    if pred_name is None:
        subtype = f"predicted <i>no prediction</i> &middot; true <b>{true_name}</b>"
    else:
        colour = "#c0392b" if is_misclassified(case) else "#1e8449"
        verdict = "misclassified" if is_misclassified(case) else "correct"
        subtype = (f"predicted <b style='color:{colour}'>{html.escape(pred_name)}</b> (p={_fmt(case['prob_pred'], 2)}) "
                   f"&middot; true <b>{true_name}</b> &middot; {verdict}")
    return (f"<div style='font-family:monospace'><b>{html.escape(str(case['case']))}</b> &nbsp; "
            f"DSC pancreas <b>{_fmt(case['dsc_pancreas'])}</b> &middot; lesion <b>{_fmt(case['dsc_lesion'])}</b><br>"
            f"subtype: {subtype}</div>")


@dataclass
class CaseVolumes:
    """One case's canonical RAS volumes (labels rounded) and the largest-GT-lesion slice per plane."""

    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    spacing: tuple[float, float, float]
    lesion: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, case: pd.Series) -> "CaseVolumes":
        image, spacing = load_canonical(str(case["image_file"]))
        gt = np.rint(load_canonical(str(case["gt_file"]))[0])
        pred = np.rint(load_canonical(str(case["pred_file"]))[0])
        return cls(image, gt, pred, spacing, {axis: lesion_slice(gt, axis) for axis in AXES})


def _draw(ax: Any, volumes: CaseVolumes, axis: str, z: int, view: str, alpha: float, level: float, width: float) -> None:
    kwargs = dict(alpha=alpha, level=level, width=width)
    if view == "error":
        error_overlay(ax, volumes.image, volumes.gt, volumes.pred, volumes.spacing, z, axis, **kwargs)
    else:
        labels = volumes.gt if view == "ground truth" else volumes.pred
        label_overlay(ax, volumes.image, labels, volumes.spacing, z, axis, **kwargs)


class CaseViewer:
    """Case picker (all / worst DSC first / misclassified, with a next button), plane, slice, CT window,
    opacity and ground truth / prediction / error view, with a DSC and subtype readout.

    ``widget`` is the ipywidgets box to display; ``figure`` the last drawn matplotlib Figure.
    Volumes are loaded on demand and the last ``cache_size`` cases are kept in memory.
    """

    def __init__(self, per_case: pd.DataFrame, class_names: Sequence[str], *, cache_size: int = 3) -> None:
        import ipywidgets as w

        self.cases = viewable(per_case).reset_index(drop=True)
        if self.cases.empty:
            raise ValueError("no case has both an image and a predicted mask to view")
        self.class_names = list(class_names)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, CaseVolumes] = OrderedDict()
        self._rows = {str(c): i for i, c in enumerate(self.cases["case"])}
        self._holding = False
        self.figure: Figure | None = None

        self.case_list = w.ToggleButtons(options=CASE_LISTS, value=CASE_LISTS[0], description="cases")
        self.case = w.Dropdown(options=self._options(CASE_LISTS[0]), description="case", layout=w.Layout(width="420px"))
        self.next_case = w.Button(description="next ▸", tooltip="next case in this list", layout=w.Layout(width="80px"))
        self.plane = w.ToggleButtons(options=PLANES, value="axial", description="plane")
        self.slice = w.IntSlider(value=0, min=0, max=0, description="slice", continuous_update=False, layout=w.Layout(width="420px"))
        self.window = w.Dropdown(options=list(WINDOW_PRESETS), value=next(iter(WINDOW_PRESETS)), description="window")
        self.opacity = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity", continuous_update=False)
        self.view = w.ToggleButtons(options=VIEWS, value="error", description="view")
        self.readout = w.HTML()
        self.output = w.Output()
        self.widget = w.VBox([
            w.HBox([self.case_list]), w.HBox([self.case, self.next_case]), self.readout,
            w.HBox([self.plane, self.view]), w.HBox([self.slice, self.window, self.opacity]), self.output,
        ])

        self.case_list.observe(lambda _: self._on_case_list(), names="value")
        self.case.observe(lambda _: self._on_case(), names="value")
        self.next_case.on_click(lambda _: self.step())
        self.plane.observe(lambda _: self._on_case(), names="value")
        for control in (self.slice, self.window, self.opacity, self.view):
            control.observe(lambda _: self.draw(), names="value")
        self._on_case()

    # --- case lists -------------------------------------------------------------------------
    def ordered_cases(self, which: str) -> list[str]:
        """Case ids of one list: all (table order), worst DSC first (``worst_first``), or misclassified."""
        if which == "worst DSC first":
            return [str(c) for c in worst_first(self.cases)["case"]]
        if which == "misclassified":
            return [str(row["case"]) for _, row in self.cases.iterrows() if is_misclassified(row)]
        if which == "all cases":
            return [str(c) for c in self.cases["case"]]
        raise ValueError(f"case list must be one of {CASE_LISTS}, got {which!r}")

    def _options(self, which: str) -> list[tuple[str, str]]:
        options = []
        for case_id in self.ordered_cases(which):
            row = self.row(case_id)
            flag = "  ✗ subtype" if is_misclassified(row) else ""
            options.append((f"{case_id}  (DSC {_fmt(row['dsc_pancreas'], 2)} / {_fmt(row['dsc_lesion'], 2)}){flag}", case_id))
        return options or [("(no case in this list)", "")]

    def row(self, case_id: str) -> pd.Series:
        """The per-case table row of ``case_id``."""
        return self.cases.iloc[self._rows[case_id]]

    def show_worst(self) -> None:
        """List the cases worst DSC first and select the worst."""
        self.case_list.value = "worst DSC first"

    def show_misclassified(self) -> None:
        """List the misclassified cases and select the first."""
        self.case_list.value = "misclassified"

    def step(self) -> None:
        """Select the next case of the current list (wrapping round)."""
        values = [value for _, value in self.case.options]
        self.case.value = values[(values.index(self.case.value) + 1) % len(values)]

    def _on_case_list(self) -> None:
        self._holding = True
        try:
            options = self._options(self.case_list.value)
            self.case.options = options
            self.case.value = options[0][1]
        finally:
            self._holding = False
        self._on_case()

    # --- volumes, slice, drawing ------------------------------------------------------------
    def volumes(self, case_id: str) -> CaseVolumes:
        """The case's volumes, from the cache or loaded (evicting the least recently used)."""
        if case_id in self._cache:
            self._cache.move_to_end(case_id)
        else:
            self._cache[case_id] = CaseVolumes.load(self.row(case_id))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._cache[case_id]

    def _on_case(self) -> None:
        """New case or plane: reset the slider to the plane's size and its largest-lesion slice, then redraw."""
        if self._holding:
            return
        if not self.case.value:
            self.readout.value = "<i>no case in this list</i>"
            self.output.clear_output()
            return
        volumes = self.volumes(self.case.value)
        axis = self.plane.value
        self._holding = True
        try:
            self.slice.max = volumes.gt.shape[AXES[axis]] - 1
            self.slice.value = volumes.lesion[axis]
        finally:
            self._holding = False
        self.readout.value = readout_html(self.row(self.case.value), self.class_names)
        self.draw()

    def draw(self) -> None:
        """Redraw the current case, plane, slice, window, opacity and view into ``output``."""
        if self._holding or not self.case.value:
            return
        volumes = self.volumes(self.case.value)
        axis, z, view = self.plane.value, self.slice.value, self.view.value
        level, width = WINDOW_PRESETS[self.window.value]
        fig = Figure(figsize=(8.0, 5.5))
        ax = fig.add_axes((0.01, 0.02, 0.6, 0.88))
        _draw(ax, volumes, axis, z, view, self.opacity.value, level, width)
        lesion = " (largest GT lesion)" if z == volumes.lesion[axis] else ""
        ax.set_title(f"{self.case.value}: {view}, {axis} {z}/{self.slice.max}{lesion}", fontsize=9)
        handles = error_legend() if view == "error" else list(LABEL_LEGEND)
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.63, 0.9), fontsize=8, frameon=False)
        self.figure = fig
        with self.output:
            self.output.clear_output(wait=True)
            display_figure(fig)


def static_views(per_case: pd.DataFrame, class_names: Sequence[str], n: int = 3, *, max_misclassified: int = 6) -> Figure:
    """The viewer's error overlays as a static montage: the worst ``n`` cases and the misclassified ones
    (at most ``max_misclassified`` more), one row per case, axial/coronal/sagittal at each plane's
    largest-GT-lesion slice, W400/L40, titled with the readout."""
    cases = viewable(per_case)
    worst = [str(c) for c in worst_first(cases)["case"]][:n]
    wrong = [str(row["case"]) for _, row in cases.iterrows() if is_misclassified(row) and str(row["case"]) not in worst]
    chosen = worst + wrong[:max_misclassified]
    by_id = {str(row["case"]): row for _, row in cases.iterrows()}
    if not chosen:
        fig = Figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, "no case with an image and a predicted mask to show", ha="center", va="center")
        return fig
    fig = Figure(figsize=(12, 4.4 * len(chosen) + 0.6), layout="constrained")
    for sub, case_id in zip(fig.subfigures(len(chosen), 1, squeeze=False)[:, 0], chosen):
        case = by_id[case_id]
        volumes = CaseVolumes.load(case)
        for ax, axis in zip(sub.subplots(1, len(PLANES), squeeze=False)[0], PLANES):
            z = volumes.lesion[axis]
            error_overlay(ax, volumes.image, volumes.gt, volumes.pred, volumes.spacing, z, axis)
            ax.set_title(f"{axis} {z}", fontsize=9)
        tag = "worst DSC" if case_id in worst else "misclassified"
        sub.suptitle(f"[{tag}] {readout_text(case, class_names)}", fontsize=10)
    fig.legend(handles=error_legend(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def display_figure(fig: Figure, dpi: int = 90) -> None:
    """Display a Figure as an embedded PNG (independent of the notebook's matplotlib backend)."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    display(Image(data=buffer.getvalue(), format="png"))


def widgets_available() -> bool:
    """True inside a Jupyter kernel with ipywidgets importable (a frontend may render widgets)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_viewer(per_case: pd.DataFrame, class_names: Sequence[str], n: int = 3) -> Any:
    """Display the interactive ``CaseViewer`` in a live notebook, else (headless, or no widgets) ``static_views``.

    Returns what was displayed: the viewer's widget box or the static Figure (``None`` when no case
    can be shown). Assign the result (``viewer = show_viewer(...)``) so Jupyter does not show it twice.
    """
    from IPython.display import display

    if viewable(per_case, note=False).empty:
        viewable(per_case)
        print("viewer: nothing to show")
        return None
    if not is_headless() and widgets_available():
        box = CaseViewer(per_case, class_names).widget
        display(box)
        return box
    fig = static_views(per_case, class_names, n)
    display_figure(fig)
    return fig
