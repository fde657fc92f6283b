"""The multitask trainer on the tiny preprocessed phantom: early stopping, checkpoint selection, resume."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from pancreas_multitask.experiment_planning.plans import CPU_PLANS
from pancreas_multitask.manifest import ProfilePaths
from pancreas_multitask.training.train import METRICS_FILE, TRAINER_NAME, TRAINERS_FOLDER, build_trainer, train
from pancreas_multitask.workspace import Workspace
from pancreas_multitask.training.schedule import loss_weights
from pancreas_multitask.model.settings import LossSchedule, MultitaskSettings

TINY_RUN = dict(iterations_per_epoch=1, val_iterations_per_epoch=1, initial_lr=1e-3, case_val_every=1, deployed_check_cases=0)


@pytest.fixture()
def results(tiny_prepared, tmp_path: Path, monkeypatch) -> ProfilePaths:
    """The tiny prepared dataset with a results folder of this test's own (nnU-Net's trainer reads it from nnUNet_results)."""
    paths = replace(tiny_prepared, results=tmp_path)
    monkeypatch.setenv("nnUNet_results", str(paths.nnunet_results))
    return paths


def _trainer(paths, manifest, settings: MultitaskSettings):
    trainer = build_trainer(paths.nnunet_preprocessed / manifest.dataset_name, CPU_PLANS, 0, "cpu")
    trainer.configure(settings)
    return trainer


def _crash_after(trainer, epochs: int) -> None:
    """Run training and kill it (an exception) right after ``epochs`` epochs, as a crash would."""
    original = trainer.on_epoch_end

    def on_epoch_end() -> None:
        original()
        if trainer.current_epoch == epochs:
            raise RuntimeError("simulated crash")

    trainer.on_epoch_end = on_epoch_end
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.run_training()
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        loader._finish()  # what the crash left running


def test_early_stopping_stops_at_patience_and_restores_the_best(tiny_prepared, manifest, results, monkeypatch) -> None:
    settings = MultitaskSettings(num_epochs=30, patience=3, criterion_dice_weight=0.0, **TINY_RUN)
    trainer = _trainer(tiny_prepared, manifest, settings)
    scripted = iter([0.2, 0.5, 0.9, 0.6, 0.6, 0.6, 0.95, 0.95, 0.95])  # best at epoch 2
    monkeypatch.setattr(trainer, "case_level_validation", lambda: (next(scripted), 0.5))
    trainer.run_training()

    out = Path(trainer.output_folder)
    frame = pd.read_csv(out / METRICS_FILE)
    assert frame["epoch"].tolist() == [0, 1, 2, 3, 4, 5]  # stopped after 3 epochs without improvement
    assert frame["val_criterion"].tolist() == pytest.approx([0.2, 0.5, 0.9, 0.6, 0.6, 0.6])
    assert "patience 3" in trainer.stop_reason and "best 0.9000 at epoch 2" in trainer.stop_reason
    best = torch.load(out / "checkpoint_best.pth", weights_only=False)
    final = torch.load(out / "checkpoint_final.pth", weights_only=False)
    assert best["current_epoch"] == 3  # nnU-Net stores epoch + 1
    restored = trainer.multitask_network().state_dict()
    assert all(torch.equal(best["network_weights"][k], restored[k]) for k in restored)
    assert any(not torch.equal(final["network_weights"][k], restored[k]) for k in restored)  # restoring changed the weights
    assert "restored the weights of checkpoint_best.pth" in Path(trainer.log_file).read_text()


def test_resume_continues_epochs_and_schedule(tiny_prepared, manifest, results, capsys) -> None:
    schedule = LossSchedule(phase1_epochs=1, ramp_epochs=2)
    settings = MultitaskSettings(num_epochs=4, save_every=1, schedule=schedule, **TINY_RUN)
    trainer = _trainer(tiny_prepared, manifest, settings)
    _crash_after(trainer, epochs=2)
    out = Path(trainer.output_folder)
    assert (out / "checkpoint_latest.pth").is_file() and not (out / "checkpoint_final.pth").exists()

    result = train(Workspace(manifest, results, CPU_PLANS), settings, device="cpu", resume=True, final_validation=False)
    frame = pd.read_csv(result.metrics_file)
    assert frame["epoch"].tolist() == [0, 1, 2, 3]  # continued at epoch 2, nothing repeated
    assert frame["w_seg"].tolist() == pytest.approx([loss_weights(e, schedule)[0] for e in range(4)])
    assert frame["w_seg"].tolist() == pytest.approx([0.9, 0.9, 0.7, 0.5])
    assert frame["lrs"].iloc[3] == pytest.approx(1e-3 * (1 - 3 / 4) ** 0.9)  # polynomial decay resumed
    assert torch.load(result.output_folder / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 4

    # a Colab session re-running the notebook (resume=True) after training finished does not train again
    capsys.readouterr()
    again = train(Workspace(manifest, results, CPU_PLANS), settings, device="cpu", resume=True, final_validation=False)
    assert "already trained with these settings" in capsys.readouterr().out
    assert again.stop_reason == result.stop_reason and len(pd.read_csv(again.metrics_file)) == 4


def test_a_checkpoint_write_that_dies_keeps_the_previous_checkpoint(tiny_prepared, manifest, results, monkeypatch) -> None:
    """The process dies inside torch.save (a kill, a full disk): checkpoint_latest.pth stays the last whole one."""
    settings = MultitaskSettings(num_epochs=2, save_every=1, **TINY_RUN)
    trainer = _trainer(tiny_prepared, manifest, settings)
    trainer.initialize()
    target = Path(trainer.output_folder) / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(target))
    whole = target.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(whole[: len(whole) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    trainer.current_epoch = 1
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(str(target))
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == whole and torch.load(target, weights_only=False)["current_epoch"] == 1
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp.")]  # no half file left beside it


def test_the_selected_checkpoint_is_scored_with_what_ships(tiny_prepared, manifest, results) -> None:
    """Training's case-level pass is the deployed predictor (another step, no mirroring); at the end the selected
    weights also go through the deployed mode, and those probabilities are what inference gives with the shipped model.
    Training's pass runs the network in torch, so inference is pinned to torch here; the OpenVINO engine's agreement
    with torch (probabilities within 1e-3) is tested in test_engines.py."""
    import json

    import numpy as np

    from pancreas_multitask.inference.predictor import make_predictor
    from pancreas_multitask.model.calibration import Calibration
    from pancreas_multitask.model.folders import AGREEMENT_FILE

    settings = MultitaskSettings(num_epochs=2, **{**TINY_RUN, "deployed_check_cases": -1, "deployed_mode": "fast"})
    trainer = _trainer(results, manifest, settings)
    trainer.run_training()
    out = Path(trainer.output_folder)
    record = json.loads((out / AGREEMENT_FILE).read_text())
    val_keys = trainer._case_keys[1]
    assert record["cases"] == len(val_keys) == 3 and set(record["per_case"]) == set(val_keys)
    assert 0 <= record["same_subtype"] <= 3 and "case-level estimator check" in Path(trainer.log_file).read_text()
    # the temperature, fitted on the same deployed-mode probabilities of all validation cases
    calibration = Calibration.load(out)
    assert calibration.cases == 3 and "validation" in calibration.fitted_on and calibration.nll_after <= calibration.nll_before + 1e-9
    assert 0.05 <= calibration.temperature <= 20 and "subtype calibration: temperature" in Path(trainer.log_file).read_text()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys)
    for mode, key in ((make_predictor(out.parent, "fast", engine="torch"), "deployed_estimator"),
                      (make_predictor(out.parent, trainer.validation_mode(), engine="torch"), "validation_estimator")):
        for case in val_keys:  # the shipped model folder (checkpoint_best.pth), as 03_inference loads it
            _, probabilities = mode.predict_preprocessed(np.asarray(dataset.load_case(case)[0][:]))
            assert np.allclose(mode.last_uncalibrated, record["per_case"][case][key], atol=1e-5), (key, case)
            assert np.allclose(probabilities, calibration.apply(mode.last_uncalibrated), atol=1e-6)  # inference returns them calibrated


def test_subtypes_come_only_from_the_table(tiny_prepared, manifest, results) -> None:
    trainer = _trainer(tiny_prepared, manifest, MultitaskSettings(num_epochs=1, **TINY_RUN))
    with pytest.raises(KeyError, match="quiz_9_999 has no subtype in subtypes.csv"):
        trainer._subtype("quiz_9_999")
    some_case, (subtype, split) = next(iter(trainer.subtypes.items()))
    assert trainer._subtype(some_case) == subtype and split in ("train", "validation")


def test_a_finished_fold_is_not_trained_again(tiny_prepared, manifest, results) -> None:
    from pancreas_multitask.training.train import TRAINER_NAME
    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask

    assert TRAINER_NAME == nnUNetTrainerMultitask.__name__
    settings = MultitaskSettings(num_epochs=1, **TINY_RUN)
    first = train(Workspace(manifest, results, CPU_PLANS), settings, device="cpu", final_validation=False)
    stamp = (first.output_folder / "checkpoint_final.pth").stat().st_mtime_ns
    again = train(Workspace(manifest, results, CPU_PLANS), settings, device="cpu", final_validation=False)
    assert (again.output_folder / "checkpoint_final.pth").stat().st_mtime_ns == stamp and again.stop_reason == first.stop_reason
    other = train(Workspace(manifest, results, CPU_PLANS), MultitaskSettings(num_epochs=2, **TINY_RUN), device="cpu", final_validation=False)
    assert len(pd.read_csv(other.metrics_file)) == 2  # changed settings train again


def test_early_stopping_state_survives_a_resume(tiny_prepared, manifest, results, monkeypatch) -> None:
    settings = MultitaskSettings(num_epochs=30, patience=3, criterion_dice_weight=0.0, save_every=1, **TINY_RUN)
    scripted = [0.2, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5]  # best at epoch 1: patience runs out after epoch 4
    trainer = _trainer(tiny_prepared, manifest, settings)
    values = iter(scripted)
    monkeypatch.setattr(trainer, "case_level_validation", lambda: (next(values), 0.5))
    _crash_after(trainer, epochs=3)

    resumed = build_trainer(tiny_prepared.nnunet_preprocessed / manifest.dataset_name, CPU_PLANS, 0, "cpu", continue_training=True)
    resumed.configure(settings)
    from nnunetv2.run.run_training import maybe_load_checkpoint

    maybe_load_checkpoint(resumed, continue_training=True, validation_only=False)
    rest = iter(scripted[3:])
    monkeypatch.setattr(resumed, "case_level_validation", lambda: (next(rest), 0.5))
    resumed.run_training()
    frame = pd.read_csv(Path(resumed.output_folder) / METRICS_FILE)
    assert frame["epoch"].tolist() == [0, 1, 2, 3, 4]  # the patience count continued across the resume
    assert "best 0.9000 at epoch 1" in resumed.stop_reason


def test_multi_gpu_training_goes_through_nnunet_ddp_launcher(tiny_prepared, manifest, results, monkeypatch) -> None:
    import nnunetv2.run.run_training as nnunet_run

    calls = []
    monkeypatch.setattr(nnunet_run, "run_training", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setenv("nnUNet_extTrainer", "my_trainers")  # a user's own trainer folder is kept
    settings = MultitaskSettings(num_epochs=3, **TINY_RUN)
    result = train(Workspace(manifest, results, CPU_PLANS), settings, device="cuda", num_gpus=2)
    ((args, kwargs),) = calls
    assert args == (manifest.dataset_name, "3d_fullres", 0, TRAINER_NAME, CPU_PLANS) and kwargs == {"num_gpus": 2, "continue_training": False}
    assert MultitaskSettings.load(result.output_folder) == settings  # every DDP process reads them from the fold folder
    assert os.environ["nnUNet_extTrainer"].split(os.pathsep) == [str(TRAINERS_FOLDER), "my_trainers"]
    # what nnU-Net's DDP workers do to find the trainer (this folder holds trainer code only, so it imports on CPU)
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(str(TRAINERS_FOLDER), TRAINER_NAME, None, base_folder=str(TRAINERS_FOLDER))
    assert found is not None and found.__name__ == TRAINER_NAME


def test_subtype_loss_only_on_patches_that_show_the_lesion(tiny_prepared, manifest, results) -> None:
    """A patch without the (pooled) lesion carries no subtype evidence: it is left out of the classification loss."""
    from pancreas_multitask.model.settings import HeadConfig

    trainer = _trainer(tiny_prepared, manifest, MultitaskSettings(num_epochs=1, head=HeadConfig(pooling="lesion"), **TINY_RUN))
    trainer.on_train_start()
    try:
        batch = next(trainer.dataloader_train)
        highest = batch["target"][0]
        highest[0] = 0  # sample 0 shows nothing; sample 1 gets a lesion block (region channels: whole pancreas, lesion)
        highest[1, :, :4, :8, :8] = 1
        seen = []
        loss = trainer.cls_loss
        trainer.cls_loss = lambda logits, labels: (seen.append(len(labels)), loss(logits, labels))[1]
        outputs = [trainer.train_step(batch)]
        assert seen == [1]
        highest[1] = 0  # no patch shows a lesion: no classification loss at all
        outputs.append(trainer.train_step(batch))
        assert seen == [1]
        # the epoch's record counts the patches the subtype loss learnt from (what the learnability study reports)
        assert [o["cls_patches"] for o in outputs] == [1, 0]
        trainer.on_train_epoch_end(outputs)
        assert trainer.logger.get_value("train_cls_patches", step=0) == 1
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            loader._finish()


def test_a_checkpoint_is_selected_only_at_an_epoch_whose_case_level_pass_ran_on_its_weights(tiny_prepared, manifest, results, monkeypatch) -> None:
    """With case_val_every=10 the F1 exists at epochs 0, 10 and the last; in between nothing is carried forward.
    Before, epoch 0's high F1 was carried to epochs 1-9, and a rising EMA made epoch 9 the 'best' on weights that F1 never saw."""
    import json

    from pancreas_multitask.model.folders import CASE_VALIDATION_FILE

    settings = MultitaskSettings(num_epochs=12, patience=50, criterion_dice_weight=0.5, **{**TINY_RUN, "case_val_every": 10})
    trainer = _trainer(tiny_prepared, manifest, settings)
    scripted = iter([0.9, 0.1, 0.1])  # epochs 0, 10, 11
    passes: list[int] = []

    def case_level_validation():
        passes.append(trainer.current_epoch)
        trainer.record_case_predictions(trainer._case_keys[1], [0] * len(trainer._case_keys[1]))
        return next(scripted), 0.5

    monkeypatch.setattr(trainer, "case_level_validation", case_level_validation)
    get_value = trainer.logger.get_value
    monkeypatch.setattr(trainer.logger, "get_value", lambda key, step: step / 100 if key == "ema_fg_dice" and step is not None else get_value(key, step))  # a rising EMA
    trainer.run_training()

    frame = pd.read_csv(Path(trainer.output_folder) / METRICS_FILE)
    assert passes == [0, 10, 11]
    fresh = frame["val_macro_f1"].notna()
    assert frame.loc[fresh, "epoch"].tolist() == [0, 10, 11] and frame.loc[~fresh, "val_criterion"].isna().all()
    selected = int(frame["val_criterion"].idxmax())
    assert selected % 10 == 0 or selected == settings.num_epochs - 1
    assert selected == 0 and frame.loc[0, "val_criterion"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.9)
    assert torch.load(Path(trainer.output_folder) / "checkpoint_best.pth", weights_only=False)["current_epoch"] == 1  # nnU-Net stores epoch + 1
    record = json.loads((Path(trainer.output_folder) / CASE_VALIDATION_FILE).read_text())
    assert sorted(record["epochs"]) == ["0", "10", "11"] and set(record["truth"]) == set(trainer._case_keys[1])


def test_training_scores_macro_f1_as_evaluation_does(tiny_prepared, manifest, results, monkeypatch) -> None:
    """Over the manifest's classes present in the truth: a class never predicted scores 0, one absent from the truth is not averaged in."""
    import numpy as np

    from pancreas_multitask.evaluation.metrics import classification_metrics

    trainer = _trainer(tiny_prepared, manifest, MultitaskSettings(num_epochs=1, **TINY_RUN))
    truth = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2, "f": 2}
    monkeypatch.setattr(trainer, "_subtype", truth.__getitem__)
    one_hot = lambda labels: [np.eye(3)[k] for k in labels]  # noqa: E731
    never_two = one_hot([0, 0, 1, 1, 1, 1])
    f1, accuracy = trainer._f1_accuracy(list(truth), never_two)
    assert f1 == pytest.approx((1 + 2 / 3 + 0) / 3) == classification_metrics(list(truth.values()), [0, 0, 1, 1, 1, 1], 3)["macro_f1"] and accuracy == pytest.approx(4 / 6)
    keys = ["a", "b", "c", "d"]  # no subtype 2 in the truth; one answer of subtype 2
    f1, _ = trainer._f1_accuracy(keys, one_hot([0, 2, 1, 1]))
    assert f1 == pytest.approx((2 / 3 + 1) / 2) == classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], 3)["macro_f1"]  # not (2/3 + 1 + 0) / 3


def test_loss_weights_and_class_weights_reach_the_losses(tiny_prepared, manifest, results, monkeypatch) -> None:
    """w_cls = 0 leaves the head without gradient; the segmentation gradient scales with w_seg; the cross-entropy's
    weights are the inverse-frequency weights of the training split's subtypes."""
    import json

    import numpy as np

    from pancreas_multitask.experiment_planning.subtype_table import SUBTYPE_TABLE, read_subtype_table
    from pancreas_multitask.training.schedule import class_weights

    settings = MultitaskSettings(num_epochs=1, **{**TINY_RUN, "initial_lr": 0.0})  # lr 0: the weights stay as they are between steps
    trainer = _trainer(tiny_prepared, manifest, settings)
    pre = tiny_prepared.nnunet_preprocessed / manifest.dataset_name
    train_keys = sorted(json.loads((pre / "splits_final.json").read_text())[0]["train"])
    table = read_subtype_table(pre / SUBTYPE_TABLE, 3)
    assert [table[k][0] for k in train_keys] == [0, 0, 1, 1, 2, 2]  # the tiny phantom is balanced: make it imbalanced
    for key in train_keys[2:5]:
        trainer.subtypes[key] = (0, "train")
    trainer.on_train_start()
    try:
        expected = class_weights(np.bincount([trainer.subtypes[k][0] for k in train_keys], minlength=3), settings.class_weight_smoothing)
        assert np.bincount([trainer.subtypes[k][0] for k in train_keys], minlength=3).tolist() == [5, 0, 1] and len(set(np.round(expected, 6))) == 3
        assert trainer.cls_loss.weight.tolist() == pytest.approx(expected.tolist())

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *args, **kwargs: None)  # compare raw gradients
        batch = next(trainer.dataloader_train)
        batch["target"][0][:, :, :4, :8, :8] = 1  # every patch shows a lesion: the subtype loss counts
        batch["keys"] = [(train_keys[0], train_keys[-1])[i % 2] for i in range(len(batch["keys"]))]  # subtypes 0 and 2: the weights matter
        network = trainer.multitask_network()
        head = list(network.head.parameters())
        segmentation = [p for n, p in network.named_parameters() if "decoder" in n]

        def step(w_seg: float, w_cls: float) -> tuple[dict, list[torch.Tensor], list[torch.Tensor]]:
            monkeypatch.setattr(trainer, "current_loss_weights", lambda: (w_seg, w_cls))
            network.eval()  # no dropout in the head: the same forward each time
            out = trainer.train_step(batch)
            grads = lambda params: [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]  # noqa: E731  (None: not in this forward)
            return out, grads(head), grads(segmentation)

        out, head_grads, seg_grads = step(1.0, 0.0)
        assert all(torch.count_nonzero(g) == 0 for g in head_grads) and any(torch.count_nonzero(g) > 0 for g in seg_grads)
        assert float(out["loss"]) == pytest.approx(float(out["seg_loss"]), rel=1e-6)
        half, _, half_seg = step(0.5, 0.0)
        assert float(half["loss"]) == pytest.approx(0.5 * float(half["seg_loss"]), rel=1e-6)
        assert all(torch.allclose(h, 0.5 * g, rtol=1e-4, atol=1e-8) for h, g in zip(half_seg, seg_grads))
        both, head_grads, _ = step(0.5, 0.5)
        assert any(torch.count_nonzero(g) > 0 for g in head_grads)  # the head learns once w_cls > 0
        # the step's cross-entropy is the weighted one: recompute it from this forward's class logits and the batch's subtypes
        logits, labels = network.last_class_logits.detach().float(), torch.tensor([trainer.subtypes[k][0] for k in batch["keys"]])
        weighted = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(expected, dtype=torch.float32))
        assert float(both["cls_loss"]) == pytest.approx(float(weighted), rel=1e-5)
        assert len(set(labels.tolist())) > 1 and float(weighted) != pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-3)
        assert float(both["loss"]) == pytest.approx(0.5 * float(both["seg_loss"]) + 0.5 * float(both["cls_loss"]), rel=1e-5)
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            loader._finish()


@pytest.mark.parametrize("mode", ["given", "cv5"])
def test_postprocessing_is_determined_on_the_selection_split(tiny_prepared, manifest, tmp_path, monkeypatch, mode) -> None:
    """Under both split modes nnU-Net's determine_postprocessing sees exactly Workspace.selection_cases(), even when the
    validation folder holds predictions of other cases; a selection case without a prediction stops it, naming the case."""
    import json
    import shutil

    import nnunetv2.postprocessing.remove_connected_components as rcc

    from pancreas_multitask.experiment_planning.splits import given_split, stratified_cv
    from pancreas_multitask.io import write_json
    from pancreas_multitask.postprocessing import PP_CASES
    from pancreas_multitask.training.train import ensure_postprocessing

    work = tmp_path / "work"
    paths = replace(tiny_prepared, work=work)
    shutil.copytree(tiny_prepared.nnunet_raw, paths.nnunet_raw)  # the case table
    pre = paths.nnunet_preprocessed / manifest.dataset_name
    shutil.copytree(tiny_prepared.nnunet_preprocessed / manifest.dataset_name, pre, ignore=shutil.ignore_patterns("nnUNetPlans_3d_fullres"))
    workspace = Workspace(manifest, paths, CPU_PLANS)
    write_json(workspace.record("prepare"), {"split_mode": mode})
    from pancreas_multitask.experiment_planning.subtype_table import SUBTYPE_TABLE, read_subtype_table

    table = {k: (v[0], v[1]) for k, v in read_subtype_table(pre / SUBTYPE_TABLE, 3).items()}
    write_json(pre / "splits_final.json", given_split(table) if mode == "given" else stratified_cv(table, n_folds=2))  # 6 train cases: 2 folds
    cases = workspace.selection_cases()
    validation = sorted(k for k, (_, split) in table.items() if split == "validation")
    if mode == "given":
        assert cases == validation and workspace.selection_split() == "validation"
    else:
        assert cases == sorted(json.loads((pre / "splits_final.json").read_text())[0]["val"]) and not set(cases) & set(validation)
        assert workspace.selection_split().startswith("train (the held-out cases of fold 0")
    fold = workspace.fold_folder
    (fold / "validation").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(pre / (f"{CPU_PLANS}.json" if name == "plans.json" else name), fold.parent / name)
    for case in table:  # predictions of every labelled case: only the selection split's may be used
        shutil.copy(pre / "gt_segmentations" / f"{case}.nii.gz", fold / "validation" / f"{case}.nii.gz")
    seen = {}

    def determine(folder_predictions, folder_ref, *args, **kwargs):
        seen["predictions"] = sorted(p.name.removesuffix(".nii.gz") for p in Path(folder_predictions).glob("*.nii.gz"))
        seen["reference"] = sorted(p.name.removesuffix(".nii.gz") for p in Path(folder_ref).glob("*.nii.gz"))
        import pickle

        (Path(folder_predictions) / "postprocessing.pkl").write_bytes(pickle.dumps(([], [])))
        (Path(folder_predictions) / "postprocessing.json").write_text("{}")

    monkeypatch.setattr(rcc, "determine_postprocessing", determine)
    ensure_postprocessing(workspace, pre / "gt_segmentations")
    assert seen == {"predictions": cases, "reference": cases}
    assert json.loads((fold / PP_CASES).read_text()) == {"chosen_on": workspace.selection_split(), "cases": cases, "safeguard": None}  # nothing chosen
    (fold / "validation" / f"{cases[0]}.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=cases[0]):
        ensure_postprocessing(workspace, pre / "gt_segmentations", force=True)


def test_oversample_foreground_reaches_nnunet_dataloader(tiny_prepared, manifest, results) -> None:
    """The ``oversample_foreground`` setting is nnU-Net's ``oversample_foreground_percent``: a batch at 1.0 is all centred on foreground."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    untouched = _trainer(tiny_prepared, manifest, MultitaskSettings(num_epochs=1, **TINY_RUN))
    plain = build_trainer(tiny_prepared.nnunet_preprocessed / manifest.dataset_name, CPU_PLANS, 0, "cpu", trainer_class=nnUNetTrainer)
    assert untouched.oversample_foreground_percent == plain.oversample_foreground_percent  # None keeps nnU-Net's own
    trainer = _trainer(tiny_prepared, manifest, MultitaskSettings(num_epochs=1, oversample_foreground=1.0, **TINY_RUN))
    trainer.on_train_start()
    try:
        loader = trainer.dataloader_train
        data_loader = getattr(loader, "data_loader", None) or getattr(loader, "generator")  # nnU-Net's single- or multi-threaded augmenter
        assert data_loader.oversample_foreground_percent == 1.0
        for _ in range(3):
            highest = next(loader)["target"][0]
            assert all(bool((patch > 0).any()) for patch in highest)
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            loader._finish()
    with pytest.raises(ValueError, match="oversample_foreground"):
        MultitaskSettings(oversample_foreground=1.5)
