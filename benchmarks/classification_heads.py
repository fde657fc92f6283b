"""Benchmark: which subtype head, on the calibrated phantom, chosen on validation and reported on a held-out test split.

One backbone is trained first, once, with the profile's own full recipe (the demo's: 60 epochs, its
head ``bottleneck · lesion · mean``), so that every head pools over a lesion the network can already
find: a short CPU run from scratch finds no lesion at all (seen here: 36 segmentation-only epochs gave
lesion pseudo-Dice 0.0), and would compare heads on global averages. Every head variant (``HeadConfig``:
feature source, pooling, reducer) then starts from that backbone's encoder and decoder with a fresh
head, and trains jointly (segmentation and subtype, weights 0.5/0.5) with the same recipe and budget,
once per seed (the seed sets the head's initialisation, the patch sampling and dropout). Caveat: the
backbone's encoder was shaped by the lesion-masked mean head, which may favour the bottleneck variants
with lesion pooling. Each run selects its checkpoint on the validation split, as training always does
(``checkpoint_best``: the criterion of EMA pseudo-Dice and case-level macro-F1). The default head is chosen
on **validation** only (``choose``): the best mean validation macro-F1 over the seeds, unless it leads the
current default (``bottleneck · lesion · mean``) by no more than the seeds' spread. The test split (its own phantom
draw, larger than the demo's) takes part in no choice; its cases are classified by the deployed estimator without its mirroring
passes (``test_mode``: nnU-Net's sliding window at step 0.5, every tile's class probabilities weighted by
its predicted lesion).

Reported per variant: test macro-F1 and accuracy, the mean over seeds, with a 95 % bootstrap CI over
test cases (each resample scores every seed, then averages), the per-seed values, and the paired
difference to the original head (the seed project's bottleneck global average) on the same resamples. Two
reference rows: a mean-lesion-HU threshold rule (a depth-2 tree on the ground-truth lesion's mean HU,
fitted on train) and a linear probe (logistic regression, fitted on train) on the frozen pooled
features of the chosen variant's selected model.

Resumable: each finished run is kept under ``work/benchmark_heads/runs/``. Writes
``benchmarks/results/classification_heads_<device>.json`` and ``.md``.

    python benchmarks/classification_heads.py [--seeds 0 1 2] [--variants ...] [--epochs 8] [--test-cases 45]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_VARIANT = "bottleneck-avg-mean"
# name -> HeadConfig fields; the original head (the seed project's) first
VARIANTS = {
    SEED_VARIANT: {"source": "bottleneck", "pooling": "avg", "reducer": "mean"},
    "bottleneck-lesion-mean": {"source": "bottleneck", "pooling": "lesion", "reducer": "mean"},
    "bottleneck-lesion-meanstd": {"source": "bottleneck", "pooling": "lesion", "reducer": "mean_std"},
    "bottleneck-lesion-attention": {"source": "bottleneck", "pooling": "lesion", "reducer": "attention"},
    "encoder123-lesion-meanstd": {"source": "encoder", "stages": [1, 2, 3], "pooling": "lesion", "reducer": "mean_std"},
    "decoder-lesion-meanstd": {"source": "decoder", "pooling": "lesion", "reducer": "mean_std"},
}


def test_mode():
    """The estimator on the test split: the deployed one (nnU-Net's sliding window, step 0.5, lesion-weighted tiles)
    without its 8 mirroring passes, which would cost 8x on 18 runs x 45 cases on CPU (the trainer's estimator check
    measures how rarely mirroring changes a subtype)."""
    from pancreas_multitask.inference.predictor import InferenceMode

    return InferenceMode(0.5, use_mirroring=False, tile_batch_size=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", help="the profile whose phantom, plans and recipe are used")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--backbone-seed", type=int, default=12345, help="seed of the one backbone (the profile's recipe)")
    parser.add_argument("--epochs", type=int, default=8, help="joint epochs of each head variant, from the backbone")
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    parser.add_argument("--test-cases", type=int, default=45, help="test cases of the benchmark's phantom (the demo has 12)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--work", type=Path, default=REPO / "work" / "benchmark_heads")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/classification_heads_<device>.json)")
    return parser.parse_args(argv)


def budget(args: argparse.Namespace) -> dict:
    """The recipe every head variant gets, from the shared backbone: the profile's, at this budget, no early stop."""
    return {"epochs": args.epochs, "iterations_per_epoch": args.iterations, "val_iterations_per_epoch": 2, "patience": args.epochs + 1,
            "save_every": args.epochs + 1, "case_val_every": 4,
            "loss_schedule": {"start": [0.5, 0.5], "end": [0.5, 0.5], "phase1_epochs": 0, "ramp_epochs": 1}}


def summarise(name: str, truth, predicted_per_seed, num_classes: int, reference=None) -> dict:
    """Mean-over-seeds test macro-F1 and accuracy with bootstrap CIs, per-seed values, paired difference to ``reference``
    (``learnability.seed_summary``, which the learnability study shares)."""
    from pancreas_multitask.evaluation.learnability import seed_summary

    row = {"variant": name, **seed_summary(truth, predicted_per_seed, num_classes, reference)}
    if "delta_macro_f1" in row:
        row["delta_macro_f1_vs_seed_variant"] = row.pop("delta_macro_f1")
    return row


INCUMBENT = "bottleneck-lesion-mean"  # the current default (the profiles' head)


def choose(records: dict[str, list[dict]], val_f1: dict[str, float]) -> tuple[str, str]:
    """The default head, on validation only: the best mean validation macro-F1 over the seeds, unless it beats the
    current default by no more than the seeds' spread (the larger standard deviation of the two), when the default stays."""
    import numpy as np

    best = max(val_f1, key=val_f1.get)
    if INCUMBENT not in val_f1 or best == INCUMBENT:
        return best, f"{best} (the best mean validation macro-F1)"
    spread = max(float(np.std([r["validation_macro_f1"] for r in records[v]])) for v in (best, INCUMBENT))
    margin = val_f1[best] - val_f1[INCUMBENT]
    if margin <= spread:
        return INCUMBENT, (f"{INCUMBENT}, the current default, kept ({best} leads it on validation by only {margin:.3f} macro-F1, "
                           f"inside the seeds' spread of {spread:.3f})")
    return best, f"{best} ({best} leads the current default {INCUMBENT} on validation by {margin:.3f} macro-F1, more than the seeds' spread of {spread:.3f})"


def calibration_summary(records: list[dict], truth) -> dict | None:
    """Temperature scaling of the chosen variant: per seed fitted on its validation probabilities, ECE on the test split
    before and after (mean over the seeds that recorded validation probabilities)."""
    import numpy as np

    from pancreas_multitask.model.calibration import expected_calibration_error, fit_temperature, temperature_bound

    rows = []
    for record in records:
        if "validation_probabilities" not in record:
            continue
        calibration = fit_temperature(np.array(record["validation_probabilities"]), record["validation_labels"], "validation")
        test = np.array(record["test_probabilities"])
        rows.append({"seed": record["seed"], "temperature": calibration.temperature, "ece_before": expected_calibration_error(test, truth),
                     "ece_after": expected_calibration_error(calibration.apply(test), truth),
                     "at_bound": temperature_bound(calibration.temperature, calibration.cases)})
    if not rows:
        return None
    return {"per_seed": rows, "seeds": len(rows), **{f"seeds_at_{b}": sum(r["at_bound"] == b for r in rows) for b in ("top", "bottom")},
            **{k: float(np.mean([r[k] for r in rows])) for k in ("temperature", "ece_before", "ece_after")}}


def markdown(result: dict) -> str:
    b = result["budget"]
    partial = [f"**Partial run: {len(result['seeds'])} of {MIN_SEEDS} seeds.**", ""] if len(result["seeds"]) < MIN_SEEDS else []
    lines = [*partial,
        f"Phantom test split ({result['test_cases']} cases, no part in any choice), {len(result['seeds'])} seed(s), "
        f"one backbone (the profile's recipe, {result['backbone']['settings']['num_epochs']} epochs, lesion pseudo-Dice {result['backbone'].get('pseudo_dice_lesion', float('nan')):.2f}), "
        f"then per head variant and seed {b['epochs']} joint epochs x {b['iterations_per_epoch']} iterations from it, "
        f"{result['device']}. Checkpoints chosen on the validation split "
        f"({result['validation_cases']} cases), the default variant on the validation macro-F1 over seeds. Mean over seeds [95 % bootstrap CI over test cases].",
        "",
        "| variant | head | val macro-F1 (used to choose) | test macro-F1 [95 % CI] | per seed | test accuracy [95 % CI] | Δ macro-F1 vs the original head [95 % CI] |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        val = f"{row['validation_macro_f1']:.3f}" if row.get("validation_macro_f1") is not None else "—"
        delta = f"{row['delta_macro_f1_vs_seed_variant']:+.3f} [{row['delta_macro_f1_ci95'][0]:+.3f}, {row['delta_macro_f1_ci95'][1]:+.3f}]" if "delta_macro_f1_ci95" in row else "—"
        mark = " **(chosen)**" if row["variant"] == result["chosen"] and len(result["seeds"]) >= MIN_SEEDS else ""
        lines.append(
            f"| {row['variant']}{mark} | {row['description']} | {val} | {row['macro_f1']:.3f} [{row['macro_f1_ci95'][0]:.3f}, {row['macro_f1_ci95'][1]:.3f}] "
            f"| {', '.join(f'{v:.2f}' for v in row['macro_f1_per_seed'])} | {row['accuracy']:.3f} [{row['accuracy_ci95'][0]:.3f}, {row['accuracy_ci95'][1]:.3f}] | {delta} |"
        )
    lines += ["", result["verdict"]]
    cal = result.get("calibration")
    if cal:
        lines += ["", f"Temperature scaling of the chosen variant (fitted on each seed's validation probabilities, judged on the test split, "
                      f"{cal['seeds']} seed(s)): temperature {cal['temperature']:.2f}, test ECE {cal['ece_before']:.3f} before, {cal['ece_after']:.3f} after."]
        if cal.get("seeds_at_top"):
            lines[-1] += (f" In {cal['seeds_at_top']} of {cal['seeds']} seeds the temperature is at the top of its range: the head is near "
                          "a constant answer on the validation cases, so their probabilities say almost nothing on the subtype and "
                          "scaling flattens them towards uniform" + (", which made the test ECE worse." if cal["ece_after"] > cal["ece_before"] else "."))
        if cal.get("seeds_at_bottom"):
            lines[-1] += (f" In {cal['seeds_at_bottom']} of {cal['seeds']} seeds it is at the bottom of its range "
                          "(all or nearly all validation cases right): the calibrated probabilities are close to 0 or 1.")
    return "\n".join(lines) + "\n"


MIN_SEEDS = 3  # fewer seeds make a partial run: reported, but no default is chosen from it


def verdict(result: dict) -> str:
    """One sentence: which variant won on validation, and whether it beats the original head (the seed's) on test beyond noise."""
    if len(result["seeds"]) < MIN_SEEDS:
        return (f"Partial run: {len(result['seeds'])} of the {MIN_SEEDS} seeds this benchmark needs, so no default is chosen from it "
                f"(the validation choice would be {result['choice']}).")
    rows = {r["variant"]: r for r in result["rows"]}
    chosen = rows[result["chosen"]]
    if result["chosen"] == SEED_VARIANT:
        return f"Default chosen on validation: {result['choice']}, the original head itself."
    if "delta_macro_f1_ci95" not in chosen:
        return f"Default chosen on validation: {result['choice']}. No run of the original head ({SEED_VARIANT}) to compare it with."
    low, high = chosen["delta_macro_f1_ci95"]
    beyond = "beyond noise (the paired CI excludes 0)" if low > 0 else "within noise (the paired CI includes 0): it is not shown better than the original head"
    return (f"Default chosen on validation: {result['choice']}. On the test split it differs from the original head ({SEED_VARIANT}) "
            f"by {chosen['delta_macro_f1_vs_seed_variant']:+.3f} macro-F1 [{low:+.3f}, {high:+.3f}], {beyond}.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from phantom_work import phantom_setup

    from pancreas_multitask.runtime import git_revision, library_versions

    params, manifest, paths, device = phantom_setup(args.profile, args.work, args.device)
    work = paths.work

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from pancreas_multitask.dataset.phantom import ensure_phantom
    from pancreas_multitask.evaluation.baselines import mean_lesion_hu
    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.inference.predictor import InferenceMode, make_predictor
    from pancreas_multitask.io import atomic_path, load_volume, write_benchmark, write_json
    from pancreas_multitask.model.settings import HeadConfig, settings_from_parameters
    from pancreas_multitask.training.train import build_trainer, seed_everything
    from pancreas_multitask.workspace import Workspace

    ensure_phantom(paths.raw, paths.test_answers, {**params["phantom"], "test": args.test_cases})
    workspace = Workspace(manifest, paths, params["plans"])
    prepare(workspace, {**params, "force": False})
    num_classes = len(manifest.subtypes)
    test = workspace.ground_truth("test")[0]
    truth = np.array([c.subtype for c in test])
    validation_cases = len(workspace.cases("validation"))
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    cache: dict[str, np.ndarray] = {}  # preprocessed test images, shared by all runs (same plans)

    backbone_settings = replace(settings_from_parameters(params, num_classes), seed=args.backbone_seed, deployed_check_cases=0, calibrate=False)
    if (runs / "backbone.json").is_file():  # checked before anything is reused: every run starts from this backbone
        kept = json.loads((runs / "backbone.json").read_text())["settings"]
        wanted = json.loads(json.dumps(backbone_settings.to_dict(), default=str))
        if kept != wanted:
            changed = sorted(k for k in set(kept) | set(wanted) if kept.get(k) != wanted.get(k))
            raise SystemExit(f"{runs}: the kept backbone was trained with other settings than the profile's ({', '.join(changed)}); "
                             f"remove {runs} (every run there starts from it) or pass another --work")

    def backbone() -> Path:
        """The shared backbone (encoder + decoder weights of the profile's own recipe), trained once and kept."""
        weights = runs / "backbone.pth"
        if not weights.is_file():
            settings = backbone_settings
            shutil.rmtree(workspace.fold_folder, ignore_errors=True)
            seed_everything(args.backbone_seed)
            trainer = build_trainer(workspace.preprocessed, workspace.plans, 0, device)
            trainer.configure(settings)
            trainer.run_training()  # ends with its checkpoint_best restored
            metrics = trainer.metrics_frame()
            best = int(metrics["val_criterion"].idxmax())
            write_json(runs / "backbone.json", {"settings": settings.to_dict(), "selected_epoch": best,
                                                 **{c: float(metrics.loc[best, c]) for c in metrics.columns if c.startswith("pseudo_dice_")}})
            state = {k: v for k, v in trainer.multitask_network().state_dict().items() if not k.startswith("head.")}
            with atomic_path(weights) as tmp:
                torch.save(state, tmp)
            del trainer
        return weights

    def run(variant: str, seed: int) -> dict:
        done = runs / f"{variant}_seed{seed}.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if record.get("budget") != budget(args) or record["test_cases"] != [c.case for c in test]:
                raise SystemExit(f"{done}: this run had another budget or test split ({record.get('budget')}, "
                                 f"{len(record['test_cases'])} test cases); remove it to re-run it, or pass another --work")
            return record
        start_weights = torch.load(backbone(), map_location="cpu", weights_only=True)
        head = HeadConfig(num_classes=num_classes, **{**VARIANTS[variant], "stages": tuple(VARIANTS[variant].get("stages", (1, 2, 3)))})
        settings = replace(settings_from_parameters({**params, **budget(args)}, num_classes), head=head, seed=seed, deployed_check_cases=0, calibrate=False)
        shutil.rmtree(workspace.fold_folder, ignore_errors=True)
        seed_everything(seed)
        trainer = build_trainer(workspace.preprocessed, workspace.plans, 0, device)
        trainer.configure(settings)
        trainer.initialize()
        missing, unexpected = trainer.multitask_network().load_state_dict(start_weights, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise RuntimeError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}")
        start = time.perf_counter()
        trainer.run_training()  # ends with the validation-selected weights (checkpoint_best) restored
        seconds = time.perf_counter() - start
        metrics = trainer.metrics_frame()
        best = int(metrics["val_criterion"].idxmax())
        predictor = make_predictor(workspace.model, test_mode(), device, folds=(0,), postprocessing=False, engine="torch")
        probabilities = []
        for case in test:
            if case.case not in cache:
                cache[case.case] = predictor.preprocess([str(case.image_file)])[0]
            probabilities.append(predictor.predict_preprocessed(cache[case.case])[1].tolist())
        record = {"variant": variant, "seed": seed, "head": head.describe(), "budget": budget(args), "git_revision": git_revision(REPO), "selected_epoch": best,
                  "validation_macro_f1": float(metrics.loc[best, "val_macro_f1"]), "seconds_training": round(seconds, 1),
                  "test_probabilities": probabilities, "test_cases": [c.case for c in test]}
        record["probe"] = probe_features(trainer)  # ~20 s; kept for every run, so the chosen variant needs no re-run
        val_keys = sorted(trainer._case_keys[1])  # for temperature scaling: fitted on validation, judged on test
        val_data = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys)
        record["validation_probabilities"] = [predictor.predict_preprocessed(np.asarray(val_data.load_case(k)[0][:]))[1].tolist() for k in val_keys]
        record["validation_labels"] = [trainer._subtype(k) for k in val_keys]
        write_json(done, record)
        del trainer
        return record

    def pooled_case_features(predictor, data: np.ndarray) -> np.ndarray:
        """The head's pooled input vector (what its MLP sees), tile-weighted like the class probabilities."""
        pooled: list[torch.Tensor] = []
        hook = predictor._network_module.head.mlp.register_forward_pre_hook(lambda m, a: pooled.append(a[0].float().cpu()))
        try:
            predictor.predict_preprocessed(data)
        finally:
            hook.remove()
        features, weights = torch.cat(pooled), torch.cat(predictor._tiles[1]).clamp(min=0)
        weights = weights if float(weights.sum()) > 0 else torch.ones_like(weights)
        return ((features * weights[:, None]).sum(0) / weights.sum()).numpy()

    def probe_features(trainer) -> dict:
        """Frozen pooled features of the selected model on the train cases and the test cases (one pass each, no mirroring)."""
        predictor = make_predictor(workspace.model, InferenceMode(0.5, use_mirroring=False, tile_batch_size=2), device, folds=(0,), postprocessing=False, engine="torch")
        train_keys = sorted(k for k in trainer._case_keys[0])
        dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, train_keys)
        train = [pooled_case_features(predictor, np.asarray(dataset.load_case(k)[0][:])).tolist() for k in train_keys]
        return {"train": train, "train_labels": [trainer._subtype(k) for k in train_keys],
                "test": [pooled_case_features(predictor, cache[c.case]).tolist() for c in test]}

    # every variant for every seed (seeds outermost, so a cut-short run still compares all variants), then the pick on validation
    by_seed = [{v: run(v, s) for v in args.variants} for s in args.seeds]
    records = {v: [runs_of_seed[v] for runs_of_seed in by_seed] for v in args.variants}
    val_f1 = {v: float(np.mean([r["validation_macro_f1"] for r in rs])) for v, rs in records.items()}
    chosen, choice = choose(records, val_f1)

    predicted = {v: [np.argmax(np.array(r["test_probabilities"]), axis=1) for r in rs] for v, rs in records.items()}
    reference = predicted.get(SEED_VARIANT)
    rows = []
    for variant, rs in records.items():
        row = summarise(variant, truth, predicted[variant], num_classes, reference if variant != SEED_VARIANT else None)
        row.update(description=rs[0]["head"], validation_macro_f1=val_f1[variant])
        rows.append(row)
    # reference rows: mean lesion HU (ground-truth masks, a threshold rule fitted on train) and the linear probe
    train_cases = workspace.ground_truth("train")[0]
    hu = lambda c: mean_lesion_hu(load_volume(c.image_file).data, np.rint(load_volume(c.gt_file).data).astype(int))  # noqa: E731
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(np.array([[hu(c)] for c in train_cases]), [c.subtype for c in train_cases])
    hu_row = summarise("mean-lesion-HU rule", truth, [tree.predict(np.array([[hu(c)] for c in test]))], num_classes, reference)
    hu_row.update(description="depth-2 tree on the ground-truth lesion's mean HU, fitted on train (oracle mask)", validation_macro_f1=None)
    probes = []
    for record in records[chosen]:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(record["probe"]["train"], record["probe"]["train_labels"])
        probes.append(probe.predict(np.array(record["probe"]["test"])))
    probe_row = summarise("linear probe", truth, probes, num_classes, reference)
    probe_row.update(description=f"logistic regression on the frozen pooled features of {chosen}, fitted on train", validation_macro_f1=None)
    rows += [hu_row, probe_row]

    result = {
        "benchmark": "classification_heads", "profile": args.profile, "plans": workspace.plans, "device": device, "seeds": args.seeds,
        "budget": budget(args), "backbone": json.loads((runs / "backbone.json").read_text()), "phantom": {**params["phantom"], "test": args.test_cases}, "test_cases": len(test), "validation_cases": validation_cases,
        "estimator": test_mode().describe() + "; lesion-weighted tiles (the deployed estimator without its mirroring passes)",
        "selection": {"checkpoint": "validation split (checkpoint_best)", "variant": "validation macro-F1, mean over seeds", "reported": "test split (chose nothing)"},
        "chosen": chosen, "choice": choice, "rows": rows,
        "runs": [{"variant": r["variant"], "seed": r["seed"], "selected_epoch": r["selected_epoch"], "validation_macro_f1": r["validation_macro_f1"],
                  "trained_at_revision": r.get("git_revision", "not recorded"),
                  "test_probabilities": np.round(r["test_probabilities"], 4).tolist()} for rs in records.values() for r in rs],
        "test_labels": truth.tolist(),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": library_versions(), "git_revision": git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    result["calibration"] = calibration_summary(records[chosen], truth)
    result["verdict"] = verdict(result)
    write_benchmark(args.out or REPO / "benchmarks" / "results" / f"classification_heads_{device}.json", result, markdown(result))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    main()
