"""Command line of the prepare stage, with a profile's parameters (what ``run_all.sh --only 01`` does)::

    python -m pancreas_multitask.experiment_planning --profile smoke [--params extra.yaml] [--force]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..profiles import load_parameters
from ..runtime import configure_nnunet, detect_device, find_repo_root
from ..workspace import Workspace
from .prepare import prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pancreas_multitask.experiment_planning", description="Convert, plan (ResEncM), preprocess and split a quiz-layout dataset.")
    parser.add_argument("--profile", default="demo", help="reads notebooks/params/<profile>.yaml and the manifest's paths")
    parser.add_argument("--manifest", type=Path, help="default: the repository's data_manifest.yaml")
    parser.add_argument("--params", type=Path, help="extra YAML whose keys override the profile's")
    parser.add_argument("--force", action="store_true", help="redo planning and preprocessing")
    args = parser.parse_args(argv)
    repo = find_repo_root()
    params = load_parameters(repo / "notebooks" / "params", args.profile, args.params)
    params["force"] = params.get("force") or args.force
    workspace = Workspace.create(args.manifest or repo / "data_manifest.yaml", args.profile, params)
    configure_nnunet(workspace.paths, detect_device(params.get("device", "auto")))
    record = prepare(workspace, params)
    print(record.conversion.summary())
    print(("preprocessing up to date: " if record.preprocessing.skipped else "preprocessed: ") + str(record.preprocessing.plans_file))
    print("splits:", record.splits_file)
    print("record:", record.record_file)


if __name__ == "__main__":
    main()
