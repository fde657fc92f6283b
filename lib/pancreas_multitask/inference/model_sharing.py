"""Trained models as zip files in nnU-Net's ``nnUNetv2_export_model_to_zip`` layout, and back.

The zip holds ``DatasetXXX_Name/<trainer>__<plans>__<configuration>/`` with ``plans.json``,
``dataset.json`` (with the subtype names), ``dataset_fingerprint.json`` and per fold the chosen
checkpoint, ``debug.json``, ``progress.png`` and ``validation/summary.json``: the files and names of
nnU-Net's ``export_pretrained_model``, written here from the model folder itself (nnU-Net's exporter
finds the folder through ``nnUNet_results`` only). The project adds per fold ``multitask_settings.json``
(the head), ``subtype_calibration.json`` (the subtype temperature), ``training_metrics.csv``, ``training_done.json`` (the training summary) and nnU-Net's
``postprocessing.pkl``/``.json`` (determined on the selection split; its cases in ``postprocessing_cases.json``). nnU-Net's
``nnUNetv2_install_pretrained_model_from_zip`` installs it unchanged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from ..io import atomic_path, file_lock, write_json
from ..model.calibration import CALIBRATION_FILE

PROJECT_FILES = ("multitask_settings.json", CALIBRATION_FILE, "training_metrics.csv", "training_done.json", "postprocessing.pkl", "postprocessing.json", "postprocessing_cases.json")
INSTALLED_STAMP = ".installed_from.json"


MODEL_FILES = ("plans.json", "dataset_fingerprint.json", "dataset.json")  # nnU-Net's exporter: per model folder
FOLD_FILES = ("progress.png", "validation/summary.json")  # and per fold, besides the checkpoint
OPTIONAL_FOLD_FILES = ("debug.json", "network_architecture.pdf", *PROJECT_FILES)


def export_model(model_folder: str | Path, zip_file: str | Path, folds: Sequence[int | str] = (0,), checkpoint_name: str = "checkpoint_best.pth", overwrite: bool = False) -> Path:
    """Zip a trained model folder (``<results>/DatasetXXX/<trainer>__<plans>__<configuration>``) in nnU-Net's export layout.

    An existing zip newer than every checkpoint it holds is kept unless ``overwrite``.
    """
    model_folder = Path(model_folder).resolve()
    root = model_folder.parent.parent
    files = [model_folder / name for name in MODEL_FILES]
    for fold in folds:
        fold_dir = model_folder / f"fold_{fold}"
        files += [fold_dir / name for name in (checkpoint_name, *FOLD_FILES)]
        files += [fold_dir / name for name in OPTIONAL_FOLD_FILES if (fold_dir / name).is_file()]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing, so {model_folder} cannot be exported (finish the training of its folds {list(folds)} first)")
    zip_file = Path(zip_file)
    if not overwrite and _up_to_date(zip_file, model_folder, folds, checkpoint_name):
        return zip_file
    with atomic_path(zip_file) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(root).as_posix())
    return zip_file


def _up_to_date(zip_file: Path, model_folder: Path, folds: Sequence[int | str], checkpoint_name: str) -> bool:
    """The zip exists, holds exactly the requested folds' checkpoints and is newer than each of them."""
    if not zip_file.is_file():
        return False
    sources = [model_folder / f"fold_{fold}" / checkpoint_name for fold in folds]
    inner = f"{model_folder.parent.name}/{model_folder.name}"
    with zipfile.ZipFile(zip_file) as archive:
        held = {n for n in archive.namelist() if n.endswith(".pth")}
    return held == {f"{inner}/fold_{fold}/{checkpoint_name}" for fold in folds} and zip_file.stat().st_mtime > max(p.stat().st_mtime for p in sources)


def model_folders_in(names: Sequence[str]) -> list[str]:
    """The model folders (``DatasetXXX/<trainer>__<plans>__<configuration>``) that a zip's file names describe."""
    return sorted({"/".join(n.split("/")[:2]) for n in names if n.endswith("/plans.json") and n.count("/") == 2})


def install_model(zip_file: str | Path, results_root: str | Path) -> Path:
    """Unpack an exported model under ``results_root`` (as nnU-Net's installer does) and return its model folder.

    A zip installed before (same name, size and time stamp) is not unpacked again; an older install
    from a zip is replaced. A folder of the same name that no zip installed (a model trained here) is
    never overwritten: that is an error. Several processes may install the same zip at once.
    """
    zip_file, results_root = Path(zip_file), Path(results_root)
    stamp = {"zip": zip_file.name, "size": zip_file.stat().st_size, "mtime": zip_file.stat().st_mtime}
    try:
        with zipfile.ZipFile(zip_file) as archive:
            names = archive.namelist()
            folders = model_folders_in(names)
            if len(folders) != 1:
                raise ValueError(f"{zip_file}: expected one model folder with a plans.json, found {folders or 'none'}")
            target = results_root / folders[0]
            if _installed_from(target) == stamp:
                return target
            # one installer at a time per model folder: a second one waits, then finds the stamp and
            # returns, instead of replacing the folder the first has just installed and is reading
            with file_lock(target.parent / f".{target.name}.install.lock"):
                if _installed_from(target) == stamp:
                    return target
                if target.exists() and _installed_from(target) is None:
                    raise FileExistsError(f"{target}: a model folder that no zip installed is already there; install {zip_file} under another folder")
                staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=target.parent))
                try:
                    archive.extractall(staging, [n for n in names if n.startswith(folders[0] + "/")])  # zipfile drops absolute and ".." parts
                    write_json(staging / folders[0] / INSTALLED_STAMP, stamp)
                    shutil.rmtree(target, ignore_errors=True)  # an older install of this model
                    (staging / folders[0]).rename(target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{zip_file}: not a readable zip file ({exc})") from exc
    return target


def _installed_from(folder: Path) -> dict | None:
    """The stamp of the zip ``folder`` was installed from, or None. Read without the lock too: another process may be
    replacing that install right now, so a stamp that vanishes while it is read counts as none."""
    try:
        return json.loads((folder / INSTALLED_STAMP).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def resolve_model(model: str | Path, results_root: str | Path) -> Path:
    """A model folder as given, or the folder a model zip installs to under ``results_root``."""
    model = Path(model)
    if model.suffix == ".zip":
        return install_model(model, results_root)
    if not (model / "plans.json").is_file():
        raise FileNotFoundError(f"{model}: not a trained model folder (no plans.json) and not a .zip")
    return model


def main(argv: list[str] | None = None) -> None:
    """``export MODEL_FOLDER OUT.zip [-f 0 1] [-chk NAME]`` or ``install MODEL.zip RESULTS_DIR``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pancreas_multitask.inference.model_sharing", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="zip a trained model folder")
    export.add_argument("model_folder")
    export.add_argument("zip_file")
    export.add_argument("-f", "--folds", nargs="+", default=["0"])
    export.add_argument("-chk", "--checkpoint", default="checkpoint_best.pth")
    install = commands.add_parser("install", help="unpack a model zip under a results folder")
    install.add_argument("zip_file")
    install.add_argument("results_dir")
    args = parser.parse_args(argv)
    if args.command == "export":
        folds = [int(f) if f.isdigit() else f for f in args.folds]
        print(f"wrote {export_model(args.model_folder, args.zip_file, folds, args.checkpoint)}")
    else:
        print(f"installed {install_model(args.zip_file, args.results_dir)}")


if __name__ == "__main__":
    main()
