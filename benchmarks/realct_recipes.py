"""Benchmark: which `realct` recipe holds up on cases that chose nothing, within the profile's CPU budget.

Each recipe is the `realct` profile's parameters with a few keys replaced (as a profile layer replaces them) and
runs the profile's own stages in its own work folder (``work/realct_recipes/<recipe>``): prepare (the
profile's 5-fold split over the train cases), train fold 0 (four fifths train; the other fifth chooses the
checkpoint and nnU-Net's postprocessing, with the safeguard), then ``fast`` inference with the stored
postprocessing on the validation split. Two scores per recipe, per case:

* **selection**: nnU-Net's full-volume validation of the selected checkpoint on fold 0's held-out train cases
  (no postprocessing). **Recipes are compared and chosen on these cases only.**
* **validation**: the shipped pipeline's masks on the validation cases, which chose nothing (not the checkpoint,
  not the postprocessing, not the recipe); reported, never used to choose.

Paired differences against ``profile`` (the recipe as shipped) over the same cases and seeds, with bootstrap CIs over
cases. Whether the lesion is learnt at all within the budget depends on the seed (``real_ct_cpu.json``), so a recipe
is judged on more than one seed: a difference smaller than the seeds' spread is not a finding. The first seed is the
profile's own (the trainer settings' default). Resumable: each (recipe, seed) runs in its own process (nnU-Net reads its
folders at import) and is written into the results as soon as it finishes; a re-run skips those already there with the
same parameters.

    python benchmarks/realct_recipes.py [--recipes profile lr_5e-3 ...] [--seeds 12345 1]

Writes ``benchmarks/results/realct_recipes_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BASELINE = "profile"
SEED = 12345  # the profile's own training seed (MultitaskSettings' default); checked in the tests
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "profile": ("the `realct` profile as shipped", {}),
    "epochs_45": ("45 epochs instead of 30 (1.5x the training, about what 40 minutes with the install allow)", {"epochs": 45}),
    "lr_5e-3": ("learning rate 5e-3 instead of 2e-3", {"initial_lr": 0.005}),
    "lr_1e-3": ("learning rate 1e-3 instead of 2e-3", {"initial_lr": 0.001}),
    "grid_2.0x1.2": ("a finer grid, 2.0×1.2×1.2 mm, same patch (less context, same cost per iteration)",
                     {"cpu_plan": {"patch_size": [32, 64, 80], "base_features": 8, "max_features": 64, "batch_size": 2, "spacing": [2.0, 1.2, 1.2]}}),
    "oversample_0.66": ("two thirds of each batch centred on foreground (nnU-Net's default: a third)",
                        {"trainer_extra": {"head_lr_factor": 5.0, "final_validation_mirroring": False, "deployed_check_cases": 0, "oversample_foreground": 0.66}}),
    "batch_4_half_iterations": ("batch 4 with half the iterations per epoch (same patches seen)",
                                {"cpu_plan": {"patch_size": [32, 64, 80], "base_features": 8, "max_features": 64, "batch_size": 4, "spacing": [2.5, 1.5, 1.5]},
                                 "iterations_per_epoch": 13}),
}
REGIONS = (("dsc_pancreas", "pancreas"), ("dsc_lesion", "lesion"))


def recipe_parameters(profile: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """The profile's parameters with the recipe's keys replaced, as a profile layer replaces them (whole values)."""
    return {**profile, **overlay}


def validation_dice(workspace, predictions: Path) -> dict[str, dict[str, float]]:
    """Per validation case, the whole-pancreas and lesion Dice of the masks in ``predictions`` against the raw masks."""
    import SimpleITK as sitk

    from pancreas_multitask.evaluation.metrics import region_dices

    out = {}
    for case in workspace.cases("validation"):
        truth = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask)))).astype(np.int16)
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / f"{case.case_id}{workspace.manifest.file_ending}")))
        out[case.case_id] = {k: float(v) for k, v in region_dices(pred, truth).items()}
    return out


def run_recipe(name: str, device: str, seed: int | None = None) -> dict[str, Any]:
    """Prepare, train fold 0 (with ``seed``; None: the settings' default) and predict the validation split with one
    recipe, in its own work folder (prepared once per recipe; each seed's training replaces the last)."""
    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configure_nnunet, detect_device, git_revision, library_versions

    description, overlay = RECIPES[name]
    params = recipe_parameters(load_parameters(REPO / "notebooks" / "params", "realct"), overlay)
    manifest = load_manifest(REPO / "data_manifest.yaml")
    profile_paths = manifest.paths("realct")
    paths = replace(profile_paths, work=profile_paths.work.parent / "realct_recipes" / name)
    device = detect_device(device)
    configure_nnunet(paths, device)  # before nnunetv2 is imported

    from real_ct import per_case_dice

    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.inference.stage import predict
    from pancreas_multitask.model.settings import settings_from_parameters
    from pancreas_multitask.postprocessing import decision_line
    from pancreas_multitask.training.train import train
    from pancreas_multitask.workspace import UNPROCESSED, Workspace

    workspace = Workspace(manifest, paths, params["plans"], 0)
    start = time.perf_counter()
    prepare(workspace, params)
    prepared = time.perf_counter()
    settings = settings_from_parameters(params, len(manifest.subtypes))
    settings = settings if seed is None else replace(settings, seed=seed)
    result = train(workspace, settings, device, force=True)
    trained = time.perf_counter()
    inference = predict(workspace, {**params, "mode": "fast", "postprocessing": True, "input_splits": ["validation"], "overwrite": True}, device)
    folder = inference.outputs["validation"]
    unprocessed = folder / UNPROCESSED  # written only when a postprocessing is applied
    return {"recipe": name, "seed": settings.seed, "description": description, "overlay": overlay, "device": device,
            "seconds_prepare": round(prepared - start, 1), "seconds_training": round(trained - prepared, 1), "seconds_inference": round(time.perf_counter() - trained, 1),
            "selection": {"split": f"fold 0's held-out train cases ({workspace.selection_split()})", "per_case": per_case_dice(result.final_validation)},
            "validation": {"per_case": validation_dice(workspace, folder), "per_case_unprocessed": validation_dice(workspace, unprocessed) if any(unprocessed.glob("*.nii.gz")) else None},
            "postprocessing": decision_line(result.output_folder), "stop_reason": result.stop_reason,
            "git_revision": git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"), "versions": library_versions()}


def _stats(per_case: dict[str, dict[str, float]], resamples: int) -> dict[str, Any]:
    from pancreas_multitask.evaluation.metrics import mean_ci

    return {short: {"mean": float(np.mean([c[key] for c in per_case.values()])),
                    "ci95": [float(v) for v in mean_ci([c[key] for c in per_case.values()], resamples=resamples, seed=0)]} for key, short in REGIONS}


def _over_seeds(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each case's mean over the seeds (the cases every seed has)."""
    cases = sorted(set.intersection(*(set(p) for p in per_seed)))
    return {c: {key: float(np.mean([p[c][key] for p in per_seed])) for key, _ in REGIONS} for c in cases}


def _difference(per_case: dict[str, dict[str, float]], base: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {c: {key: per_case[c][key] - base[c][key] for key, _ in REGIONS} for c in sorted(set(per_case) & set(base))}


def summarise(runs: list[dict[str, Any]], resamples: int = 2000) -> dict[str, Any]:
    """Per recipe and split (selection, validation): each region's mean over cases and seeds with its CI over cases (each
    case's mean over the seeds) and each seed's mean; against ``BASELINE``, the paired difference over the same cases
    and seeds."""
    by_name: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run["recipe"], {})[run.get("seed", SEED)] = run
    base = by_name.get(BASELINE, {})
    out = {}
    for name, seeds in by_name.items():
        entry: dict[str, Any] = {"seeds": sorted(seeds)}
        for split in ("selection", "validation"):
            per_seed = [seeds[k][split]["per_case"] for k in sorted(seeds)]
            mean = _over_seeds(per_seed)
            entry[split] = {"cases": len(mean), **_stats(mean, resamples)}
            for key, short in REGIONS:
                entry[split][short]["per_seed"] = [float(np.mean([c[key] for c in p.values()])) for p in per_seed]
            common = sorted(set(seeds) & set(base))
            if name != BASELINE and common:
                differences = [_difference(seeds[k][split]["per_case"], base[k][split]["per_case"]) for k in common]
                entry[split]["vs_baseline"] = {"seeds": common, **_stats(_over_seeds(differences), resamples)}
                for key, short in REGIONS:
                    entry[split]["vs_baseline"][short]["per_seed"] = [float(np.mean([c[key] for c in d.values()])) for d in differences]
        out[name] = entry
    return out


def markdown(result: dict[str, Any]) -> str:
    def cell(value: dict, sign: str = "") -> str:
        seeds = f"; {', '.join(f'{v:{sign}.3f}' for v in value['per_seed'])}" if len(value.get("per_seed", [])) > 1 else ""
        return f"{value['mean']:{sign}.3f} [{value['ci95'][0]:{sign}.3f}, {value['ci95'][1]:{sign}.3f}]{seeds}"

    runs: dict[str, list[dict[str, Any]]] = {}
    for run in result["runs"]:
        runs.setdefault(run["recipe"], []).append(run)
    lines = [f"`realct` recipes, fold 0 of the profile's 5-fold split over the train cases ({result['device']}). "
             "**Chosen on** the selection cases (fold 0's held-out train cases, the selected checkpoint's full-volume Dice, no postprocessing); "
             "the validation cases chose nothing (`fast`, with the stored postprocessing). Mean over cases and seeds [95 % bootstrap CI over cases], "
             f"then each seed's mean when there are several; Δ: paired against `{BASELINE}` on the same cases and seeds.", "",
             "| recipe | what | seeds | training min | selection: pancreas | selection: lesion | Δ selection (pancreas / lesion) | validation: pancreas | validation: lesion | Δ validation (pancreas / lesion) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in result["summary"].items():
        first = runs[name][0]
        minutes = np.mean([r["seconds_training"] for r in runs[name]]) / 60
        deltas = [" / ".join(cell(entry[s]["vs_baseline"][r], "+") for r in ("pancreas", "lesion"))
                  + ("" if entry[s]["vs_baseline"]["seeds"] == entry["seeds"] else f" (paired over seeds {', '.join(map(str, entry[s]['vs_baseline']['seeds']))})")
                  if "vs_baseline" in entry[s] else "–" for s in ("selection", "validation")]
        lines.append(f"| {name} | {first['description']} | {', '.join(map(str, entry['seeds']))} | {minutes:.1f} | {cell(entry['selection']['pancreas'])} | {cell(entry['selection']['lesion'])} | "
                     f"{deltas[0]} | {cell(entry['validation']['pancreas'])} | {cell(entry['validation']['lesion'])} | {deltas[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[SEED], help="training seeds (default: the profile's own, the trainer settings' default)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/realct_recipes_<device>.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: run this recipe with --seeds' first, add it to --out
    args = parser.parse_args(argv)

    from pancreas_multitask.io import write_benchmark

    out = args.out or REPO / "benchmarks" / "results" / f"realct_recipes_{args.device}.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs = [r for r in previous.get("runs", []) if r["recipe"] in RECIPES and r["overlay"] == RECIPES[r["recipe"]][1]]
    if args.one:
        runs = [r for r in runs if (r["recipe"], r.get("seed", SEED)) != (args.one, args.seeds[0])] + [run_recipe(args.one, args.device, args.seeds[0])]
        result = {"benchmark": "realct_recipes", "device": runs[-1]["device"], "baseline": BASELINE, "chosen_on": "selection", "summary": summarise(runs), "runs": runs}
        write_benchmark(out, result, markdown(result))
        return
    for seed in args.seeds:
        for name in args.recipes:
            if any((r["recipe"], r.get("seed", SEED)) == (name, seed) for r in runs):
                print(f"{name}, seed {seed}: in {out} already", flush=True)
                continue
            subprocess.run([sys.executable, __file__, "--one", name, "--seeds", str(seed), "--device", args.device, "--out", str(out)], check=True)
            runs = json.loads(out.read_text())["runs"]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    main()
