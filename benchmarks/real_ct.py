"""Benchmark: does the subtype head cost (or help) the segmentation on real CT? With seeds.

Trains on the same plans, preprocessed data, budget (the profile's epochs x iterations) and seed, per seed:

* ``plain``: ``nnUNetTrainerMultitask`` with the subtype loss's weight 0 throughout (``plain_settings``): the head
  is built and gets no gradient, so the shared encoder learns from the segmentation alone. Everything else is the
  same: the class, sampler, augmentation, optimiser, learning rates, schedule and the segmentation loss's weight;
* ``multitask``: the profile's recipe, the same plus the subtype loss; ``multitask`` − ``plain`` is what the head's
  loss does to the segmentation, paired over the same cases and seeds;
* ``nnUNetTrainer`` (optional): nnU-Net's trainer with its own recipe (SGD, lr 1e-2), for reference.

Each run is scored with nnU-Net's own full-volume validation (``perform_actual_validation``, no mirroring) of its
**final** weights on the validation split (the 8 real cases for ``realct``), which chooses nothing here (all train
cases train). Resumable: every finished run is written into the results at once, and a re-run skips the runs
already there for the same budget. Writes ``benchmarks/results/real_ct_<device>.json`` and ``.md``.

    python benchmarks/real_ct.py [--profile realct] [--seeds 0 1 2] [--rows plain multitask]

With ``--curve 0.25 0.5 1 2 4``: the real-CT learning curve instead, ``multitask`` with one seed at those multiples
of the profile's epochs (its recipe otherwise), with the training minutes on this machine
(``real_ct_learning_curve_<device>.json``), resumable the same way. The point at the profile's own budget is the
seeded study's ``multitask`` run with that seed when the study has it (the same training, not run twice).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROWS = ("plain", "multitask", "nnUNetTrainer")
BASELINE = "plain"  # the same trainer without the head's loss
DESCRIPTIONS = {
    "plain": "nnUNetTrainerMultitask with the subtype loss's weight 0 (head built, no gradient); otherwise identical",
    "multitask": "nnUNetTrainerMultitask with the profile's recipe: the same plus the subtype loss",
    "nnUNetTrainer": "nnU-Net's trainer and its own recipe (SGD, lr 1e-2), for reference",
}
REGIONS = (("dsc_pancreas", "pancreas"), ("dsc_lesion", "lesion"))
UNLEARNT_LESION = 0.05  # a seed's mean lesion Dice below this: the lesion was not learnt in that run


def plain_settings(settings):
    """``settings`` with the subtype loss's weight 0 in every epoch; the segmentation loss's weights as they were."""
    schedule = settings.schedule
    return replace(settings, schedule=replace(schedule, start=(schedule.start[0], 0.0), end=(schedule.end[0], 0.0)))


def row_settings(settings, row: str):
    """The trainer settings of a multitask-class row (``plain`` or ``multitask``)."""
    return plain_settings(settings) if row == "plain" else settings


def differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The keys (dotted, list items by index) where two nested settings dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in differing(a.get(key), b.get(key), f"{prefix}{key}.")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [k for i, (x, y) in enumerate(zip(a, b)) for k in differing(x, y, f"{prefix}{i}.")]
    return [] if a == b else [prefix.rstrip(".")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="realct")
    parser.add_argument("--epochs", type=int, default=0, help="default: the profile's")
    parser.add_argument("--iterations", type=int, default=0, help="training iterations per epoch (default: the profile's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS[:2]), choices=ROWS, help="default: the two that answer the question; add nnUNetTrainer for nnU-Net's own recipe")
    parser.add_argument("--curve", type=float, nargs="+", help="instead: the learning curve, multitask with the first seed at these multiples of the "
                        "profile's epochs (e.g. 0.25 0.5 1 2 4), into real_ct_learning_curve_<device>.json")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/real_ct_<device>.json)")
    return parser.parse_args(argv)


def per_case_dice(summary_file: Path) -> dict[str, dict[str, float]]:
    """``{case: {"dsc_pancreas", "dsc_lesion"}}`` from nnU-Net's validation ``summary.json`` (regions (1, 2) and 2)."""
    summary = json.loads(summary_file.read_text())
    out = {}
    for entry in summary["metric_per_case"]:
        by_key = {tuple(ast.literal_eval(k)) if k.startswith("(") else (int(k),): v["Dice"] for k, v in entry["metrics"].items()}
        case = Path(entry["reference_file"]).name.split(".")[0]
        out[case] = {"dsc_pancreas": float(by_key[(1, 2)]), "dsc_lesion": float(by_key[(2,)])}
    return out


def metrics_trace(fold_folder: Path, column: str) -> list[float] | None:
    """One column of the trainer's metrics file, per epoch (None for nnU-Net's own trainer, which writes none). The
    subtype loss says how soon, on a one-subtype set, the head's loss has nothing left to teach the encoder; the patches
    it learnt from tell a learnt answer (loss 0 over many patches) from no patch showing the lesion (0 patches)."""
    from pancreas_multitask.model.folders import METRICS_FILE

    metrics = fold_folder / METRICS_FILE
    if not metrics.is_file():
        return None
    import pandas as pd

    return [round(float(v), 4) for v in pd.read_csv(metrics)[column]]


def summarise(runs: list[dict[str, Any]], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per row: the mean Dice over cases and seeds with a bootstrap CI over cases (each case's mean over seeds), and each
    seed's mean; against ``BASELINE``, the paired difference (same case, same seed), its CI over cases and each seed's."""
    from pancreas_multitask.evaluation.metrics import mean_ci

    by_row: dict[str, dict[int, dict]] = {}
    for run in runs:
        by_row.setdefault(run["row"], {})[run["seed"]] = run["per_case"]
    rows = {}
    for row, seeds in by_row.items():
        cases = sorted(set.intersection(*(set(c) for c in seeds.values())))
        entry: dict[str, Any] = {"seeds": sorted(seeds), "cases": len(cases)}
        for key, short in REGIONS:
            per_case = np.array([[seeds[k][c][key] for k in sorted(seeds)] for c in cases])  # cases x seeds
            entry[short] = {"mean": float(per_case.mean()), "ci95": [float(v) for v in mean_ci(per_case.mean(axis=1), resamples=resamples, seed=seed)],
                            "per_seed": [float(v) for v in per_case.mean(axis=0)]}
        if row != BASELINE and BASELINE in by_row:
            paired = sorted(set(seeds) & set(by_row[BASELINE]))
            if paired:
                base = by_row[BASELINE]
                common = [c for c in cases if all(c in base[k] for k in paired)]
                entry["vs_baseline"] = {"seeds": paired}
                for key, short in REGIONS:
                    diff = np.array([[seeds[k][c][key] - base[k][c][key] for k in paired] for c in common])
                    entry["vs_baseline"][short] = {"mean": float(diff.mean()), "ci95": [float(v) for v in mean_ci(diff.mean(axis=1), resamples=resamples, seed=seed)],
                                                   "per_seed": [float(v) for v in diff.mean(axis=0)]}
        rows[row] = entry
    return rows


def markdown(result: dict[str, Any]) -> str:
    budget = result["budget"]
    lines = [
        f"Real CT, profile `{result['profile']}`, {budget['epochs']} epochs × {budget['iterations']} iterations; the final weights of each run scored by "
        f"nnU-Net's full-volume validation (no mirroring) on the {result['cases']} validation cases, which chose nothing; {result['device']}. "
        "Mean over cases and seeds, 95 % bootstrap CI over cases (each case's mean over the seeds); one entry per seed after it.",
        "",
        f"| trainer | what | seeds | DSC whole pancreas [95 % CI]; per seed | DSC lesion [95 % CI]; per seed | Δ pancreas vs {BASELINE} [95 % CI]; per seed | Δ lesion vs {BASELINE} [95 % CI]; per seed | minutes / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(value: dict, sign: str = "") -> str:
        seeds = ", ".join(f"{v:{sign}.3f}" for v in value["per_seed"])
        return f"{value['mean']:{sign}.3f} [{value['ci95'][0]:{sign}.3f}, {value['ci95'][1]:{sign}.3f}]; {seeds}"

    minutes = {row: np.mean([r["seconds_training"] for r in result["runs"] if r["row"] == row]) / 60 for row in result["summary"]}
    for row in ROWS:
        if row not in result["summary"]:
            continue
        entry = result["summary"][row]
        versus = entry.get("vs_baseline")
        deltas = [cell(versus[short], "+") if versus else "–" for _, short in REGIONS]
        lines.append(f"| {row} | {DESCRIPTIONS[row]} | {len(entry['seeds'])} | {cell(entry['pancreas'])} | {cell(entry['lesion'])} | {deltas[0]} | {deltas[1]} | {minutes[row]:.1f} |")
    differ = result.get("settings_differ")
    if differ is not None:
        lines += ["", f"The `plain` and `multitask` settings differ only in: {', '.join(differ)} (the subtype loss's weights)."]
    return "\n".join(lines) + "\n"


def _includes_zero(effect: dict[str, Any]) -> bool:
    return effect["ci95"][0] <= 0 <= effect["ci95"][1]


def effect_words(effect: dict[str, Any]) -> str:
    """A paired difference said as its CI allows: a direction only when the interval excludes 0."""
    low, high = effect["ci95"]
    numbers = f"{effect['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"
    if low > 0:
        return f"raises it by {numbers}"
    if high < 0:
        return f"lowers it by {numbers}"
    return f"changes it by {numbers}, an interval that includes 0: no difference these cases can detect"


def headline(result: dict[str, Any]) -> str:
    """What the subtype head's loss does to the segmentation, with seeds, as the intervals allow ('' before any paired run)."""
    multitask = result["summary"].get("multitask", {})
    versus = multitask.get("vs_baseline")
    if not versus:
        return ""
    budget, seeds = result["budget"], versus["seeds"]
    parts = []
    for _, short in REGIONS:
        effect = versus[short]
        spread = ", ".join(f"{v:+.3f}" for v in effect["per_seed"])
        parts.append(f"on the {'whole pancreas' if short == 'pancreas' else short} it {effect_words(effect)} (per seed {spread})")
    plain = result["summary"][BASELINE]
    unlearnt = [f"{seed} ({plain['lesion']['per_seed'][i]:.3f} without the head's loss, {multitask['lesion']['per_seed'][j]:.3f} with it)"
                for seed in seeds for i, j in [(plain["seeds"].index(seed), multitask["seeds"].index(seed))]
                if max(plain["lesion"]["per_seed"][i], multitask["lesion"]["per_seed"][j]) < UNLEARNT_LESION]
    return (f"Adding the subtype head's loss to the same trainer (`{BASELINE}`: its weight 0, nothing else changed), at `{result['profile']}`'s budget "
            f"({budget['epochs']} epochs × {budget['iterations']} iterations), {len(seeds)} seed(s), the final weights scored on the "
            f"{result['cases']} validation cases that chose nothing: " + "; ".join(parts)
            + f". Without it the lesion Dice is {plain['lesion']['mean']:.3f} and the whole pancreas {plain['pancreas']['mean']:.3f}."
            + (f" With seed{'s' if len(unlearnt) > 1 else ''} {', '.join(unlearnt)} neither trainer learnt the lesion within the budget (mean lesion Dice "
               f"below {UNLEARNT_LESION})" + ("; for the lesion the seed matters more than the head." if _includes_zero(versus["lesion"]) else ".")
               if unlearnt else "")
            + (" One seed is not a result; see the per-seed entries." if len(seeds) < 2 else ""))


def curve_headline(result: dict[str, Any]) -> str:
    """What a CPU user gets for the training minutes of each point of the curve."""
    points = [f"{p['minutes']:.0f} min ({p['epochs']} epochs): whole pancreas {p['pancreas']['mean']:.3f} [{p['pancreas']['ci95'][0]:.3f}, "
              f"{p['pancreas']['ci95'][1]:.3f}], lesion {p['lesion']['mean']:.3f} [{p['lesion']['ci95'][0]:.3f}, {p['lesion']['ci95'][1]:.3f}]"
              for p in result["curve"]]
    return (f"Training `{result['profile']}`'s recipe for longer on {result['machine']['cpus']} CPU cores (one seed, final weights, "
            f"{result['cases']} validation cases that chose nothing): " + "; ".join(points) + ".")


def curve_summary(runs: list[dict[str, Any]], resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """The learning curve: per budget (epochs), the training minutes and each region's mean Dice with its CI over cases."""
    from pancreas_multitask.evaluation.metrics import mean_ci

    points = []
    for run in sorted(runs, key=lambda r: r["budget"]["epochs"]):
        point: dict[str, Any] = {"epochs": run["budget"]["epochs"], "iterations": run["budget"]["epochs"] * run["budget"]["iterations"],
                                 "minutes": run["seconds_training"] / 60, "seed": run["seed"], "source": run.get("source"),
                                 "seconds_per_iteration": run["seconds_training"] / (run["budget"]["epochs"] * run["budget"]["iterations"]),
                                 "date": run.get("date"), "subtype_loss_per_epoch": run.get("subtype_loss_per_epoch"),
                                 "subtype_patches_per_epoch": run.get("subtype_patches_per_epoch")}
        for key, short in REGIONS:
            values = [c[key] for c in run["per_case"].values()]
            point[short] = {"mean": float(np.mean(values)), "ci95": [float(v) for v in mean_ci(values, resamples=resamples, seed=seed)]}
        points.append(point)
    return points


def curve_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Real CT learning curve, profile `{result['profile']}` (its recipe, {result['iterations_per_epoch']} iterations per epoch; only the epochs change), "
        f"`multitask`, one seed ({result['seed']}): the final weights scored by nnU-Net's full-volume validation (no mirroring) on the {result['cases']} "
        f"validation cases, which chose nothing; training minutes on {result['machine']['cpus']} CPU cores ({result['device']}). 95 % bootstrap CI over cases. "
        "The points ran at different times, and this machine's speed varies between sessions: the training's wall seconds per iteration (its validation "
        "passes included) say how fast it was for each.",
        "",
        "| × the profile's budget | epochs | iterations | training minutes | training wall seconds / iteration | measured | DSC whole pancreas [95 % CI] | DSC lesion [95 % CI] | subtype loss: first epoch → 5th → last (patches it learnt from) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for point in result["curve"]:
        p, q, trace = point["pancreas"], point["lesion"], point.get("subtype_loss_per_epoch")
        patches = point.get("subtype_patches_per_epoch")
        epochs = sorted({0, min(4, len(trace) - 1), len(trace) - 1}) if trace else []
        losses = " → ".join(f"{trace[i]:.3f}" + (f" ({patches[i]:.0f})" if patches else "") for i in epochs) if trace else "not recorded"
        lines.append(f"| {point['epochs'] / result['profile_epochs']:.2g} | {point['epochs']} | {point['iterations']} | {point['minutes']:.1f} | {point['seconds_per_iteration']:.2f} | {point.get('date') or '–'} | "
                     f"{p['mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] | {q['mean']:.3f} [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}] | {losses} |")
    lines += [f"\nThe point at {point['epochs']} epochs is the seeded study's `multitask` run with seed {point['seed']} (`{point['source']}`), the same training, "
              "taken from there rather than trained twice." for point in result["curve"] if point.get("source")]
    return "\n".join(lines) + "\n"


def load_runs(out: Path, profile: str, budget: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The runs already in ``out`` for this profile (and ``budget``, when given): what a re-run skips."""
    if not out.is_file():
        return []
    previous = json.loads(out.read_text())
    if previous.get("profile") != profile or (budget is not None and previous.get("budget") != budget):
        return []
    return list(previous.get("runs", []))


def identical_run(runs: list[dict[str, Any]], seed: int, budget: dict[str, int], settings: dict[str, Any]) -> dict[str, Any] | None:
    """The seeded study's ``multitask`` run with this seed, budget and settings, if there is one: the curve's point at
    the profile's own budget is that same training, so it is taken from there instead of being trained twice."""
    same = json.loads(json.dumps(settings))  # as the JSON holds it (tuples become lists)
    return next((r for r in runs if r["row"] == "multitask" and r["seed"] == seed and r["budget"] == budget and r["settings"] == same), None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configure_nnunet, detect_device, git_revision, library_versions

    params = load_parameters(REPO / "notebooks" / "params", args.profile)
    manifest = load_manifest(REPO / "data_manifest.yaml")
    results_root = manifest.paths(args.profile).work / "benchmark_real_ct"  # the profile's own model stays untouched
    paths = replace(manifest.paths(args.profile), results=results_root)
    device = detect_device(args.device)
    configure_nnunet(paths, device)

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.io import write_benchmark
    from pancreas_multitask.model.folders import fold_folder, model_folder
    from pancreas_multitask.model.settings import settings_from_parameters
    from pancreas_multitask.training.train import build_trainer, seed_everything
    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask
    from pancreas_multitask.workspace import Workspace

    plans = params["plans"]
    prepare(Workspace(manifest, paths, plans), {**params, "split_mode": "given"})  # all train cases train; the final weights are scored on the validation cases, which choose nothing here
    pre = paths.nnunet_preprocessed / manifest.dataset_name
    iterations = args.iterations or int(params["iterations_per_epoch"])

    def budget_of(epochs: int) -> dict[str, int]:
        return {"epochs": epochs, "iterations": iterations, "val_iterations": int(params["val_iterations_per_epoch"])}

    def settings_for(epochs: int):
        return settings_from_parameters({**params, "epochs": epochs, "iterations_per_epoch": iterations, "patience": epochs + 1, "save_every": epochs + 1},
                                        len(manifest.subtypes))

    def train_and_score(row: str, seed: int, epochs: int) -> dict[str, Any]:
        """One run: trained from scratch, its final weights scored on the validation cases."""
        seed_everything(seed)
        trainer_class = nnUNetTrainer if row == "nnUNetTrainer" else nnUNetTrainerMultitask
        shutil.rmtree(fold_folder(model_folder(results_root, manifest.dataset_name, plans, trainer_class.__name__), 0), ignore_errors=True)  # a fresh fold folder per run
        trainer = build_trainer(pre, plans, 0, device, trainer_class=trainer_class)
        if row == "nnUNetTrainer":
            trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = epochs, iterations, budget_of(epochs)["val_iterations"]
        else:
            trainer.configure(replace(row_settings(settings_for(epochs), row), seed=seed))
        start = time.perf_counter()
        trainer.run_training()
        seconds = time.perf_counter() - start
        final = Path(trainer.output_folder) / "checkpoint_final.pth"
        network = trainer.multitask_network() if isinstance(trainer, nnUNetTrainerMultitask) else trainer.network
        network.load_state_dict(torch.load(final, map_location=trainer.device, weights_only=False)["network_weights"])  # same footing: final weights
        trainer.inference_allowed_mirroring_axes = None  # no mirroring TTA in this validation, for every row
        trainer.perform_actual_validation(save_probabilities=False)
        return {"row": row, "seed": seed, "budget": budget_of(epochs), "seconds_training": round(seconds, 1), "git_revision": git_revision(REPO),
                "date": time.strftime("%Y-%m-%d %H:%M"), "settings": row_settings(settings_for(epochs), row).to_dict() if row != "nnUNetTrainer" else "nnU-Net's defaults",
                "per_case": per_case_dice(Path(trainer.output_folder) / "validation" / "summary.json"),
                "subtype_loss_per_epoch": metrics_trace(Path(trainer.output_folder), "train_cls_losses"),
                "subtype_patches_per_epoch": metrics_trace(Path(trainer.output_folder), "train_cls_patches")}

    common = {"benchmark": "real_ct", "profile": args.profile, "plans": plans, "plan": params.get("cpu_plan"), "device": device,
              "weights": "checkpoint_final (no selection)", "validation": "nnU-Net perform_actual_validation, no mirroring",
              "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
              "versions": library_versions()}
    profile_epochs = args.epochs or int(params["epochs"])
    if args.curve:  # one seed of multitask at each multiple of the profile's epochs
        out = args.out or REPO / "benchmarks" / "results" / f"real_ct_learning_curve_{device}.json"
        runs = [r for r in load_runs(out, args.profile) if r["budget"]["iterations"] == iterations]
        seeded_out = REPO / "benchmarks" / "results" / f"real_ct_{device}.json"
        for scale in args.curve:
            epochs = max(1, round(profile_epochs * scale))
            if any(r["budget"]["epochs"] == epochs and r["seed"] == args.seeds[0] for r in runs):
                print(f"{epochs} epochs: in {out} already", flush=True)
                continue
            same = identical_run(load_runs(seeded_out, args.profile, budget_of(epochs)), args.seeds[0], budget_of(epochs), settings_for(epochs).to_dict())
            if same is not None:
                print(f"{epochs} epochs: the same training as the seeded study's multitask seed {args.seeds[0]}, taken from {seeded_out.name}", flush=True)
            runs.append({**same, "source": seeded_out.name} if same is not None else train_and_score("multitask", args.seeds[0], epochs))
            result = {**common, "benchmark": "real_ct_learning_curve", "profile_epochs": profile_epochs, "iterations_per_epoch": iterations, "seed": args.seeds[0],
                      "cases": len(runs[0]["per_case"]), "curve": curve_summary(runs), "runs": runs}
            write_benchmark(out, result, curve_markdown(result))  # after every run: an interrupted curve resumes from here
        return
    out = args.out or REPO / "benchmarks" / "results" / f"real_ct_{device}.json"
    budget = budget_of(profile_epochs)
    runs = load_runs(out, args.profile, budget)
    done = {(r["row"], r["seed"]) for r in runs}
    for seed in args.seeds:
        for row in args.rows:
            if (row, seed) in done:
                print(f"{row}, seed {seed}: in {out} already", flush=True)
                continue
            runs.append(train_and_score(row, seed, profile_epochs))
            result = {**common, "budget": budget, "cases": len(runs[0]["per_case"]),
                      "settings_differ": differing(plain_settings(settings_for(profile_epochs)).to_dict(), settings_for(profile_epochs).to_dict()),
                      "summary": summarise(runs), "runs": runs}
            write_benchmark(out, result, markdown(result))  # after every run: an interrupted study resumes from here


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    main()
