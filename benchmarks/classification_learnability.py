"""Benchmark: does the subtype head learn the phantom? The ceiling, the error decomposition, learning curves.

A study phantom (``STUDY_PHANTOM``: 300 train / 60 validation / 150 test cases, the demo profile's generator,
calibration, shape and spacing, another seed), generated once under ``--work`` and reused. Its generator
writes every lesion's latent look (``phantom.TRUTH_CSV``), which the real quiz does not have.

References, fitted on the 300 train cases and scored on the 150 test cases (no network):

* **ceiling**: logistic regression and gradient boosting on the generator's latent look (``draw_look``:
  contrast, texture, rim, septa, necrosis, calcifications, duct, margin): what the appearance allows at best;
* **true-mask image baselines**: the mean-lesion-HU rule (a depth-2 tree), and the same two classifiers on
  first-order plus GLCM texture features of the true lesion (``learnability.image_features``).

Network runs (``Run``: head variant, training iterations, training cases, seed), each the demo's recipe
scaled to its budget (``recipe``), the checkpoint chosen on the 60 validation cases as training always does.
Each run's selected model classifies the 150 test cases with the deployed estimator without its mirroring
passes (the heads benchmark's ``test_mode``), twice:

* **predicted pooling** (as deployed): the head pools over the lesion the network predicts;
* **oracle pooling**: the same sliding window, with the head pooling over the true lesion
  (``inference.oracle.OraclePoolingPredictor``);

and the lesion Dice of the predicted segmentation on the preprocessed grid is kept per case. The gap between
the two F1s is what the lesion segmentation costs the classification.

Resumable: each finished run is kept under ``--work``/runs and the results are rewritten after every run. A fresh
checkout (no ``--work``) resumes from the committed results: their runs on the same study phantom are written back
under ``--work``/runs first (``restore_runs``).
Writes ``benchmarks/results/classification_learnability_<device>.json`` and ``.md``.

    python benchmarks/classification_learnability.py [--budgets 600 1200 2400] [--seeds 0 1 2] [--train-cases 300]
        [--variants default] [--references-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "benchmarks"))

STUDY_PHANTOM = {"train": [74, 126, 100], "validation": [15, 25, 20], "test": 150, "seed": 23}  # the quiz's 62/106/84 proportions
DEMO_ITERATIONS = 600  # the demo profile: 60 epochs x 10 iterations
VARIANTS = {  # name -> head (None: the profile's own head, the default)
    "default": None,
    "shallow": {"source": "encoder", "stages": [1, 2], "pooling": "lesion", "reducer": "mean_std"},  # texture-carrying stages 1-2
}
SUBSET_SEED = 0  # the nested, stratified train subsets of the case curve
FALLBACKS = ("foreground", "average")  # HeadConfig.fallback: both are scored on every checkpoint


@dataclass(frozen=True)
class Run:
    variant: str
    iterations: int
    train_cases: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}_it{self.iterations}_n{self.train_cases}_seed{self.seed}"


def recipe(params: dict, iterations: int) -> dict:
    """The demo's recipe scaled to ``iterations``: the same iterations per epoch, the same number of case-level
    passes, patience, loss-weight phase and ramp as shares of the epochs (at 600 iterations: exactly the demo's)."""
    per_epoch = int(params["iterations_per_epoch"])
    epochs = max(iterations // per_epoch, 1)
    scale = epochs / params["epochs"]
    schedule = dict(params["loss_schedule"])
    case_val_every = max(round(params["case_val_every"] * scale), 1)
    return {"epochs": epochs, "case_val_every": case_val_every, "patience": max(round(params["patience"] * scale), case_val_every),
            "save_every": epochs + 1,
            "loss_schedule": {**schedule, "phase1_epochs": round(schedule["phase1_epochs"] * scale), "ramp_epochs": max(round(schedule["ramp_epochs"] * scale), 1)}}


def train_subset(table: dict[str, int], count: int) -> list[str]:
    """``count`` train case ids, stratified by subtype and nested (a smaller subset lies inside every larger one)."""
    import numpy as np

    by_class: dict[int, list[str]] = {}
    for case, subtype in sorted(table.items()):
        by_class.setdefault(subtype, []).append(case)
    rng = np.random.default_rng(SUBSET_SEED)
    order = {k: list(rng.permutation(v)) for k, v in by_class.items()}
    total = len(table)
    if count >= total:
        return sorted(table)
    take = {k: max(1, round(count * len(v) / total)) for k, v in by_class.items()}
    return sorted(str(c) for k, v in order.items() for c in v[:take[k]])


def restore_runs(results: Path, runs_dir: Path, phantom: dict) -> list[str]:
    """Write the runs of an earlier results file back under ``runs_dir`` where they are missing, and return their
    names. Only when that file was made on the same study phantom; otherwise none (and it says why)."""
    from pancreas_multitask.io import write_json

    if not results.is_file():
        return []
    earlier = json.loads(results.read_text())
    if earlier.get("phantom") != json.loads(json.dumps(phantom)):
        print(f"not restoring the runs of {results.name}: they were made on another study phantom")
        return []
    restored = []
    for record in earlier.get("runs", []):
        target = runs_dir / f"{record['name']}.json"
        if not target.is_file():
            write_json(target, record)
            restored.append(record["name"])
    return restored


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", help="the profile whose plans and recipe are scaled")
    parser.add_argument("--budgets", type=int, nargs="+", default=[DEMO_ITERATIONS], help="training iterations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-cases", type=int, nargs="+", default=[300])
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    parser.add_argument("--references-only", action="store_true", help="only the ceiling and the true-mask baselines")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the results from the runs kept under --work")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--work", type=Path, default=REPO / "work" / "learnability")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/classification_learnability_<device>.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from phantom_work import phantom_setup

    from pancreas_multitask.runtime import git_revision, library_versions

    params, manifest, paths, device = phantom_setup(args.profile, args.work, args.device)
    work = paths.work

    import torch

    from pancreas_multitask.dataset.phantom import ensure_phantom, read_generator_truth
    from pancreas_multitask.io import write_benchmark, write_json

    phantom = {**params["phantom"], **STUDY_PHANTOM}
    ensure_phantom(paths.raw, paths.test_answers, phantom)
    truth_rows = read_generator_truth(paths.test_answers)
    num_classes = len(manifest.subtypes)
    out = args.out or REPO / "benchmarks" / "results" / f"classification_learnability_{device}.json"
    runs_dir = work / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for name in restore_runs(out, runs_dir, phantom):
        print(f"restored from {out.name}: {name}")

    references = reference_rows(work, paths, truth_rows, num_classes)
    planned = [Run(v, it, n, s) for v in args.variants for it in args.budgets for n in args.train_cases for s in args.seeds]

    def publish() -> None:
        records = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
        result = {
            "benchmark": "classification_learnability", "profile": args.profile, "device": device, "phantom": phantom,
            "references": references, "runs": records, "summary": summarise_runs(records, references, num_classes),
            "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
            "versions": library_versions(), "git_revision": git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        write_benchmark(out, result, markdown(result))

    if args.references_only or args.report_only:
        publish()
        return

    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.workspace import Workspace

    workspace = Workspace(manifest, paths, params["plans"])
    prepare(workspace, {**params, "force": False})
    test_cache = preprocess_test(workspace, work / "test_preprocessed")
    for run in planned:
        target = runs_dir / f"{run.name}.json"
        if target.is_file():
            print(f"kept: {target.name}")
            continue
        record = train_and_score(run, params, workspace, test_cache, device, num_classes)
        record["git_revision"] = git_revision(REPO)
        write_json(target, record)
        publish()
    publish()


def reference_rows(work: Path, paths, truth_rows: list[dict], num_classes: int) -> dict:
    """The ceiling and the true-mask image baselines (train -> test), computed once and kept in ``work``."""
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    from pancreas_multitask.evaluation.baselines import mean_lesion_hu
    from pancreas_multitask.evaluation.learnability import CLASSIFIERS, LATENT_NAMES, fit_predict, image_features, latent_features, seed_summary
    from pancreas_multitask.evaluation.metrics import read_label_map
    from pancreas_multitask.io import load_volume, write_json
    from pancreas_multitask.runtime import progress

    kept = work / "references.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    train = [r for r in truth_rows if r["split"] == "train"]
    test = [r for r in truth_rows if r["split"] == "test"]
    y_train, y_test = [r["subtype"] for r in train], [r["subtype"] for r in test]

    def files(row: dict) -> tuple[Path, Path]:
        if row["split"] == "test":
            return paths.raw / "test" / f"{row['case']}_0000.nii.gz", paths.test_answers / "masks" / f"{row['case']}.nii.gz"
        folder = paths.raw / row["split"] / f"subtype{row['subtype']}"
        return folder / f"{row['case']}_0000.nii.gz", folder / f"{row['case']}.nii.gz"

    def features(row: dict) -> tuple[float, list[float]]:
        image_file, mask_file = files(row)
        image, labels = load_volume(image_file).data, read_label_map(mask_file)[0]
        return mean_lesion_hu(image, labels), image_features(image, labels).tolist()

    extracted = {r["case"]: features(r) for r in progress(train + test, "lesion features", unit="case")}
    rows = {}
    latent_train, latent_test = latent_features(train), latent_features(test)
    image_train = np.array([extracted[r["case"]][1] for r in train])
    image_test = np.array([extracted[r["case"]][1] for r in test])
    for name, description in CLASSIFIERS.items():
        rows[f"ceiling-{name}"] = {"description": f"{description} on the generator's latent look ({', '.join(LATENT_NAMES)})",
                                   **seed_summary(y_test, [fit_predict(name, latent_train, y_train, latent_test)], num_classes)}
    hu_train = np.array([[extracted[r["case"]][0]] for r in train])
    hu_test = np.array([[extracted[r["case"]][0]] for r in test])
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(hu_train, y_train)
    rows["true-mask-mean-HU"] = {"description": "depth-2 tree on the true lesion's mean HU", **seed_summary(y_test, [tree.predict(hu_test)], num_classes)}
    for name, description in CLASSIFIERS.items():
        rows[f"true-mask-image-{name}"] = {"description": f"{description} on first-order and GLCM texture features of the true lesion",
                                           **seed_summary(y_test, [fit_predict(name, image_train, y_train, image_test)], num_classes)}
    result = {"fitted_on": f"train ({len(train)} cases)", "scored_on": f"test ({len(test)} cases)", "rows": rows, "test_labels": y_test}
    write_json(kept, result)
    return result


def preprocess_test(workspace, folder: Path) -> dict[str, Path]:
    """Every test case (image and its true mask) through nnU-Net's preprocessing with the workspace's plans, kept as .npz."""
    import numpy as np
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pancreas_multitask.io import atomic_path
    from pancreas_multitask.runtime import progress

    plans_manager = PlansManager(load_json(str(workspace.preprocessed / f"{workspace.plans}.json")))
    configuration = plans_manager.get_configuration("3d_fullres")
    dataset_json = load_json(str(workspace.preprocessed / "dataset.json"))
    reader = plans_manager.image_reader_writer_class()
    preprocessor = configuration.preprocessor_class(verbose=False)
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    for case in progress(workspace.ground_truth("test")[0], "test preprocessing", unit="case"):
        target = folder / f"{case.case}.npz"
        if not target.is_file():
            data, properties = reader.read_images([str(case.image_file)])
            seg, _ = reader.read_seg(str(case.gt_file))
            data, seg, _ = preprocessor.run_case_npy(data, np.rint(seg), properties, plans_manager, configuration, dataset_json)
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, data=data.astype(np.float32), seg=seg.astype(np.int8), subtype=case.subtype)
        cases[case.case] = target
    return cases


def train_and_score(run: Run, params: dict, workspace, test_cache: dict[str, Path], device: str, num_classes: int) -> dict:
    """Train one run from scratch (the scaled recipe), then classify the test cases with predicted and with oracle pooling."""
    import numpy as np
    import torch

    from pancreas_multitask.evaluation.metrics import dice
    from pancreas_multitask.experiment_planning.splits import write_splits
    from pancreas_multitask.inference.oracle import OraclePoolingPredictor
    from pancreas_multitask.inference.predictor import InferenceMode, make_predictor
    from pancreas_multitask.model.settings import HeadConfig, settings_from_parameters
    from pancreas_multitask.training.train import build_trainer, seed_everything

    table = {c.case_id: c.subtype for c in workspace.cases("train")}
    subset = train_subset(table, run.train_cases)
    validation = sorted(c.case_id for c in workspace.cases("validation"))
    write_splits(workspace.preprocessed, [{"train": subset, "val": validation}], [c.case for c in workspace.ground_truth("test")[0]])

    settings = settings_from_parameters({**params, **recipe(params, run.iterations)}, num_classes)
    head = VARIANTS[run.variant]
    if head is not None:
        settings = replace(settings, head=HeadConfig(num_classes=num_classes, **{**head, "stages": tuple(head.get("stages", (1, 2, 3)))}))
    settings = replace(settings, seed=run.seed, deployed_check_cases=0, calibrate=False)
    shutil.rmtree(workspace.fold_folder, ignore_errors=True)
    seed_everything(run.seed)
    trainer = build_trainer(workspace.preprocessed, workspace.plans, 0, device)
    trainer.configure(settings)
    start = time.perf_counter()
    trainer.run_training()  # ends with checkpoint_best restored
    seconds = time.perf_counter() - start
    metrics = trainer.metrics_frame()
    finite = metrics["val_criterion"].dropna()
    best = int(finite.idxmax()) if len(finite) else int(len(metrics) - 1)
    del trainer
    keep = workspace.paths.results.parent / "checkpoints" / run.name  # the selected model, for later analyses (not committed)
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(workspace.fold_folder, keep, ignore=shutil.ignore_patterns("checkpoint_latest.pth", "checkpoint_final.pth", "validation"))

    mode = InferenceMode(0.5, use_mirroring=False, tile_batch_size=2)  # the deployed estimator without its mirroring passes
    predicted = make_predictor(workspace.model, mode, device, folds=(0,), postprocessing=False, engine="torch")  # as every committed run
    oracle = make_predictor(workspace.model, mode, device, folds=(0,), postprocessing=False, predictor_class=OraclePoolingPredictor, engine="torch")
    head = predicted._network_module.head
    deployed = head.config.fallback
    other = next(f for f in FALLBACKS if f != deployed)
    cases, probabilities, other_probabilities, oracle_probabilities, lesion_dice, pancreas_dice, labels = [], [], [], [], [], [], []
    for case, path in sorted(test_cache.items()):
        stored = np.load(path)
        data, seg = stored["data"], stored["seg"]
        logits, p = predicted.predict_preprocessed(data)
        head.config = replace(head.config, fallback=other)  # the same checkpoint and tiles, the other fallback
        other_probabilities.append(np.round(predicted.predict_preprocessed(data)[1], 5).tolist())
        head.config = replace(head.config, fallback=deployed)
        segmentation = predicted.label_manager.convert_logits_to_segmentation(logits.float()).numpy()
        _, q = oracle.predict_with_truth(data, seg)
        cases.append(case)
        labels.append(int(stored["subtype"]))
        probabilities.append(np.round(p, 5).tolist())
        oracle_probabilities.append(np.round(q, 5).tolist())
        lesion_dice.append(round(dice(segmentation == 2, seg[0] == 2), 4))
        pancreas_dice.append(round(dice(segmentation > 0, seg[0] > 0), 4))
    return {
        "run": run.__dict__, "name": run.name, "settings": settings.to_dict(), "selected_epoch": best,
        "validation_macro_f1": None if np.isnan(metrics.loc[best, "val_macro_f1"]) else float(metrics.loc[best, "val_macro_f1"]),
        "seconds_training": round(seconds, 1), "epochs_run": int(len(metrics)),
        "cls_patches_total": int(metrics["train_cls_patches"].sum()), "patches_total": int(len(metrics) * settings.iterations_per_epoch * 2),
        "test_cases": cases, "test_labels": labels, "test_probabilities": probabilities, "test_oracle_probabilities": oracle_probabilities,
        "fallback": deployed, "other_fallback": other, "test_probabilities_other_fallback": other_probabilities,
        "test_lesion_dice": lesion_dice, "test_pancreas_dice": pancreas_dice,
        "estimator": mode.describe() + "; lesion-weighted tiles; Dice on the preprocessed grid",
    }


def summarise_runs(records: list[dict], references: dict, num_classes: int) -> list[dict]:
    """One row per (variant, iterations, train cases): both poolings over the seeds, and the lesion Dice."""
    import numpy as np

    from pancreas_multitask.evaluation.learnability import seed_summary
    from pancreas_multitask.evaluation.metrics import mean_ci

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["run"]["variant"], r["run"]["iterations"], r["run"]["train_cases"]), []).append(r)
    rows = []
    for (variant, iterations, train_cases), rs in sorted(groups.items()):
        truth = rs[0]["test_labels"]
        if any(r["test_labels"] != truth for r in rs):
            raise ValueError(f"{variant} {iterations} {train_cases}: runs scored on different test cases")
        predicted = [np.argmax(r["test_probabilities"], axis=1) for r in rs]
        other = [np.argmax(r["test_probabilities_other_fallback"], axis=1) for r in rs]
        oracle = [np.argmax(r["test_oracle_probabilities"], axis=1) for r in rs]
        lesion = np.mean([r["test_lesion_dice"] for r in rs], axis=0)
        rows.append({
            "variant": variant, "iterations": iterations, "train_cases": train_cases, "seeds": [r["run"]["seed"] for r in rs],
            "fallback": rs[0]["fallback"], "other_fallback": rs[0]["other_fallback"],
            "predicted_pooling": seed_summary(truth, predicted, num_classes),
            "predicted_pooling_other_fallback": seed_summary(truth, other, num_classes, reference=predicted),
            "oracle_pooling": seed_summary(truth, oracle, num_classes),
            "oracle_minus_predicted": seed_summary(truth, oracle, num_classes, reference=predicted)["delta_macro_f1_ci95"],
            "lesion_dice": float(lesion.mean()), "lesion_dice_ci95": list(mean_ci(lesion)),
            "pancreas_dice": float(np.mean([r["test_pancreas_dice"] for r in rs])),
            "cls_patch_share": float(np.mean([r["cls_patches_total"] / r["patches_total"] for r in rs])),
            "validation_macro_f1": [r["validation_macro_f1"] for r in rs],
            "minutes_training": float(np.mean([r["seconds_training"] for r in rs]) / 60),
        })
    return rows


def _f1(row: dict) -> str:
    low, high = row["macro_f1_ci95"]
    chance = " (indistinguishable from chance)" if row["chance"]["indistinguishable_from_chance"] else ""
    return f"{row['macro_f1']:.3f} [{low:.3f}, {high:.3f}]{chance}"


def _delta(row: dict) -> str:
    low, high = row["delta_macro_f1_ci95"]
    return f"{row['delta_macro_f1']:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown(result: dict) -> str:
    refs = result["references"]
    phantom = result["phantom"]
    lines = [
        f"Study phantom: {sum(phantom['train'])} train / {sum(phantom['validation'])} validation / {phantom['test']} test cases "
        f"(seed {phantom['seed']}, the demo's generator and calibration). Test macro-F1 [95 % bootstrap CI over test cases]; "
        f"chance: the label-permutation null's 95th percentile of the same answers.",
        "",
        f"**References** (fitted on {refs['fitted_on']}, scored on {refs['scored_on']}; no network):",
        "",
        "| reference | what it reads | test macro-F1 [95 % CI] | chance (null p95) | accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in refs["rows"].items():
        lines.append(f"| {name} | {row['description']} | {_f1(row)} | {row['chance']['permutation_null_p95']:.3f} | {row['accuracy']:.3f} |")
    lines += ["", "**Network runs** (checkpoint chosen on the validation split; test split chose nothing). Mean over seeds:", "",
              "| head | iterations | train cases | seeds | predicted pooling (deployed) | the other fallback; Δ to deployed [95 % CI] | oracle pooling (true lesion) "
              "| oracle − predicted [95 % CI] | lesion Dice [95 % CI] | patches the subtype loss saw | minutes / run |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["summary"]:
        low, high = row["oracle_minus_predicted"]
        delta = row["oracle_pooling"]["macro_f1"] - row["predicted_pooling"]["macro_f1"]  # the paired CI: oracle_minus_predicted
        lines.append(f"| {row['variant']} | {row['iterations']} | {row['train_cases']} | {len(row['seeds'])} "
                     f"| {_f1(row['predicted_pooling'])}, no lesion → {row['fallback']} | {_f1(row['predicted_pooling_other_fallback'])}, no lesion → {row['other_fallback']}; "
                     f"Δ {_delta(row['predicted_pooling_other_fallback'])} "
                     f"| {_f1(row['oracle_pooling'])} | {delta:+.3f} [{low:+.3f}, {high:+.3f}] "
                     f"| {row['lesion_dice']:.3f} [{row['lesion_dice_ci95'][0]:.3f}, {row['lesion_dice_ci95'][1]:.3f}] "
                     f"| {row['cls_patch_share']:.0%} | {row['minutes_training']:.1f} |")
        for warning in row["predicted_pooling"]["collapse_warnings"]:
            lines.append(f"|  | | | | collapse: {warning} | | | | | | |")
    if not result["summary"]:
        lines.append("| (no run finished yet) | | | | | | | | | | |")
    lines += ["", "**Recall per subtype, as deployed**, one entry per seed (subtype 0 / 1 / 2):", "",
              "| head | iterations | train cases | recall per seed |", "| --- | --- | --- | --- |"]
    for row in result["summary"]:
        per_seed = row["predicted_pooling"].get("recall_per_seed") or []
        lines.append(f"| {row['variant']} | {row['iterations']} | {row['train_cases']} | "
                     + "; ".join(" / ".join("n/a" if v is None else f"{v:.2f}" for v in seed) for seed in per_seed) + " |")
    lines += ["", "**Validation macro-F1** of each selected checkpoint (the split that chose it, and the one a choice between heads may use), "
              "one entry per seed; mean and spread (largest − smallest) over seeds:", "",
              "| head | iterations | train cases | per seed | mean | spread |", "| --- | --- | --- | --- | --- | --- |"]
    for row in result["summary"]:
        values = [v for v in row.get("validation_macro_f1", []) if v is not None]
        if values:
            lines.append(f"| {row['variant']} | {row['iterations']} | {row['train_cases']} | {', '.join(f'{v:.3f}' for v in values)} "
                         f"| {sum(values) / len(values):.3f} | {max(values) - min(values):.3f} |")
    lines += ["", "Minutes / run: the training's wall time on this machine (2 cores), mean over seeds; a run that shared the cores "
              "with other work took longer, so compare budgets by their iterations, not by these minutes."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
