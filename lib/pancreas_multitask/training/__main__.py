"""Command line of the training stage, with a profile's parameters (what ``run_all.sh --only 02`` does)::

    python -m pancreas_multitask.training --profile demo [--params extra.yaml] [--epochs N] [--c] [--force] [--num_gpus N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.settings import settings_from_parameters
from ..profiles import load_parameters
from ..runtime import configure_nnunet, detect_device, find_repo_root
from ..workspace import Workspace
from .train import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pancreas_multitask.training", description="Train the multitask nnU-Net with a profile's parameters (no trainer name lookup).")
    parser.add_argument("--profile", default="demo", help="reads notebooks/params/<profile>.yaml and the manifest's paths")
    parser.add_argument("--manifest", type=Path, help="default: the repository's data_manifest.yaml")
    parser.add_argument("--params", type=Path, help="extra YAML whose keys override the profile's")
    parser.add_argument("--fold", help="override the profile's fold (an integer or 'all')")
    parser.add_argument("--epochs", type=int, help="override the profile's epochs")
    parser.add_argument("--c", dest="resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--force", action="store_true", help="retrain even if this fold finished with the same settings and data")
    parser.add_argument("--num_gpus", type=int, help="GPUs for nnU-Net's DDP training (default: the profile's, else 1)")
    args = parser.parse_args(argv)
    repo = find_repo_root()
    params = load_parameters(repo / "notebooks" / "params", args.profile, args.params)
    if args.epochs:
        params["epochs"] = args.epochs
    if args.fold is not None:
        params["fold"] = args.fold if args.fold == "all" else int(args.fold)
    workspace = Workspace.create(args.manifest or repo / "data_manifest.yaml", args.profile, params)
    device = detect_device(params.get("device", "auto"))
    configure_nnunet(workspace.paths, device)
    settings = settings_from_parameters(params, len(workspace.manifest.subtypes))
    result = train(workspace, settings, device, args.resume or bool(params.get("resume")), force=args.force or bool(params.get("force")),
                   num_gpus=args.num_gpus or int(params.get("num_gpus") or 1))
    print(f"{result.stop_reason}\nmodel: {result.output_folder}\nper-epoch metrics: {result.metrics_file}")


if __name__ == "__main__":
    main()
