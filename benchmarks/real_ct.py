"""Benchmark: does the subtype head cost segmentation accuracy on real CT?

Trains, in one process, on the same plans, preprocessed data, budget (epochs x iterations) and seed:

* ``nnUNetTrainer``: nnU-Net's own trainer and recipe (SGD, lr 1e-2), segmentation only;
* ``multitask``: ``nnUNetTrainerMultitask`` with the profile's recipe (AdamW, the profile's lr, the head
  and its loss schedule);
* ``multitask_head_off``: the same trainer and recipe with the classification loss weight fixed at 0,
  so the head is carried but never trained: the difference to ``multitask`` is the head's own cost,
  the difference to ``nnUNetTrainer`` the recipe's.

Each is scored with nnU-Net's own full-volume validation (``perform_actual_validation``, no mirroring
for all three) of its **final** weights on the validation split (the 8 real cases for ``realct``), so
no checkpoint is selected on the split that is reported. Prepares the profile's data first if needed.
Writes ``benchmarks/results/real_ct_<device>.json`` and ``.md``.

    python benchmarks/real_ct.py [--profile realct] [--epochs 16] [--iterations 25] [--seed 12345]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = ("nnUNetTrainer", "multitask", "multitask_head_off")
DESCRIPTIONS = {
    "nnUNetTrainer": "nnU-Net's trainer and recipe (SGD, lr 1e-2), no head",
    "multitask": "the project's trainer: AdamW at the profile's lr, subtype head and loss schedule",
    "multitask_head_off": "the project's trainer and recipe, classification loss weight 0 (head never trained)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="realct")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
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


def markdown(result: dict) -> str:
    lines = [
        f"Real CT, {result['cases']} validation cases, full volume, final weights; {result['epochs']} epochs x {result['iterations']} iterations, seed {result['seed']}, {result['device']}",
        "",
        "| trainer | what | s / iteration | DSC whole pancreas [95 % CI] | DSC lesion [95 % CI] | ΔDSC pancreas vs nnUNetTrainer | ΔDSC lesion vs nnUNetTrainer |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        p, l = row["dsc_pancreas"], row["dsc_lesion"]
        lines.append(
            f"| {row['trainer']} | {row['description']} | {row['seconds_per_iteration']:.2f} | {p['mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] "
            f"| {l['mean']:.3f} [{l['ci95'][0]:.3f}, {l['ci95'][1]:.3f}] | {row.get('delta_pancreas', float('nan')):+.3f} | {row.get('delta_lesion', float('nan')):+.3f} |"
        )
    if "head_cost" in result:
        cost = result["head_cost"]
        lines += ["", f"The head's own cost (multitask − multitask_head_off): whole pancreas {cost['pancreas']:+.3f} "
                      f"[{cost['pancreas_ci95'][0]:+.3f}, {cost['pancreas_ci95'][1]:+.3f}], lesion {cost['lesion']:+.3f} "
                      f"[{cost['lesion_ci95'][0]:+.3f}, {cost['lesion_ci95'][1]:+.3f}] (paired bootstrap over cases)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import yaml

    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.runtime import configure_nnunet, detect_device, library_versions

    params = yaml.safe_load((REPO / "notebooks" / "params" / f"{args.profile}.yaml").read_text())
    manifest = load_manifest(REPO / "data_manifest.yaml")
    paths = manifest.paths(args.profile)
    device = detect_device(args.device)
    configure_nnunet(paths, device)
    results_root = paths.work / "benchmark_real_ct"
    os.environ["nnUNet_results"] = str(results_root)  # before nnunetv2 is imported: the profile's own model stays untouched

    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pancreas_multitask.evaluation.metrics import bootstrap_ci, mean_ci
    from pancreas_multitask.experiment_planning.plans import CPU_PLANS, ReducedPlan
    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.io import write_json, write_text
    from pancreas_multitask.training.run import build_trainer, seed_everything
    from pancreas_multitask.training.settings import LossSchedule, settings_from_parameters
    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask

    plans = params["plans"]
    reduced = ReducedPlan.from_dict(params["cpu_plan"]) if plans == CPU_PLANS else None
    prepare(manifest, paths, plans, params.get("split_mode", "given"), reduced=reduced)
    pre = paths.nnunet_preprocessed / manifest.dataset_name
    budget = {"epochs": args.epochs, "iterations_per_epoch": args.iterations, "val_iterations_per_epoch": args.val_iterations,
              "patience": args.epochs + 1, "save_every": args.epochs + 1}
    rows = []
    for name in args.rows:
        seed_everything(args.seed)
        trainer_class = nnUNetTrainer if name == "nnUNetTrainer" else nnUNetTrainerMultitask
        # a fresh fold folder per row (both multitask rows share the trainer's folder name)
        shutil.rmtree(results_root / manifest.dataset_name / f"{trainer_class.__name__}__{plans}__3d_fullres" / "fold_0", ignore_errors=True)
        trainer = build_trainer(pre, plans, 0, device, trainer_class=trainer_class)
        if name == "nnUNetTrainer":
            trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = args.epochs, args.iterations, args.val_iterations
            recipe = {"optimizer": "SGD (nnU-Net)", "initial_lr": trainer.initial_lr}
        else:
            settings = settings_from_parameters({**params, **budget}, len(manifest.subtypes))
            if name == "multitask_head_off":
                settings = type(settings).from_dict({**settings.to_dict(), "schedule": LossSchedule(start=(1.0, 0.0), end=(1.0, 0.0))})
            trainer.configure(settings)
            recipe = {"optimizer": "AdamW (project)", "initial_lr": settings.initial_lr, "head_lr_factor": settings.head_lr_factor, "loss_schedule": settings.to_dict()["schedule"]}
        start = time.perf_counter()
        trainer.run_training()
        seconds = time.perf_counter() - start
        final = Path(trainer.output_folder) / "checkpoint_final.pth"
        network = trainer.multitask_network() if isinstance(trainer, nnUNetTrainerMultitask) else trainer.network
        network.load_state_dict(torch.load(final, map_location=trainer.device, weights_only=False)["network_weights"])  # same footing: final weights
        trainer.inference_allowed_mirroring_axes = None  # no mirroring TTA in this validation, for every row
        trainer.perform_actual_validation(save_probabilities=False)
        log = trainer.logger.my_fantastic_logging
        epoch_seconds = np.array(log["epoch_end_timestamps"]) - np.array(log["epoch_start_timestamps"])
        cases = per_case_dice(Path(trainer.output_folder) / "validation" / "summary.json")
        row = {"trainer": name, "description": DESCRIPTIONS[name], **recipe, "seconds_training": round(seconds, 1),
               "seconds_per_epoch": float(np.median(epoch_seconds)), "seconds_per_iteration": float(np.median(epoch_seconds)) / args.iterations, "per_case": cases}
        for key in ("dsc_pancreas", "dsc_lesion"):
            values = np.array([c[key] for c in cases.values()])
            row[key] = {"mean": float(values.mean()), "median": float(np.median(values)), "ci95": list(mean_ci(values))}
        rows.append(row)
        print(f"{name}: pancreas {row['dsc_pancreas']['mean']:.3f}, lesion {row['dsc_lesion']['mean']:.3f}, {row['seconds_per_iteration']:.2f} s/iteration", flush=True)
        del trainer
    by_name = {r["trainer"]: r for r in rows}
    result = {
        "benchmark": "real_ct", "profile": args.profile, "plans": plans, "plan": params.get("cpu_plan"), "device": device,
        "epochs": args.epochs, "iterations": args.iterations, "val_iterations": args.val_iterations, "seed": args.seed,
        "cases": len(rows[0]["per_case"]), "weights": "checkpoint_final (no selection)", "validation": "nnU-Net perform_actual_validation, no mirroring",
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": library_versions(), "rows": rows,
    }
    if "nnUNetTrainer" in by_name:
        for row in rows:
            row["delta_pancreas"] = row["dsc_pancreas"]["mean"] - by_name["nnUNetTrainer"]["dsc_pancreas"]["mean"]
            row["delta_lesion"] = row["dsc_lesion"]["mean"] - by_name["nnUNetTrainer"]["dsc_lesion"]["mean"]
    if {"multitask", "multitask_head_off"} <= set(by_name):
        on, off = by_name["multitask"]["per_case"], by_name["multitask_head_off"]["per_case"]
        cost = {}
        for key, short in (("dsc_pancreas", "pancreas"), ("dsc_lesion", "lesion")):
            diff = np.array([on[c][key] - off[c][key] for c in sorted(on)])
            cost[short] = float(diff.mean())
            cost[f"{short}_ci95"] = list(bootstrap_ci(lambda idx: diff[idx].mean(axis=1), len(diff)))
        result["head_cost"] = cost
    out = args.out or REPO / "benchmarks" / "results" / f"real_ct_{device}.json"
    write_json(out, result)
    write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    main()
