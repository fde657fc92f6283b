"""The GPU check: what a user's GPU run costs and gives, on the real CT, in one prepared call.

(a) nnU-Net's ResEncM planning of the real CT: the plan's patch, batch and spacing;
(b) seconds per training iteration and per epoch, nnUNetTrainerMultitask against plain nnUNetTrainer,
    on the full ResEncM plan with AMP (nnU-Net's default on CUDA), and the peak GPU memory;
(c) a short training of the multitask trainer on the real training cases (``--train-seconds``, about
    3 minutes), then nnU-Net's full-volume Dice on the real validation cases;
(d) the folder benchmark (``inference_speed.py``) on the real images with that model.

Each part writes its JSON under ``--out`` as soon as it is done, so a run cut short keeps what it
measured. ``--dry-run`` runs every part on CPU with tiny settings (a few real cases, the reduced plan
for b-d) so that the GPU call has no surprises (tests/test_gpu_check.py). Run through
``benchmarks/gpu_check.sh``, which installs the carried wheels first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _link_subset(real_ct: Path, target: Path, per_split: dict[str, int], manifest) -> Path:
    """A quiz-layout folder of symbolic links to the first N cases of each split (the dry run's data)."""
    from pancreas_multitask.dataset.scan import layout_files

    files = sorted(layout_files(real_ct, manifest))
    for split, count in per_split.items():
        for _, _, _, image, mask in [f for f in files if f[1] == split][:count]:
            for source in (image, mask):
                if source is not None:
                    link = target / source.relative_to(real_ct)
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(source.resolve())
    return target


def _write(out: Path, name: str, result: dict[str, Any]) -> None:
    from pancreas_multitask.io import write_json

    write_json(out / f"{name}.json", result)
    print(f"== {name}: written", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-ct", type=Path, required=True, help="the real CT in the quiz layout (../shared/data/real_ct, or its copy on the device)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one under the system temp)")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--train-seconds", type=float, default=180.0, help="budget of part (c)'s training")
    parser.add_argument("--dry-run", action="store_true", help="CPU, a few cases, the reduced plan for b-d")
    args = parser.parse_args(argv)

    import tempfile

    from pancreas_multitask.experiment_planning.plans import CPU_PLANS, RESENC_M
    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.workspace import Workspace
    from pancreas_multitask.manifest import ProfilePaths, load_manifest
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configure_nnunet, configured_nnunet, git_revision, library_versions, set_nnunet_variables
    from pancreas_multitask.model.settings import settings_from_parameters

    started = time.perf_counter()
    manifest = load_manifest(REPO / "data_manifest.yaml")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    raw = args.real_ct
    if args.dry_run:
        raw = _link_subset(args.real_ct, work / "raw", {"train": 3, "validation": 1, "test": 1}, manifest)
    paths = ProfilePaths(raw=raw, work=work / "work", test_answers=None)
    configure_nnunet(paths, args.device)
    if args.device == "cpu":
        set_nnunet_variables({"nnUNet_n_proc_DA": "1"})
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    common = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "dry_run": args.dry_run,
              "git_revision": git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"), "versions": library_versions()}

    # (a) ResEncM planning and preprocessing of the real CT, as the local and colab profiles run it
    reduced = {"patch_size": [16, 32, 32], "max_features": 32, "spacing": [4.0, 3.0, 3.0]} if args.dry_run else None
    plans = CPU_PLANS if args.dry_run else RESENC_M
    start = time.perf_counter()
    prepare(Workspace(manifest, paths, plans), {"cpu_plan": reduced, "num_processes": min(8, os.cpu_count() or 1)})
    pre = paths.nnunet_preprocessed / manifest.dataset_name
    import json

    resenc = json.loads((pre / f"{RESENC_M}.json").read_text())["configurations"]["3d_fullres"]
    used = json.loads((pre / f"{plans}.json").read_text())["configurations"]["3d_fullres"]
    _write(args.out, "a_planning", {**common, "cases": len(list((paths.nnunet_raw / manifest.dataset_name / "imagesTr").glob("*"))),
                                    "resenc_m": {k: resenc[k] for k in ("patch_size", "batch_size", "spacing", "median_image_size_in_voxels")},
                                    "plans_used": plans, "patch_size_used": used["patch_size"], "seconds": time.perf_counter() - start})

    # (b) training cost with the GPU profile's settings (the dry run: the demo's, on the reduced plan)
    import train_speed

    params = load_parameters(REPO / "notebooks" / "params", "demo" if args.dry_run else "local")
    settings = settings_from_parameters(params, len(manifest.subtypes))
    speed_settings = replace(settings, num_epochs=2 if args.dry_run else 3, iterations_per_epoch=3 if args.dry_run else 50,
                             val_iterations_per_epoch=2 if args.dry_run else 10, case_val_every=1, patience=100, save_every=1000)
    with configured_nnunet(replace(paths, results=work / "train_speed_results"), args.device):  # the timed trainers' checkpoints stay out of the model folder
        speed = train_speed.measure(pre, plans, args.device, speed_settings, iterations=2 if args.dry_run else 10, blocks=2 if args.dry_run else 3,
                                    profile_epochs=settings.num_epochs)
    _write(args.out, "b_train_speed", {**common, **speed})

    # (c) a short multitask training on the real training cases, then nnU-Net's full-volume validation
    from pancreas_multitask.training.train import train

    iteration = speed["seconds_per_iteration"]["nnUNetTrainerMultitask"]
    all_in = speed["seconds_per_epoch"]["nnUNetTrainerMultitask"] / speed_settings.iterations_per_epoch  # per iteration, validation included
    iterations = 50 if not args.dry_run else 3
    epochs = 1 if args.dry_run else max(2, int(args.train_seconds / (all_in * iterations)))
    train_settings = replace(settings, num_epochs=epochs, iterations_per_epoch=iterations, val_iterations_per_epoch=10 if not args.dry_run else 1,
                             case_val_every=max(1, epochs // 4), patience=epochs + 1, save_every=epochs,
                             initial_lr=1e-3 if not args.dry_run else settings.initial_lr)  # a few hundred iterations, not 125 000
    start = time.perf_counter()
    result = train(Workspace(manifest, paths, plans), train_settings, device=args.device)
    _write(args.out, "c_training", {**common, "epochs": epochs, "iterations_per_epoch": iterations, "seconds_per_iteration": iteration,
                                    "settings": train_settings.to_dict(), "seconds": time.perf_counter() - start,
                                    "validation_cases": len(json.loads(result.final_validation.read_text())["metric_per_case"]),
                                    "full_volume_dice": result.final_dice(), "stop_reason": result.stop_reason})

    # (d) the folder benchmark on the real images with that model
    import inference_speed

    cases, truth = inference_speed.folder_cases(Workspace(manifest, paths, plans), ["validation", "test"])
    only = ["fast", "fastest"] + (["fast_compiled"] if args.device == "cuda" else [])
    folder = inference_speed.run(result.output_folder.parent, cases, truth, args.device, work / "inference", only)
    _write(args.out, "d_inference_speed", {**common, "benchmark": "inference_speed", "profile": "real_ct", "device_name": common["device"],
                                           "splits": ["validation", "test"], **folder})
    (args.out / "d_inference_speed.md").write_text(inference_speed.markdown({**common, "device": args.device, "device_name": common["device"], "profile": "real_ct", **folder}))
    print(f"gpu check done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # nnU-Net's preprocessing and data loading start worker processes
    main()
