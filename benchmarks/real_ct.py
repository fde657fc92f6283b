"""Benchmark: does the subtype head cost segmentation accuracy on real CT?

Trains, in one process, on the same plans, preprocessed data, budget (epochs x iterations) and seed:

* ``nnUNetTrainer_adamw``: nnU-Net's own trainer, segmentation only, with the multitask trainer's
  optimiser settings (AdamW, the profile's lr and weight decay, nnU-Net's polynomial decay);
* ``multitask``: ``nnUNetTrainerMultitask`` with the profile's recipe (the same optimiser, plus the
  subtype head, its loss schedule and learning-rate factor); ``multitask`` − ``nnUNetTrainer_adamw`` is
  what the head costs or gains the segmentation (paired bootstrap over cases);
* ``nnUNetTrainer``: nnU-Net's trainer with its own recipe (SGD, lr 1e-2), for reference: it is tuned
  for 250 000 iterations, not a few hundred.

Each is scored with nnU-Net's own full-volume validation (``perform_actual_validation``, no mirroring
for all of them) of its **final** weights on the validation split (the 8 real cases for ``realct``),
so no checkpoint is selected on the split that is reported. Prepares the profile's data first if
needed. Writes ``benchmarks/results/real_ct_<device>.json`` and ``.md``.

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
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = ("nnUNetTrainer_adamw", "multitask", "nnUNetTrainer")
BASELINE = "nnUNetTrainer_adamw"  # the same settings without the head
DESCRIPTIONS = {
    "nnUNetTrainer_adamw": "nnU-Net's trainer, no head, the multitask trainer's optimiser (AdamW, same lr and weight decay)",
    "multitask": "nnUNetTrainerMultitask: the same optimiser plus the subtype head and its loss schedule",
    "nnUNetTrainer": "nnU-Net's trainer and its own recipe (SGD, lr 1e-2), for reference",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="realct")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS[:2]), choices=ROWS, help="default: the two that answer the question; add nnUNetTrainer for nnU-Net's own recipe")
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
        f"| trainer | what | s / iteration | DSC whole pancreas [95 % CI] | DSC lesion [95 % CI] | ΔDSC pancreas vs {BASELINE} | ΔDSC lesion vs {BASELINE} |",
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
        lines += ["", f"What the head costs the segmentation (multitask − {BASELINE}, same settings otherwise): whole pancreas {cost['pancreas']:+.3f} "
                      f"[{cost['pancreas_ci95'][0]:+.3f}, {cost['pancreas_ci95'][1]:+.3f}], lesion {cost['lesion']:+.3f} "
                      f"[{cost['lesion_ci95'][0]:+.3f}, {cost['lesion_ci95'][1]:+.3f}] (paired bootstrap over cases)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configure_nnunet, detect_device, library_versions

    params = load_parameters(REPO / "notebooks" / "params", args.profile)
    manifest = load_manifest(REPO / "data_manifest.yaml")
    results_root = manifest.paths(args.profile).work / "benchmark_real_ct"  # the profile's own model stays untouched
    paths = replace(manifest.paths(args.profile), results=results_root)
    device = detect_device(args.device)
    configure_nnunet(paths, device)

    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pancreas_multitask.evaluation.metrics import bootstrap_ci, mean_ci
    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.model.folders import fold_folder, model_folder
    from pancreas_multitask.workspace import Workspace
    from pancreas_multitask.io import write_benchmark
    from pancreas_multitask.training.train import build_trainer, seed_everything
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    from pancreas_multitask.model.settings import settings_from_parameters
    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask

    plans = params["plans"]
    prepare(Workspace(manifest, paths, plans), {**params, "split_mode": "given"})  # all 32 train cases; the final weights are scored on the 8 validation cases, which choose nothing here
    pre = paths.nnunet_preprocessed / manifest.dataset_name
    budget = {"epochs": args.epochs, "iterations_per_epoch": args.iterations, "val_iterations_per_epoch": args.val_iterations,
              "patience": args.epochs + 1, "save_every": args.epochs + 1}
    class nnUNetTrainerAdamW(nnUNetTrainer):
        """nnU-Net's trainer with the multitask trainer's optimiser: AdamW, nnU-Net's polynomial decay."""

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
            return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    settings = settings_from_parameters({**params, **budget}, len(manifest.subtypes))
    classes = {"nnUNetTrainer_adamw": nnUNetTrainerAdamW, "multitask": nnUNetTrainerMultitask, "nnUNetTrainer": nnUNetTrainer}
    rows = []
    for name in args.rows:
        seed_everything(args.seed)
        trainer_class = classes[name]
        # a fresh fold folder per row
        shutil.rmtree(fold_folder(model_folder(results_root, manifest.dataset_name, plans, trainer_class.__name__), 0), ignore_errors=True)
        trainer = build_trainer(pre, plans, 0, device, trainer_class=trainer_class)
        if name == "multitask":
            trainer.configure(settings)
            recipe = {"optimizer": "AdamW", "initial_lr": settings.initial_lr, "weight_decay": settings.weight_decay, "head_lr_factor": settings.head_lr_factor, "loss_schedule": settings.to_dict()["schedule"]}
        else:
            trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = args.epochs, args.iterations, args.val_iterations
            if name == BASELINE:
                trainer.initial_lr, trainer.weight_decay = settings.initial_lr, settings.weight_decay
            recipe = {"optimizer": "AdamW" if name == BASELINE else "SGD (nnU-Net)", "initial_lr": trainer.initial_lr, "weight_decay": trainer.weight_decay}
        start = time.perf_counter()
        trainer.run_training()
        seconds = time.perf_counter() - start
        final = Path(trainer.output_folder) / "checkpoint_final.pth"
        network = trainer.multitask_network() if isinstance(trainer, nnUNetTrainerMultitask) else trainer.network
        network.load_state_dict(torch.load(final, map_location=trainer.device, weights_only=False)["network_weights"])  # same footing: final weights
        trainer.inference_allowed_mirroring_axes = None  # no mirroring TTA in this validation, for every row
        trainer.perform_actual_validation(save_probabilities=False)
        log = trainer.logger.local_logger.my_fantastic_logging
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
    if BASELINE in by_name:
        for row in rows:
            row["delta_pancreas"] = row["dsc_pancreas"]["mean"] - by_name[BASELINE]["dsc_pancreas"]["mean"]
            row["delta_lesion"] = row["dsc_lesion"]["mean"] - by_name[BASELINE]["dsc_lesion"]["mean"]
    if {"multitask", BASELINE} <= set(by_name):
        on, off = by_name["multitask"]["per_case"], by_name[BASELINE]["per_case"]
        cost = {}
        for key, short in (("dsc_pancreas", "pancreas"), ("dsc_lesion", "lesion")):
            diff = np.array([on[c][key] - off[c][key] for c in sorted(on)])
            cost[short] = float(diff.mean())
            cost[f"{short}_ci95"] = list(bootstrap_ci(lambda idx: diff[idx].mean(axis=1), len(diff)))
        result["head_cost"] = cost
    write_benchmark(args.out or REPO / "benchmarks" / "results" / f"real_ct_{device}.json", result, markdown(result))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    main()
