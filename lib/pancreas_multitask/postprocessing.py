"""nnU-Net's postprocessing, determined and applied with nnU-Net's own functions.

nnU-Net decides per label or region whether keeping only the largest connected component raises
the mean Dice of full-volume predictions (``determine_postprocessing``), and applies what helped
(``apply_postprocessing``). The project determines it on the fold's final full-volume validation of
exactly the selection split's cases (``Workspace.selection_cases``: the validation split, or under
``cv5`` the fold's held-out train cases), the split that also selected the checkpoint, and keeps the
result beside the checkpoints as ``fold_K/postprocessing.pkl`` (and nnU-Net's ``postprocessing.json``,
which records the Dice before and after), with the cases it was determined on in ``PP_CASES``, so the
exported zip carries it.

**Safeguard against a small selection split.** nnU-Net keeps a step when it raises the mean Dice at all; on
8 cases that over-fits (on real CT, "keep the largest component" chosen on 8 cases lowered the lesion's Dice
on unseen cases). So what nnU-Net chose is kept only when, paired over the same cases, it raises some region's
Dice by more than the half-width of that gain's 95 % bootstrap interval and lowers no region's mean Dice
(``keep_decision``); otherwise the masks stay unchanged. The decision and its numbers go into ``PP_CASES``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .io import atomic_path, write_json

PP_PICKLE = "postprocessing.pkl"
PP_JSON = "postprocessing.json"
PP_CASES = "postprocessing_cases.json"  # the cases the postprocessing was determined on
VALIDATION_FOLDER = "validation"  # where nnU-Net's final validation writes its predictions

Postprocessing = tuple[list[Callable], list[dict[str, Any]]]


def determine_for_fold(fold_folder: str | Path, gt_folder: str | Path, cases: Sequence[str], num_processes: int = 2, chosen_on: str = "") -> dict[str, Any]:
    """Run nnU-Net's ``determine_postprocessing`` on the fold's full-volume validation predictions of ``cases``; keep its result
    (and the cases, ``PP_CASES``) in the fold folder.

    ``gt_folder`` is nnU-Net's ``gt_segmentations`` of the preprocessed dataset. Every case must have a prediction;
    predictions of other cases in the folder are not used. Returns nnU-Net's ``postprocessing.json`` content.
    """
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing

    fold_folder = Path(fold_folder)
    predictions = fold_folder / VALIDATION_FOLDER
    model = fold_folder.parent
    ending = json.loads((model / "dataset.json").read_text())["file_ending"]
    missing = [c for c in cases if not (predictions / f"{c}{ending}").is_file()]
    if not cases or missing:
        raise FileNotFoundError(f"{predictions}: no full-volume prediction of {missing or 'any case'}; the postprocessing is determined on every case "
                                "of the selection split (re-run the training's final validation)")
    with tempfile.TemporaryDirectory(prefix=".pp-", dir=fold_folder) as tmp:
        chosen, reference = Path(tmp) / "predictions", Path(tmp) / "reference"
        chosen.mkdir()
        reference.mkdir()
        for case in cases:  # exactly these cases on both sides (gt_segmentations holds every training case too)
            os.symlink((predictions / f"{case}{ending}").resolve(), chosen / f"{case}{ending}")
            os.symlink(Path(gt_folder).resolve() / f"{case}{ending}", reference / f"{case}{ending}")
        determine_postprocessing(str(chosen), str(reference), str(model / "plans.json"), str(model / "dataset.json"), num_processes, keep_postprocessed_files=False)
        for name in (PP_PICKLE, PP_JSON):  # atomically, beside the checkpoints
            with atomic_path(fold_folder / name) as target:
                shutil.copyfile(chosen / name, target)
    chosen_fns = load_postprocessing(fold_folder / PP_PICKLE)
    safeguard = None
    if chosen_fns[0]:
        gains = paired_gains([(predictions / f"{c}{ending}", Path(gt_folder) / f"{c}{ending}") for c in cases], chosen_fns)
        keep, reason = keep_decision(gains)
        safeguard = {"nnunet_chose": describe(chosen_fns), "kept": keep, "reason": reason, "gains": gains}
        if not keep:  # the masks stay as predicted: an empty chain, as nnU-Net writes when nothing helped
            with atomic_path(fold_folder / PP_PICKLE) as target, open(target, "wb") as handle:
                pickle.dump(([], []), handle)
    write_json(fold_folder / PP_CASES, {"chosen_on": chosen_on, "cases": sorted(cases), "safeguard": safeguard})
    return json.loads((fold_folder / PP_JSON).read_text())


def paired_gains(pairs: Sequence[tuple[Path, Path]], postprocessing: Postprocessing, resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per region (``metrics.region_dices``): the per-case Dice gain of applying ``postprocessing`` to each (prediction, truth)
    pair, its mean and the bootstrap 95 % interval of the mean."""
    from .evaluation.metrics import mean_ci, read_label_map, region_dices

    per_case: dict[str, list[float]] = {}
    for prediction_file, truth_file in pairs:
        prediction, truth = read_label_map(prediction_file)[0], read_label_map(truth_file)[0]
        before, after = region_dices(prediction, truth), region_dices(apply(prediction, postprocessing), truth)
        for region in before:
            per_case.setdefault(region, []).append(after[region] - before[region])
    return {region: {"mean": float(np.mean(v)), "ci95": [float(b) for b in mean_ci(v, resamples=resamples, seed=seed)], "per_case": [round(x, 6) for x in v]}
            for region, v in per_case.items()}


def keep_decision(gains: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """Keep the postprocessing only if it raises some region's Dice beyond its interval's half-width (the interval's
    lower end above 0) and lowers no region's mean Dice; (keep, why)."""
    lowered = [r for r, g in gains.items() if g["mean"] < 0]
    if lowered:
        return False, "it lowers the mean Dice of " + ", ".join(f"{r} ({gains[r]['mean']:+.4f})" for r in lowered)
    clear = [r for r, g in gains.items() if g["ci95"][0] > 0]
    if not clear:
        return False, "its gain is within the 95 % interval on these cases (" + ", ".join(
            f"{r} {g['mean']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]" for r, g in gains.items()) + ")"
    return True, "it raises " + ", ".join(f"{r} by {gains[r]['mean']:+.4f} [{gains[r]['ci95'][0]:+.4f}, {gains[r]['ci95'][1]:+.4f}]" for r in clear)


def decision_line(fold_folder: str | Path) -> str:
    """What the fold's masks get, with the safeguard's decision when nnU-Net chose a step."""
    fold_folder = Path(fold_folder)
    line = describe(load_postprocessing(fold_folder / PP_PICKLE))
    record = json.loads((fold_folder / PP_CASES).read_text()) if (fold_folder / PP_CASES).is_file() else {}
    safeguard = record.get("safeguard")
    if safeguard and not safeguard["kept"]:
        return f"none kept: nnU-Net chose to {safeguard['nnunet_chose']}, dropped because {safeguard['reason']}"
    if safeguard:
        return f"{line} (kept: {safeguard['reason']})"
    return line


def determined_on(fold_folder: str | Path) -> list[str] | None:
    """The cases the fold's postprocessing was determined on (None when not recorded)."""
    path = Path(fold_folder) / PP_CASES
    return json.loads(path.read_text())["cases"] if path.is_file() else None


def postprocessing_file(model_folder: str | Path, folds: Sequence[int | str]) -> Path | None:
    """The postprocessing that applies to ``folds`` of a model: one of nnU-Net's for the whole model folder
    (``nnUNetv2_determine_postprocessing`` on cross-validation results, put beside plans.json), else the single fold's."""
    model_folder = Path(model_folder)
    if (model_folder / PP_PICKLE).is_file():
        return model_folder / PP_PICKLE
    if len(folds) == 1 and (model_folder / f"fold_{folds[0]}" / PP_PICKLE).is_file():
        return model_folder / f"fold_{folds[0]}" / PP_PICKLE
    return None


def load_postprocessing(path: str | Path) -> Postprocessing:
    """``(functions, kwargs)`` from nnU-Net's ``postprocessing.pkl`` (what ``apply_postprocessing`` takes)."""
    with open(path, "rb") as handle:
        functions, kwargs = pickle.load(handle)
    return list(functions), list(kwargs)


def describe(postprocessing: Postprocessing | None) -> str:
    """A readable line, e.g. ``keep the largest component of (1, 2)``."""
    if postprocessing is None:
        return "none"
    functions, kwargs = postprocessing
    if not functions:
        return "determined: nothing helped, masks unchanged"
    return "; ".join(f"{_name(fn)} of {_labels(kw.get('labels_or_regions'))}" for fn, kw in zip(functions, kwargs))


def _name(function: Callable) -> str:
    return "keep the largest connected component" if function.__name__ == "remove_all_but_largest_component_from_segmentation" else function.__name__


def _labels(value: Any) -> str:
    """nnU-Net's labels or regions as plain numbers: ``[1, 2]`` (all foreground), ``(1, 2)`` (a region), ``2``."""
    if isinstance(value, list):
        return "labels " + ", ".join(_labels(v) for v in value)
    if isinstance(value, tuple):
        return "region (" + ", ".join(str(int(v)) for v in value) + ")"
    return str(int(value))


def apply(segmentation: np.ndarray, postprocessing: Postprocessing) -> np.ndarray:
    """nnU-Net's ``apply_postprocessing``."""
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    return apply_postprocessing(segmentation, *postprocessing)
