"""The learnability study's parts: latent and texture features, seed summaries with the chance line, oracle pooling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pancreas_multitask.dataset.phantom import generate_case, PhantomConfig
from pancreas_multitask.evaluation.learnability import LATENT_NAMES, fit_predict, glcm_features, image_features, latent_features, seed_summary

from conftest import REPO


def test_latent_features_mark_a_missing_rim() -> None:
    rows = [{"contrast": -30.0, "texture_sd": 25.0, "texture_scale": 2.0, "edge_irregularity": 0.2, "rim": float("nan"), "septa": 0.0,
             "necrosis": 0.0, "calcifications": 1.0, "duct": 1.0},
            {"contrast": -75.0, "texture_sd": 3.0, "texture_scale": 2.0, "edge_irregularity": 0.05, "rim": 20.0, "septa": 2.0,
             "necrosis": 0.0, "calcifications": 0.0, "duct": 0.0}]
    x = latent_features(rows)
    assert x.shape == (2, len(LATENT_NAMES)) and np.isfinite(x).all()
    assert x[:, LATENT_NAMES.index("has_rim")].tolist() == [0.0, 1.0] and x[0, LATENT_NAMES.index("rim")] == 0.0


def test_glcm_texture_tells_a_rough_lesion_from_a_smooth_one() -> None:
    rng = np.random.default_rng(0)
    labels = np.ones((24, 24, 8), np.uint8)
    labels[6:18, 6:18, 1:7] = 2
    smooth = np.full(labels.shape, 60.0)
    rough = smooth + rng.normal(0, 40, labels.shape)
    outside_only = smooth.copy()
    outside_only[labels != 2] = rng.normal(0, 200, int((labels != 2).sum()))
    names = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
    smooth_f, rough_f = dict(zip(names, glcm_features(smooth, labels))), dict(zip(names, glcm_features(rough, labels)))
    assert rough_f["contrast"] > smooth_f["contrast"] + 1 and rough_f["homogeneity"] < smooth_f["homogeneity"]
    # only pairs inside the lesion count: noise around it changes nothing
    np.testing.assert_allclose(glcm_features(outside_only, labels), glcm_features(smooth, labels))
    with pytest.raises(ValueError, match="lesion"):
        glcm_features(smooth, np.ones_like(labels))


def test_image_features_are_first_order_then_texture_and_classifiers_are_named() -> None:
    case = generate_case("c", "train", 0, PhantomConfig(shape=(24, 40, 48), spacing=(2.5, 1.4, 1.4)), np.random.default_rng(3))
    x = image_features(case.image, case.labels)
    from pancreas_multitask.evaluation.baselines import lesion_features

    first_order = lesion_features(case.image, case.labels)
    assert x.shape == (len(first_order) + 5,) and np.isfinite(x).all()
    np.testing.assert_allclose(x[: len(first_order)], first_order)
    y = np.array([0, 1] * 40)  # boosting's leaves need 20 cases
    features = np.c_[y + np.random.default_rng(0).normal(0, 0.1, len(y)), np.zeros(len(y))]
    for name in ("logistic", "boosting"):
        assert (fit_predict(name, features, y, features) == y).all()
    with pytest.raises(ValueError, match="unknown classifier"):
        fit_predict("svm", features, y, features)


def test_seed_summary_puts_the_chance_line_beside_the_f1() -> None:
    truth = np.array([0, 1, 2] * 20)
    perfect = seed_summary(truth, [truth, truth], 3)
    assert perfect["macro_f1"] == 1.0 and perfect["macro_f1_ci95"] == [1.0, 1.0] and not perfect["chance"]["indistinguishable_from_chance"]
    constant = seed_summary(truth, [np.ones_like(truth)], 3)
    assert constant["chance"]["indistinguishable_from_chance"] and constant["collapse_warnings"]
    assert constant["predicted_histogram"] == [[0, 60, 0]] and constant["recall_per_seed"] == [[0.0, 1.0, 0.0]]
    mixed = seed_summary(truth, [truth, np.ones_like(truth)], 3, reference=[np.ones_like(truth)])
    assert mixed["macro_f1_per_seed"][0] == 1.0 and mixed["macro_f1"] == pytest.approx((1.0 + constant["macro_f1"]) / 2)
    assert mixed["delta_macro_f1"] == pytest.approx(mixed["macro_f1"] - constant["macro_f1"]) and mixed["delta_macro_f1_ci95"][0] > 0


def test_the_study_recipe_is_the_demo_s_at_600_iterations_and_scales_with_the_budget() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from classification_learnability import recipe, train_subset

    from pancreas_multitask.profiles import load_parameters

    params = load_parameters(REPO / "notebooks" / "params", "demo")
    demo = recipe(params, 600)
    assert demo["epochs"] == params["epochs"] and demo["case_val_every"] == params["case_val_every"] and demo["patience"] == params["patience"]
    assert demo["loss_schedule"] == params["loss_schedule"]
    long = recipe(params, 2400)
    assert long["epochs"] == 4 * params["epochs"] and long["loss_schedule"]["phase1_epochs"] == 4 * params["loss_schedule"]["phase1_epochs"]
    assert long["patience"] >= long["case_val_every"]
    table = {f"quiz_{k}_{i:03d}": k for k in range(3) for i in range(40 + 20 * k)}
    small, large = train_subset(table, 45), train_subset(table, 90)
    assert set(small) < set(large) and abs(len(small) - 45) <= 2
    assert sorted({table[c] for c in small}) == [0, 1, 2]
    assert train_subset(table, 1000) == sorted(table)


def test_a_fresh_checkout_resumes_the_study_from_its_committed_results(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from classification_learnability import restore_runs

    phantom = {"train": [2, 3, 2], "seed": 23}
    runs = [{"name": "default_it600_n300_seed0", "selected_epoch": 7}, {"name": "default_it600_n300_seed1", "selected_epoch": 9}]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"phantom": phantom, "runs": runs}))
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    (runs_dir / "default_it600_n300_seed1.json").write_text(json.dumps({"name": "default_it600_n300_seed1", "selected_epoch": 11}))
    assert restore_runs(results, runs_dir, phantom) == ["default_it600_n300_seed0"]
    assert json.loads((runs_dir / "default_it600_n300_seed0.json").read_text()) == runs[0]
    assert json.loads((runs_dir / "default_it600_n300_seed1.json").read_text())["selected_epoch"] == 11  # a kept run wins
    other = tmp_path / "other_runs"
    other.mkdir()
    assert restore_runs(results, other, {**phantom, "seed": 24}) == [] and not list(other.iterdir())
    assert restore_runs(tmp_path / "missing.json", other, phantom) == []


@pytest.fixture(scope="module")
def tiny_model(tiny_prepared, manifest, tmp_path_factory) -> Path:
    from dataclasses import replace

    from pancreas_multitask.experiment_planning.plans import CPU_PLANS
    from pancreas_multitask.model.settings import HeadConfig, MultitaskSettings
    from pancreas_multitask.runtime import configured_nnunet
    from pancreas_multitask.training.train import train
    from pancreas_multitask.workspace import Workspace

    paths = replace(tiny_prepared, results=tmp_path_factory.mktemp("oracle_results"))
    settings = MultitaskSettings(num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, head=HeadConfig(pooling="lesion"),
                                 deployed_check_cases=0, calibrate=False)
    with configured_nnunet(paths, "cpu"):
        result = train(Workspace(manifest, paths, CPU_PLANS), settings, device="cpu", final_validation=False)
    return result.output_folder.parent


def test_oracle_pooling_pools_the_head_over_the_true_lesion(tiny_model: Path) -> None:
    from pancreas_multitask.inference.oracle import OraclePoolingPredictor
    from pancreas_multitask.inference.predictor import InferenceMode, make_predictor

    mode = InferenceMode(0.5, use_mirroring=False, tile_batch_size=2)
    oracle = make_predictor(tiny_model, mode, folds=(0,), postprocessing=False, predictor_class=OraclePoolingPredictor)
    network = oracle._network_module
    patch = tuple(oracle.configuration_manager.patch_size)
    data = np.random.default_rng(0).normal(size=(1, *patch)).astype(np.float32)  # one tile exactly
    truth = np.zeros((1, *patch), np.int8)
    truth[0, 2:8, 4:14, 4:14] = 1
    truth[0, 3:6, 6:10, 6:10] = 2
    _, probabilities = oracle.predict_with_truth(data, truth)
    with torch.no_grad():
        network.load_state_dict(oracle.list_of_parameters[0])
        _, logits = network.forward_with_class(torch.from_numpy(data)[None], torch.from_numpy(truth == 2)[None].float())
    np.testing.assert_allclose(probabilities, torch.softmax(logits.float(), 1)[0].numpy(), atol=1e-5)
    elsewhere = np.zeros_like(truth)
    elsewhere[0, -6:-2, -8:-2, -8:-2] = 2  # another lesion: another pooled vector, other probabilities
    assert np.abs(oracle.predict_with_truth(data, elsewhere)[1] - probabilities).max() > 1e-4
    with pytest.raises(ValueError, match="shape"):
        oracle.predict_with_truth(data, truth[:, :-1])
    with pytest.raises(ValueError, match="batches its own passes"):
        make_predictor(tiny_model, InferenceMode(0.5, use_mirroring=False), folds=(0,), postprocessing=False, predictor_class=OraclePoolingPredictor)


def _study_result(tmp_path: Path) -> dict:
    """A results JSON as the study writes it, from two budgets of made-up answers (one seed each)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from classification_learnability import summarise_runs

    truth = [0, 1, 2] * 10
    wrong = [1] * 30

    def record(iterations: int, answers: list[int]) -> dict:
        onehot = np.eye(3)[answers].tolist()
        return {"run": {"variant": "default", "iterations": iterations, "train_cases": 300, "seed": 0}, "test_labels": truth,
                "test_probabilities": onehot, "test_probabilities_other_fallback": np.eye(3)[wrong].tolist(), "test_oracle_probabilities": np.eye(3)[truth].tolist(),
                "fallback": "foreground", "other_fallback": "average", "test_lesion_dice": [0.5] * 30, "test_pancreas_dice": [0.9] * 30,
                "cls_patches_total": 10, "patches_total": 20, "validation_macro_f1": None, "seconds_training": 60.0}

    references = {"rows": {"true-mask-image-logistic": {"description": "texture", **seed_summary(truth, [truth], 3)}}}
    return {"summary": summarise_runs([record(600, wrong), record(2400, truth)], references, 3), "references": references}


def test_the_headline_names_both_poolings_the_chance_line_and_the_largest_budget(tmp_path: Path) -> None:
    from pancreas_multitask.evaluation.learnability import headline

    text = headline(_study_result(tmp_path))
    assert text.startswith("On the learnability study's phantom (300 train cases, 30 test cases that chose nothing)")
    demo, largest = text.split("; at ")[0], text.split("; at ")[1]
    assert "at 600 training iterations (1 seed)" in demo and "as deployed (indistinguishable from chance: its answers shuffled" in demo
    assert "2400 training iterations (1 seed) the default head reaches test macro-F1 1.000 [1.000, 1.000] as deployed (above chance" in largest
    assert "(the largest budget tried)" in largest and "Features of the true lesion's image allow 1.000" in text
    assert headline({"summary": []}) is None


def test_the_phantom_report_quotes_the_study_beside_its_f1(tmp_path: Path) -> None:
    from pancreas_multitask.evaluation.stage import LEARNABILITY_RESULTS, phantom_study_note

    assert phantom_study_note(tmp_path) == ""  # an installed package has no committed results
    target = tmp_path / LEARNABILITY_RESULTS
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(_study_result(tmp_path)))
    note = phantom_study_note(tmp_path)
    assert note.startswith("On the learnability study's phantom") and note.endswith("(benchmarks/results/classification_learnability_cpu.json; docs/benchmarks.md explains the study)")


def test_one_study_run_trains_and_scores_three_ways(tiny_prepared, manifest, tmp_path: Path) -> None:
    """The benchmark's run on the tiny phantom: trained with the scaled recipe, every test case classified with both
    fallbacks and with oracle pooling, its Dice kept, the checkpoint kept, and the summary table built from the record."""
    from dataclasses import replace

    sys.path.insert(0, str(REPO / "benchmarks"))
    from classification_learnability import Run, markdown, preprocess_test, summarise_runs, train_and_score

    from pancreas_multitask.experiment_planning.plans import CPU_PLANS
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configured_nnunet
    from pancreas_multitask.workspace import Workspace

    paths = replace(tiny_prepared, results=tmp_path / "nnUNet_results")
    params = {**load_parameters(REPO / "notebooks" / "params", "demo"), "iterations_per_epoch": 2, "val_iterations_per_epoch": 1}
    with configured_nnunet(paths, "cpu"):
        workspace = Workspace(manifest, paths, CPU_PLANS)
        cache = preprocess_test(workspace, tmp_path / "test_preprocessed")
        record = train_and_score(Run("default", 2, 10_000, 0), params, workspace, cache, "cpu", 3)
    assert record["test_cases"] == sorted(cache) and len(cache) == len(workspace.ground_truth("test")[0])
    for key in ("test_probabilities", "test_probabilities_other_fallback", "test_oracle_probabilities"):
        assert np.allclose(np.sum(record[key], axis=1), 1.0, atol=1e-3), key
    assert (record["fallback"], record["other_fallback"]) == ("foreground", "average")
    assert all(0.0 <= d <= 1.0 for d in record["test_lesion_dice"]) and 0 <= record["cls_patches_total"] <= record["patches_total"]
    assert (tmp_path / "checkpoints" / record["name"] / "checkpoint_best.pth").is_file()
    summary = summarise_runs([record], {"rows": {}, "fitted_on": "train", "scored_on": "test"}, 3)
    assert summary[0]["iterations"] == 2 and summary[0]["seeds"] == [0]
    table = markdown({"references": {"rows": {}, "fitted_on": "train", "scored_on": "test"}, "phantom": {"train": [1], "validation": [1], "test": 1, "seed": 0},
                      "summary": summary})
    assert "| default | 2 | 10000 | 1 |" in table
    recall = summary[0]["predicted_pooling"]["recall_per_seed"][0]
    assert "| default | 2 | 10000 | " + " / ".join("n/a" if v is None else f"{v:.2f}" for v in recall) + " |" in table  # the recall table
    two_seeds = [{**summary[0], "validation_macro_f1": [0.6, 0.7, None]}]  # the validation table: the split a choice between heads may use
    assert "| default | 2 | 10000 | 0.600, 0.700 | 0.650 | 0.100 |" in markdown({"references": {"rows": {}, "fitted_on": "train", "scored_on": "test"},
                                                                            "phantom": {"train": [1], "validation": [1], "test": 1, "seed": 0}, "summary": two_seeds})
