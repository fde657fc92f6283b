"""Ground truth for evaluation: the quiz layout (``subtypeK/`` folders) or a test-split answer key.

Quiz layout: ``GT_DIR/subtypeK/quiz_K_NNN.nii.gz`` is a mask of true class K; the image
``quiz_K_NNN_0000.nii.gz`` beside it is not ground truth but is kept for overlays. The file names are
parsed by the raw-data scan (``dataset.scan``) with the manifest's layout, as everywhere else.
Answer key (what the phantom writes for the test split): ``subtype_labels.csv`` with the columns
``Names`` (mask file name, e.g. ``quiz_041.nii.gz``) and ``Subtype``, and the masks in a folder;
images optionally in another folder as ``<case>_0000.nii.gz``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .scan import labeled_split_files
from ..manifest import Manifest

FILE_ENDING = ".nii.gz"
ANSWER_KEY_CSV = "subtype_labels.csv"
ANSWER_KEY_MASKS = "masks"


@dataclass(frozen=True)
class GroundTruthCase:
    """One labelled case: id, mask file name (the CSV's ``Names``), files and true subtype."""

    case: str
    mask_file: str
    gt_file: Path
    image_file: Path | None
    subtype: int


def case_id(name: str) -> str:
    """``quiz_0_041.nii.gz`` or ``quiz_0_041`` -> ``quiz_0_041``."""
    return name[: -len(FILE_ENDING)] if name.endswith(FILE_ENDING) else name


def _image_beside(folder: Path | None, case: str) -> Path | None:
    if folder is None:
        return None
    image = folder / f"{case}_0000{FILE_ENDING}"
    return image if image.is_file() else None


def read_quiz_layout(gt_dir: str | os.PathLike[str], manifest: Manifest) -> list[GroundTruthCase]:
    """Every mask under ``gt_dir/subtypeK/`` (the manifest's layout), with its true class K and its image when present."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{gt_dir}: ground-truth folder not found")
    ending = manifest.file_ending
    cases = [GroundTruthCase(case, f"{case}{ending}", mask, image, subtype) for case, subtype, image, mask in labeled_split_files(gt_dir, manifest) if mask is not None]
    if not cases:
        raise ValueError(f"{gt_dir}: no masks in subtypeK/ folders (expected the quiz layout, e.g. {gt_dir}/subtype0/quiz_0_041.nii.gz)")
    return cases


def read_answer_key(csv_file: str | os.PathLike[str], masks_dir: str | os.PathLike[str], images_dir: str | os.PathLike[str] | None = None) -> list[GroundTruthCase]:
    """The cases of an answer-key CSV (``Names``, ``Subtype``) with their masks from ``masks_dir``."""
    csv_file, masks_dir = Path(csv_file), Path(masks_dir)
    images = Path(images_dir) if images_dir is not None else None
    frame = read_names_csv(csv_file)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"{masks_dir}: answer-key mask folder not found")
    if images is not None and not images.is_dir():
        raise FileNotFoundError(f"{images}: image folder not found")
    cases, missing = [], []
    for name, subtype in zip(frame["Names"], frame["Subtype"]):
        case = case_id(name)
        mask = masks_dir / f"{case}{FILE_ENDING}"
        if not mask.is_file():
            missing.append(mask.name)
            continue
        cases.append(GroundTruthCase(case, mask.name, mask, _image_beside(images, case), int(subtype)))
    if missing:
        raise ValueError(f"{csv_file}: {len(missing)} case(s) have no mask in {masks_dir}: {', '.join(missing)}")
    if not cases:
        raise ValueError(f"{csv_file}: the answer key lists no cases")
    return cases


def read_names_csv(csv_file: str | os.PathLike[str]) -> pd.DataFrame:
    """A quiz-style CSV (``Names``, ``Subtype``, optional ``prob_*``), checked: integer subtypes, unique names."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise FileNotFoundError(f"{csv_file}: CSV file not found")
    frame = pd.read_csv(csv_file, dtype={"Names": str})
    absent = [c for c in ("Names", "Subtype") if c not in frame.columns]
    if absent:
        raise ValueError(f"{csv_file}: missing column(s) {absent}; found {list(frame.columns)}")
    subtypes = pd.to_numeric(frame["Subtype"], errors="coerce")
    bad = frame["Names"][subtypes.isna() | (subtypes != subtypes.round()) | (subtypes < 0)].tolist()
    if bad:
        raise ValueError(f"{csv_file}: Subtype is not a non-negative integer for {bad}")
    frame["Subtype"] = subtypes.astype(int)
    duplicated = sorted(set(frame["Names"][frame["Names"].map(case_id).duplicated()]))
    if duplicated:
        raise ValueError(f"{csv_file}: case(s) listed more than once: {duplicated}")
    return frame
