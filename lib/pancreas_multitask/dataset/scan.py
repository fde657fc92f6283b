"""Walk a raw folder in the quiz layout, validate every case, and return the case table."""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from ..io import Volume, VolumeError, load_volume, write_json
from ..manifest import Manifest, OnBadCase
from ..runtime import progress

MASK_TOLERANCE = 1e-3  # mask values further than this from an integer label are an error


@dataclass(frozen=True)
class Case:
    """One validated case; ``subtype`` and ``mask`` are None for the test split."""

    case_id: str
    split: str
    subtype: int | None
    image: Path
    mask: Path | None
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str


@dataclass(frozen=True)
class Problem:
    """Why one file cannot be used."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DataValidationError(ValueError):
    """Raised with every problem found, one per line, each naming the file."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the raw data:\n{lines}")


@dataclass
class ScanResult:
    """The usable cases, the problems found and the case ids left out because of them."""

    cases: list[Case]
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The case table as a DataFrame (one row per case)."""
        rows = [
            {
                "case_id": c.case_id,
                "split": c.split,
                "subtype": c.subtype,
                "image": str(c.image),
                "mask": "" if c.mask is None else str(c.mask),
                "shape": "x".join(map(str, c.shape)),
                "spacing": "x".join(f"{s:.3g}" for s in c.spacing),
                "orientation": c.orientation,
            }
            for c in self.cases
        ]
        frame = pd.DataFrame(rows, columns=["case_id", "split", "subtype", "image", "mask", "shape", "spacing", "orientation"])
        frame["subtype"] = frame["subtype"].astype("Int64")
        return frame

    def counts(self) -> pd.DataFrame:
        """Cases per split x subtype (test cases have no subtype)."""
        frame = self.frame()
        frame["subtype"] = frame["subtype"].map(lambda s: "unlabeled" if pd.isna(s) else f"subtype{int(s)}")
        return pd.crosstab(frame["split"], frame["subtype"], margins=True, margins_name="total")


@dataclass
class _Pending:
    case_id: str
    split: str
    subtype: int | None
    image: Path | None = None
    mask: Path | None = None


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _collect(raw: Path, manifest: Manifest, problems: list[Problem]) -> list[_Pending]:
    """Match file names against the layout; report files that do not fit."""
    layout = manifest.layout
    pending: dict[str, _Pending] = {}
    duplicates: set[str] = set()

    def entry(case_id: str, split: str, subtype: int | None, path: Path) -> _Pending | None:
        item = pending.get(case_id)
        if item is None:
            item = pending[case_id] = _Pending(case_id, split, subtype)
        elif item.split != split or item.subtype != subtype:
            problems.append(Problem(path, f"case id {case_id} also appears in {item.split}/subtype{item.subtype}"))
            duplicates.add(case_id)
            return None
        return item

    for split in layout.labeled_splits:
        split_dir = raw / split
        if not split_dir.is_dir():
            problems.append(Problem(split_dir, f"split folder is missing (layout.labeled_splits lists {split!r})"))
            continue
        for kind, case_id, klass, path in _labeled_files(split_dir, manifest, problems):
            item = entry(case_id, split, klass, path)
            if item is not None:
                setattr(item, kind, path)

    test_dir = raw / layout.test_split
    if test_dir.is_dir():
        for path in _list_files(test_dir):
            match = layout.test_image.match(path.name)
            if match is None or not path.is_file():
                problems.append(Problem(path, f"file name does not fit the test pattern {layout.test_image.pattern}"))
                continue
            item = entry(match["case"], layout.test_split, None, path)
            if item is not None:
                item.image = path
    return [item for item in pending.values() if item.case_id not in duplicates]


def _labeled_files(split_dir: Path, manifest: Manifest, problems: list[Problem]) -> Iterator[tuple[str, str, int, Path]]:
    """``(kind, case id, subtype, file)`` of a labelled split folder (``subtypeK/`` inside); kind is image or mask."""
    layout = manifest.layout
    for sub in _list_files(split_dir):
        if not sub.is_dir():
            problems.append(Problem(sub, f"unexpected file in {split_dir.name}/; expected subtype folders {list(manifest.subtypes)}"))
            continue
        if sub.name not in manifest.subtypes:
            problems.append(Problem(sub, f"subtype folder {sub.name!r} is not one of the manifest's classes {list(manifest.subtypes)}"))
            continue
        klass = manifest.subtypes.index(sub.name)
        for path in _list_files(sub):
            kind, match = "image", layout.image.match(path.name)
            if match is None:
                kind, match = "mask", layout.mask.match(path.name)
            if match is None or not path.is_file():
                problems.append(Problem(path, f"file name does not fit the pattern {layout.image.pattern} (image) or {layout.mask.pattern} (mask)"))
                continue
            if int(match["subtype"]) != klass:
                problems.append(Problem(path, f"file name says subtype {match['subtype']} but the file lies in folder {sub.name}"))
                continue
            yield kind, match["case"], klass, path


def layout_files(raw: Path, manifest: Manifest) -> list[tuple[str, str, int | None, Path | None, Path | None]]:
    """``(case id, split, subtype, image, mask)`` of every case the manifest's layout finds under ``raw``, without
    reading any file (the validating scan is ``scan_raw``); DataValidationError lists every file that does not fit."""
    problems: list[Problem] = []
    found = _collect(Path(raw), manifest, problems)
    if problems:
        raise DataValidationError(problems)
    return [(item.case_id, item.split, item.subtype, item.image, item.mask) for item in found]


def labeled_split_files(split_dir: Path, manifest: Manifest) -> list[tuple[str, int, Path | None, Path | None]]:
    """``(case id, subtype, image or None, mask or None)`` of one labelled split folder in the manifest's layout,
    without reading the files (evaluation's ground truth); DataValidationError lists every file that does not fit."""
    if not split_dir.is_dir():
        raise DataValidationError([Problem(split_dir, "ground-truth folder not found")])
    problems: list[Problem] = []
    found: dict[str, dict] = {}
    for kind, case_id, klass, path in _labeled_files(split_dir, manifest, problems):
        found.setdefault(case_id, {"subtype": klass, "image": None, "mask": None})[kind] = path
    if problems:
        raise DataValidationError(problems)
    return [(case_id, f["subtype"], f["image"], f["mask"]) for case_id, f in sorted(found.items())]


def _check_pair(item: _Pending, image_path: Path) -> tuple[Case | None, list[Problem]]:
    """Read the files of one case and check them; returns the case or its problems."""
    problems: list[Problem] = []
    try:
        image: Volume = load_volume(image_path)
    except VolumeError as exc:
        return None, [Problem(image_path, str(exc).removeprefix(f"{image_path}: "))]
    if not np.isfinite(image.data).all():
        problems.append(Problem(image_path, f"{int((~np.isfinite(image.data)).sum())} non-finite voxel(s) (NaN or inf)"))
    if item.mask is not None:
        try:
            mask = load_volume(item.mask)
        except VolumeError as exc:
            return None, problems + [Problem(item.mask, str(exc).removeprefix(f"{item.mask}: "))]
        problems.extend(_check_mask(mask, image))
    if problems:
        return None, problems
    return (
        Case(item.case_id, item.split, item.subtype, image_path, item.mask, image.data.shape, image.spacing, image.orientation),  # type: ignore[arg-type]
        [],
    )


def _check_mask(mask: Volume, image: Volume) -> list[Problem]:
    problems: list[Problem] = []
    if mask.data.shape != image.data.shape:
        problems.append(Problem(mask.path, f"mask shape {mask.data.shape} differs from image shape {image.data.shape} ({image.path.name})"))
    elif not np.allclose(mask.affine, image.affine, rtol=1e-5, atol=1e-3):
        problems.append(Problem(mask.path, f"mask affine differs from the image's ({image.path.name}):\n{mask.affine}\nvs\n{image.affine}"))
    finite = np.isfinite(mask.data)
    if not finite.all():
        problems.append(Problem(mask.path, f"{int((~finite).sum())} non-finite voxel(s) (NaN or inf) in the mask"))
    values = mask.data[finite]
    rounded = np.round(values)
    bad = (np.abs(values - rounded) > MASK_TOLERANCE) | ~np.isin(rounded, (0, 1, 2))
    if bad.any():
        examples = ", ".join(f"{v:.6g}" for v in np.unique(values[bad])[:5])
        problems.append(Problem(mask.path, f"{int(bad.sum())} mask voxel(s) not within {MASK_TOLERANCE} of a label in {{0, 1, 2}} (e.g. {examples})"))
    else:
        problems.extend(_check_content(mask.path, rounded))
    return problems


def _check_content(path: Path, labels: np.ndarray) -> list[Problem]:
    """A labelled case must show a lesion (label 2): every one of the 281 public quiz masks has pancreas and lesion,
    and the subtype head pools over the lesion. A mask without them is an export error, not a case to learn from."""
    present = set(np.unique(labels).astype(int).tolist())
    if not present & {1, 2}:
        return [Problem(path, "the mask has no foreground at all (no pancreas, no lesion): an empty or wrongly exported label map")]
    if 2 not in present:
        return [Problem(path, "the mask has pancreas but no lesion (label 2): the subtype of a case without a lesion cannot be learnt; "
                              "check the export (a lesion merged into label 1?)")]
    return []


def scan_raw(raw: str | Path, manifest: Manifest, on_bad_case: OnBadCase | None = None) -> ScanResult:
    """Scan and validate ``raw`` (quiz layout); report all problems at once.

    With ``on_bad_case='error'`` (the manifest's default) any problem raises DataValidationError;
    with ``'skip'`` the affected cases are left out with a warning each.
    """
    raw = Path(raw)
    policy = on_bad_case or manifest.on_bad_case
    if not raw.is_dir():
        raise DataValidationError([Problem(raw, "raw data folder does not exist")])
    problems: list[Problem] = []
    pending = _collect(raw, manifest, problems)
    cases: list[Case] = []
    bad_ids: set[str] = set()
    for item in progress(pending, "validating cases", unit="case"):
        if item.image is None:
            problems.append(Problem(item.mask, f"mask without image (expected {item.case_id}_0000{manifest.file_ending} beside it)"))  # type: ignore[arg-type]
            bad_ids.add(item.case_id)
            continue
        if item.mask is None and item.split != manifest.layout.test_split:
            problems.append(Problem(item.image, f"image without mask (expected {item.case_id}{manifest.file_ending} beside it)"))
            bad_ids.add(item.case_id)
            continue
        case, found = _check_pair(item, item.image)
        if case is None:
            problems.extend(found)
            bad_ids.add(item.case_id)
        else:
            cases.append(case)
    if not pending:  # an empty folder, or one in another layout: nothing to skip to, whatever the policy
        layout = manifest.layout
        splits = ", ".join(f"{raw / split}" for split in (*layout.labeled_splits, layout.test_split))
        raise DataValidationError(problems + [Problem(raw, (
            f"no cases found under {splits}; expected {layout.labeled_splits[0]}/<{'|'.join(manifest.subtypes)}>/ files matching "
            f"{layout.image.pattern} (images) and {layout.mask.pattern} (masks), and {layout.test_split}/ files matching "
            f"{layout.test_image.pattern}"))])
    if problems and policy == "error":
        raise DataValidationError(problems)
    for problem in problems:
        warnings.warn(f"skipping: {problem}", stacklevel=2)
    order = {s: i for i, s in enumerate((*manifest.layout.labeled_splits, manifest.layout.test_split))}
    cases.sort(key=lambda c: (order[c.split], c.case_id))
    return ScanResult(cases=cases, problems=problems, skipped=sorted(bad_ids))


CASE_TABLE = "raw_cases.json"  # the scan's record: what every later stage takes as the raw cases


def write_case_table(path: Path, result: ScanResult) -> None:
    """The usable cases (and what the scan left out, and why) as the record later stages read."""
    cases = [{**asdict(c), "image": str(c.image), "mask": None if c.mask is None else str(c.mask)} for c in result.cases]
    write_json(path, {"cases": cases, "skipped": result.skipped, "problems": [str(p) for p in result.problems]})


def read_scan_problems(path: Path) -> list[str]:
    """The problems ``write_case_table`` recorded (each names its file); empty when there is no case table."""
    return list(json.loads(path.read_text()).get("problems", [])) if path.is_file() else []


def read_case_table(path: Path) -> list[Case]:
    """The cases ``write_case_table`` recorded."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no case table; run the prepare stage (01_prepare) first")
    return [
        Case(c["case_id"], c["split"], c["subtype"], Path(c["image"]), None if c["mask"] is None else Path(c["mask"]),
             tuple(c["shape"]), tuple(c["spacing"]), c["orientation"])  # type: ignore[arg-type]
        for c in json.loads(path.read_text())["cases"]
    ]


def split_counts(cases: Iterable[Case]) -> dict[str, dict[str, int]]:
    """``{split: {subtype-or-'unlabeled': count}}`` for summaries and tests."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for c in cases:
        out[c.split]["unlabeled" if c.subtype is None else f"subtype{c.subtype}"] += 1
    return {k: dict(v) for k, v in out.items()}
