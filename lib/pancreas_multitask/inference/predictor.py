"""nnU-Net's predictor, subclassed: the same segmentation, plus a case-level subtype from every tile.

The network is built with the project's code from the model folder (no trainer name lookup, so it
works beside the CPU torch), and a forward hook collects the class logits and the predicted
foreground of every sliding-window tile, mirrored passes and all folds included. The case's subtype
is their foreground-weighted average (``aggregation.py``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ..io import VolumeError, atomic_path, load_volume, write_json, write_text
from ..runtime import is_headless, progress
from ..training.network import MultitaskNetwork, build_multitask_network
from ..training.run import TRAINER_NAME
from ..training.settings import MultitaskSettings
from .aggregation import aggregate_class_probabilities, tile_foreground

CSV_NAME = "subtype_results.csv"
SIDECAR = ".subtype.json"  # per-case class probabilities and timing; the CSV is rebuilt from them
# sliding-window presets: nnU-Net's defaults, and the two obvious speed knobs (tuned and benchmarked in issue 5)
MODES = {"accurate": {"tile_step_size": 0.5, "use_mirroring": True}, "fast": {"tile_step_size": 0.75, "use_mirroring": False}}


def make_predictor(model_folder: str | Path, mode: str = "accurate", device: str = "cpu", folds: Sequence[int | str] = (0,), checkpoint_name: str = "checkpoint_best.pth") -> "MultitaskPredictor":
    """A ready predictor for ``mode`` (``accurate`` or ``fast``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    predictor = MultitaskPredictor(**MODES[mode], device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_model_folder(model_folder, folds, checkpoint_name)
    return predictor


class MultitaskPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that also returns the subtype probabilities of each case."""

    def initialize_from_model_folder(self, model_folder: str | Path, folds: Sequence[int | str] = (0,), checkpoint_name: str = "checkpoint_best.pth") -> None:
        """Load plans, dataset.json, settings and the folds' weights; build the network with the project's code."""
        model_folder = Path(model_folder)
        dataset_json = json.loads((model_folder / "dataset.json").read_text())
        plans_manager = PlansManager(json.loads((model_folder / "plans.json").read_text()))
        parameters, configuration, mirror_axes = [], None, None
        for fold in folds:
            checkpoint_file = model_folder / f"fold_{fold}" / checkpoint_name
            if not checkpoint_file.is_file():
                raise FileNotFoundError(f"{checkpoint_file}: no such checkpoint (train this fold first)")
            checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
            parameters.append(checkpoint["network_weights"])
            configuration = checkpoint["init_args"]["configuration"]
            mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
        settings = MultitaskSettings.load(model_folder / f"fold_{folds[0]}") or MultitaskSettings()
        configuration_manager = plans_manager.get_configuration(configuration)
        label_manager = plans_manager.get_label_manager(dataset_json)
        network = build_multitask_network(
            plans_manager, configuration_manager, determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            label_manager.num_segmentation_heads, False, settings.head, label_manager.has_regions,
        )
        network.eval()
        network.register_forward_hook(self._collect_tile)
        self.subtype_names = list(dataset_json.get("subtypes", [f"subtype{k}" for k in range(settings.head.num_classes)]))
        self._tiles: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json, TRAINER_NAME, mirror_axes)

    def _collect_tile(self, module: MultitaskNetwork, inputs, output) -> None:
        segmentation = output[0] if isinstance(output, (list, tuple)) else output
        self._tiles[0].append(module.last_class_logits.float().cpu())
        self._tiles[1].append(tile_foreground(segmentation, module.has_regions).cpu())

    def predict_case(self, image_files: Sequence[str]) -> tuple[np.ndarray, dict, np.ndarray]:
        """Segmentation in the input's geometry, its properties, and the subtype probabilities."""
        reader = self.plans_manager.image_reader_writer_class()
        data, properties = reader.read_images(list(image_files))
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(data, None, properties, self.plans_manager, self.configuration_manager, self.dataset_json)
        self._tiles[0].clear()
        self._tiles[1].clear()
        logits = self.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, properties, return_probabilities=False
        )
        probabilities = aggregate_class_probabilities(torch.cat(self._tiles[0]), torch.cat(self._tiles[1])).numpy()
        return segmentation, properties, probabilities


@dataclass
class PredictionReport:
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "file: reason"


def input_cases(inputs: str | Path | Sequence[str | Path], file_ending: str = ".nii.gz") -> list[tuple[str, Path]]:
    """``(case id, image file)`` from a folder of ``*_0000<ending>`` files or from a list of such files."""
    files = sorted(Path(inputs).glob(f"*_0000{file_ending}")) if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    return [(p.name.removesuffix(f"_0000{file_ending}"), p) for p in files]


def predict_cases(
    predictor: MultitaskPredictor,
    cases: Sequence[tuple[str, Path]],
    output_folder: str | Path,
    overwrite: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    file_ending: str = ".nii.gz",
) -> PredictionReport:
    """Write ``<case>.nii.gz`` masks and ``subtype_results.csv``; every file atomically.

    Cases already done are skipped unless ``overwrite``; ``num_parts``/``part_id`` split the cases
    between processes (each writes its share; the CSV is rebuilt from all per-case results). A bad
    input is reported by name and leaves no output; the other cases still run.
    """
    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be within 0..{num_parts - 1}, got {part_id}")
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    report = PredictionReport()
    for case_id, image in progress(list(cases)[part_id::num_parts], "predicting", unit="case"):
        mask, sidecar = out / f"{case_id}{file_ending}", out / f"{case_id}{SIDECAR}"
        if not overwrite and mask.is_file() and sidecar.is_file():
            report.skipped.append(case_id)
            continue
        start = time.perf_counter()
        try:
            volume = load_volume(image)  # names the file if it is unreadable or not 3D
            if not np.isfinite(volume.data).all():
                raise VolumeError(f"{image}: non-finite voxels (NaN or inf)")
            segmentation, properties, probabilities = predictor.predict_case([str(image)])
        except (VolumeError, RuntimeError, ValueError, OSError) as exc:
            reason = str(exc) if str(image) in str(exc) else f"{image}: {exc}"
            report.failed.append(reason)
            print(f"FAILED {reason}", flush=True)
            continue
        with atomic_path(mask) as tmp:
            predictor.plans_manager.image_reader_writer_class().write_seg(segmentation, str(tmp), properties)
        seconds = time.perf_counter() - start
        write_json(sidecar, {"Names": mask.name, "probabilities": [float(p) for p in probabilities], "seconds": seconds})
        report.predicted.append(case_id)
        if is_headless():
            print(f"{case_id}: subtype {int(np.argmax(probabilities))} (p={float(np.max(probabilities)):.2f}) in {seconds:.1f}s", flush=True)
    write_subtype_csv(out, predictor.subtype_names)
    return report


def case_records(output_folder: str | Path) -> list[dict]:
    """The per-case results (``Names``, ``probabilities``, ``seconds``) of an output folder, sorted by name."""
    return [json.loads(p.read_text()) for p in sorted(Path(output_folder).glob(f"*{SIDECAR}"))]


def write_subtype_csv(output_folder: Path, subtype_names: Sequence[str]) -> Path:
    """``subtype_results.csv`` (``Names,Subtype`` as the quiz expects, plus one probability column per class)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Names", "Subtype", *(f"prob_{name}" for name in subtype_names)])
    for record in case_records(output_folder):
        probabilities = record["probabilities"]
        writer.writerow([record["Names"], int(np.argmax(probabilities)), *(f"{p:.6f}" for p in probabilities)])
    target = Path(output_folder) / CSV_NAME
    write_text(target, buffer.getvalue())
    return target


def split_cases(raw: str | Path, split: str, file_ending: str = ".nii.gz") -> list[tuple[str, Path]]:
    """``(case id, image)`` of one raw quiz split: ``split/subtypeK/*_0000`` or, for the test split, ``test/*_0000``."""
    folder = Path(raw) / split
    files = sorted(folder.glob(f"*/*_0000{file_ending}")) + sorted(folder.glob(f"*_0000{file_ending}"))
    return input_cases(files, file_ending)
