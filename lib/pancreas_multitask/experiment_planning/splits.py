"""``splits_final.json``: the given train/validation split as fold 0, or stratified 5-fold CV over train."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

from sklearn.model_selection import StratifiedKFold

from ..io import write_json

SplitMode = Literal["given", "cv5"]
CV_SEED = 12345  # nnU-Net's own seed for its random folds


def given_split(table: Mapping[str, tuple[int, str]], train_split: str = "train", val_split: str = "validation") -> list[dict[str, list[str]]]:
    """One fold: the given train cases for training, the given validation cases for validation."""
    train = sorted(k for k, (_, split) in table.items() if split == train_split)
    val = sorted(k for k, (_, split) in table.items() if split == val_split)
    if not train or not val:
        raise ValueError(f"the given split needs train and validation cases, got {len(train)} and {len(val)}")
    return [{"train": train, "val": val}]


def stratified_cv(table: Mapping[str, tuple[int, str]], n_folds: int = 5, train_split: str = "train", seed: int = CV_SEED) -> list[dict[str, list[str]]]:
    """``n_folds`` folds over the train cases only, stratified by subtype; validation cases stay aside."""
    ids = sorted(k for k, (_, split) in table.items() if split == train_split)
    labels = [table[k][0] for k in ids]
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(ids, labels)
    return [{"train": [ids[i] for i in tr], "val": [ids[i] for i in va]} for tr, va in folds]


def make_splits(table: Mapping[str, tuple[int, str]], mode: SplitMode, train_split: str = "train", val_split: str = "validation") -> list[dict[str, list[str]]]:
    """The folds for ``mode`` (``given`` or ``cv5``), with the layout's names of the two labelled splits."""
    if mode == "given":
        return given_split(table, train_split, val_split)
    if mode == "cv5":
        return stratified_cv(table, train_split=train_split)
    raise ValueError(f"split mode must be 'given' or 'cv5', got {mode!r}")


def check_unseen(splits: Sequence[Mapping[str, Sequence[str]]], test_ids: Sequence[str]) -> None:
    """Raise if a test case appears in any fold's train or val list."""
    test = set(test_ids)
    for i, fold in enumerate(splits):
        for part in ("train", "val"):
            leaked = sorted(test & set(fold[part]))
            if leaked:
                raise AssertionError(f"fold {i} {part} holds test case(s) {leaked}: the test split must stay unseen")


def write_splits(preprocessed_dataset_dir: Path, splits: list[dict[str, list[str]]], test_ids: Sequence[str]) -> Path:
    """Check that no test case leaks in, then write ``splits_final.json`` atomically."""
    check_unseen(splits, test_ids)
    target = Path(preprocessed_dataset_dir) / "splits_final.json"
    write_json(target, splits)
    return target
