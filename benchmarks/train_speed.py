"""Benchmark: seconds per training iteration, nnUNetTrainerMultitask vs plain nnUNetTrainer.

Both trainers are built from their classes on the same plans and preprocessed data (run 01_prepare
first) and timed in one process, alternating blocks of iterations so that machine noise hits both.
Also reports the wall time of the latest training run of the profile (from its per-epoch file).
Writes ``benchmarks/results/train_speed[_<device>].json`` and prints a Markdown table.

    python benchmarks/train_speed.py --profile demo --plans nnUNetResEncUNetMPlans_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--plans", default="nnUNetResEncUNetMPlans_cpu")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per trainer")
    parser.add_argument("--patch-size", type=int, nargs=3, help="override the plan's patch size (e.g. 64 128 192)")
    parser.add_argument("--batch-size", type=int, help="override the plan's batch size")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/train_speed_<device>.json)")
    args = parser.parse_args()

    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.runtime import configure_nnunet, detect_device, library_versions

    manifest = load_manifest(REPO / "data_manifest.yaml")
    paths = manifest.paths(args.profile)
    device = detect_device(args.device)
    configure_nnunet(paths, device)
    os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="train_speed_")  # keep the real results folder clean
    os.environ["nnUNet_compile"] = "f"  # the multitask trainer does not compile by default; compare like with like

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pancreas_multitask.training.run import METRICS_FILE, build_trainer
    from pancreas_multitask.training.settings import MultitaskSettings
    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask

    pre = paths.nnunet_preprocessed / manifest.dataset_name
    trainers = {}
    for name, cls in (("nnUNetTrainer", nnUNetTrainer), ("nnUNetTrainerMultitask", nnUNetTrainerMultitask)):
        trainer = build_trainer(pre, args.plans, 0, device, trainer_class=cls)
        if args.patch_size:
            trainer.configuration_manager.configuration["patch_size"] = list(args.patch_size)
        if args.batch_size:
            trainer.configuration_manager.configuration["batch_size"] = args.batch_size
        if isinstance(trainer, nnUNetTrainerMultitask):
            trainer.configure(MultitaskSettings(num_epochs=10))
        trainer.on_train_start()
        trainer.on_train_epoch_start()
        for _ in range(3):  # warm-up
            trainer.train_step(next(trainer.dataloader_train))
        trainers[name] = trainer

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.blocks):
        for name, trainer in trainers.items():
            batches = [next(trainer.dataloader_train) for _ in range(args.iterations)]  # data loading is not timed
            sync()
            start = time.perf_counter()
            for batch in batches:
                trainer.train_step(batch)
            sync()
            seconds[name].append((time.perf_counter() - start) / args.iterations)
    for trainer in trainers.values():
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            loader._finish()

    config = trainers["nnUNetTrainerMultitask"].configuration_manager
    per_iteration = {name: statistics.median(v) for name, v in seconds.items()}
    result = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "plans": args.plans,
        "patch_size": list(config.patch_size),
        "batch_size": config.batch_size,
        "features_per_stage": list(config.network_arch_init_kwargs["features_per_stage"]),
        "seconds_per_iteration": per_iteration,
        "blocks": seconds,
        "multitask_overhead": per_iteration["nnUNetTrainerMultitask"] / per_iteration["nnUNetTrainer"] - 1.0,
        "versions": library_versions(),
    }
    metrics = next(iter(sorted(paths.nnunet_results.glob(f"*/nnUNetTrainerMultitask__{args.plans}__3d_fullres/fold_0/{METRICS_FILE}"))), None)
    if metrics is not None:
        import pandas as pd

        frame = pd.read_csv(metrics)
        result["latest_training_run"] = {"metrics": str(metrics.relative_to(REPO)) if metrics.is_relative_to(REPO) else str(metrics), "epochs": len(frame), "training_seconds": float(frame["epoch_seconds"].sum())}
    out = args.out or REPO / "benchmarks" / "results" / f"train_speed_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| trainer | s / iteration ({result['device']}, patch {result['patch_size']}, batch {result['batch_size']}) |")
    print("| --- | --- |")
    for name, value in per_iteration.items():
        print(f"| {name} | {value:.3f} |")
    print(f"\nmultitask overhead: {100 * result['multitask_overhead']:+.1f} % (goal <= 5 %)")
    if "latest_training_run" in result:
        run = result["latest_training_run"]
        print(f"latest {args.profile} training: {run['epochs']} epochs in {run['training_seconds'] / 60:.1f} min")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
