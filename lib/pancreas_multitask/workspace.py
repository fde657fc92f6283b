"""One profile's workspace: every path a run reads or writes, built once from the manifest and the profile.

Stages take a ``Workspace`` and hand over records (the scan's case table, ``prepare.json``,
``train.json``, ``inference.json``) instead of re-deriving paths or walking the raw folder again:
the raw cases of a split come from the case table that the prepare stage wrote from the scan, so
``on_bad_case: skip`` and ``manifest.layout`` hold in every later stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from .dataset.scan import CASE_TABLE, Case, read_case_table
from .dataset.ground_truth import ANSWER_KEY_CSV, ANSWER_KEY_MASKS, GroundTruthCase, read_answer_key
from .manifest import Manifest, ProfilePaths, load_manifest
from .model.folders import fold_folder, model_folder

UNPROCESSED = "no_postprocessing"  # inference keeps the masks before postprocessing here, for the before/after Dice


@dataclass(frozen=True)
class Workspace:
    """The manifest, the profile's folders, the plans and the fold: what every path is made from."""

    manifest: Manifest
    paths: ProfilePaths
    plans: str
    fold: int | str = 0

    @classmethod
    def create(cls, manifest: Manifest | str | Path, profile: str, params: Mapping[str, Any]) -> "Workspace":
        """From the manifest (or its file) and a profile's parameters (``plans``, ``dataset_id``, ``fold`` or ``folds``)."""
        manifest = manifest if isinstance(manifest, Manifest) else load_manifest(Path(manifest))
        manifest = manifest.with_dataset_id(int(params.get("dataset_id") or 0))
        fold = params["fold"] if "fold" in params else (params.get("folds") or [0])[0]
        return cls(manifest, manifest.paths(profile), str(params["plans"]), fold)

    # ---- nnU-Net's folders ------------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        return self.manifest.dataset_name

    @property
    def raw_dataset(self) -> Path:
        """``nnUNet_raw/<dataset>``: the converted cases."""
        return self.paths.nnunet_raw / self.dataset_name

    @property
    def preprocessed(self) -> Path:
        """``nnUNet_preprocessed/<dataset>``: plans, splits, preprocessed data."""
        return self.paths.nnunet_preprocessed / self.dataset_name

    @property
    def model(self) -> Path:
        """The trained model folder (``<trainer>__<plans>__3d_fullres``) of these plans."""
        return model_folder(self.paths.nnunet_results, self.dataset_name, self.plans)

    @property
    def fold_folder(self) -> Path:
        return fold_folder(self.model, self.fold)

    # ---- the project's records and outputs ----------------------------------------------------------
    @property
    def case_table(self) -> Path:
        """The scan's record of the usable raw cases (written by the prepare stage)."""
        return self.raw_dataset / CASE_TABLE

    def record(self, stage: str) -> Path:
        """``<work>/<stage>.json``: what a stage hands to the next (prepare, train, inference, evaluation)."""
        return self.paths.work / f"{stage}.json"

    @property
    def predictions_root(self) -> Path:
        return self.paths.work / "predictions"

    def predictions(self, split: str) -> Path:
        return self.predictions_root / split

    @property
    def exports(self) -> Path:
        return self.paths.work / "exports"

    def split_mode(self) -> str:
        """``given`` or ``cv5``, as the prepare record says (``given`` before the prepare stage ran)."""
        record = self.record("prepare")
        return json.loads(record.read_text()).get("split_mode", "given") if record.is_file() else "given"

    def selection_split(self) -> str:
        """Which cases chose this fold's checkpoint, postprocessing and subtype temperature: the given validation split,
        or under ``split_mode: cv5`` the fold's held-out train cases (the prepare record says which mode)."""
        train_split, val_split = self.manifest.layout.labeled_splits[:2]
        if self.split_mode() == "cv5":
            return f"{train_split} (the held-out cases of fold {self.fold} of the 5-fold CV; the {val_split} split chose nothing)"
        return val_split

    def selection_cases(self) -> list[str]:
        """The case ids of ``selection_split``: the validation split's usable cases (case table), or under ``cv5`` the
        fold's held-out train cases (``splits_final.json``)."""
        if self.split_mode() == "cv5":
            folds = json.loads((self.preprocessed / "splits_final.json").read_text())
            if str(self.fold) == "all":  # nnU-Net's fold 'all' trains and validates on every train case
                return sorted({k for fold in folds for k in fold["train"] + fold["val"]})
            return sorted(folds[int(self.fold)]["val"])
        return sorted(c.case_id for c in self.cases(self.manifest.layout.labeled_splits[1]))

    # ---- cases ---------------------------------------------------------------------------------------
    @property
    def splits(self) -> tuple[str, ...]:
        layout = self.manifest.layout
        return (*layout.labeled_splits, layout.test_split)

    def cases(self, split: str) -> list[Case]:
        """The usable raw cases of ``split``, as the scan found them (bad cases left out under ``on_bad_case: skip``)."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; the manifest's layout has {list(self.splits)}")
        return [c for c in read_case_table(self.case_table) if c.split == split]

    def ground_truth(self, split: str) -> tuple[list[GroundTruthCase], str] | None:
        """``(cases, where they come from)`` for scoring ``split``: the case table's masks for a labelled split, the
        answer key for the test split (None without one). Cases the scan left out are not scored either."""
        cases = {c.case_id: c for c in self.cases(split)}
        ending = self.manifest.file_ending
        if split != self.manifest.layout.test_split:
            truth = [GroundTruthCase(c.case_id, f"{c.case_id}{ending}", c.mask, c.image, int(c.subtype)) for c in cases.values() if c.mask is not None and c.subtype is not None]
            return truth, f"{self.paths.raw / split} (as scanned: {self.case_table.name})"
        answers = self.paths.test_answers
        if answers is None or not (answers / ANSWER_KEY_CSV).is_file():
            return None
        key = answers / ANSWER_KEY_CSV
        truth = [replace(c, image_file=cases[c.case].image) for c in read_answer_key(key, answers / ANSWER_KEY_MASKS) if c.case in cases]
        return truth, str(key)
