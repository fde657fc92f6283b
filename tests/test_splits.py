from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pancreas_multitask.experiment_planning.splits import check_unseen, given_split, stratified_cv, write_splits


def _table() -> dict[str, tuple[int, str]]:
    table = {}
    for k, n in enumerate((10, 17, 13)):
        table.update({f"quiz_{k}_{i:03d}": (k, "train") for i in range(n)})
        table.update({f"quiz_{k}_{500 + i:03d}": (k, "validation") for i in range(3)})
    return table


def test_given_split_is_fold_zero() -> None:
    table = _table()
    (fold,) = given_split(table)
    assert fold["val"] == sorted(k for k, (_, s) in table.items() if s == "validation")
    assert fold["train"] == sorted(k for k, (_, s) in table.items() if s == "train")


def test_cv5_is_stratified_over_train_only() -> None:
    table = _table()
    folds = stratified_cv(table)
    train_ids = {k for k, (_, s) in table.items() if s == "train"}
    assert len(folds) == 5
    assert sorted(i for f in folds for i in f["val"]) == sorted(train_ids)  # each train case validated once
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == train_ids and not set(fold["train"]) & set(fold["val"])
        counts = Counter(table[i][0] for i in fold["val"])
        for k, n in enumerate((10, 17, 13)):
            assert abs(counts[k] - n / 5) <= 1  # stratified by subtype
    assert stratified_cv(table) == folds  # fixed seed


def test_test_cases_appear_nowhere(tmp_path: Path) -> None:
    splits = given_split(_table())
    write_splits(tmp_path, splits, ["quiz_001", "quiz_002"])
    assert (tmp_path / "splits_final.json").is_file()
    leaky = [{"train": splits[0]["train"] + ["quiz_001"], "val": splits[0]["val"]}]
    with pytest.raises(AssertionError, match="fold 0 train holds test case"):
        write_splits(tmp_path / "other", leaky, ["quiz_001"])
    with pytest.raises(AssertionError, match="val holds test case"):
        check_unseen([{"train": [], "val": ["quiz_002"]}], ["quiz_002"])


@pytest.mark.parametrize(("mode", "expected"), [("given", "validation"), ("cv5", "train (the held-out cases of fold 2 of the 5-fold CV; the validation split chose nothing)")])
def test_the_selection_split_follows_the_split_mode(mode: str, expected: str, tmp_path: Path) -> None:
    """The report's "chosen on" line: the given validation split, or under cv5 the fold's held-out train cases."""
    import json

    from conftest import MANIFEST
    from pancreas_multitask.manifest import ProfilePaths
    from pancreas_multitask.workspace import Workspace

    workspace = Workspace(MANIFEST, ProfilePaths(raw=tmp_path / "raw", work=tmp_path, test_answers=None), "plans", fold=2)
    assert workspace.selection_split() == "validation"  # no prepare record yet: the default split mode
    workspace.record("prepare").write_text(json.dumps({"split_mode": mode}))
    assert workspace.selection_split() == expected
