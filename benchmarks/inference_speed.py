"""Inference speed and accuracy: plain nnUNetPredictor (nnU-Net's defaults) against the project's modes.

Everything runs in one process on the same model and cases, after a warm-up case per setting, and the
settings take turns case by case so that a busy machine slows them alike. Per setting it records the
median seconds per case (read, preprocess, sliding window, export, write), the speedup against the
baseline, peak memory, and the Dice / macro-F1 against the ground truth with their difference to the
``accurate`` mode. The ablation rows show which knob buys what. ``--sizes`` adds single generated
cases of quiz size (64x119x179 at 2.0x0.73x0.73 mm) and larger.

    python benchmarks/inference_speed.py --profile demo [--device cuda] [--plans nnUNetResEncUNetMPlans]

Writes ``benchmarks/results/inference_speed_<device>.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pancreas_multitask import runtime
from pancreas_multitask.io import write_json, write_text
from pancreas_multitask.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
SIZES = {"quiz": ((64, 119, 179), (2.0, 0.73, 0.73)), "large": ((244, 272, 459), (2.0, 0.73, 0.73))}


class PeakMemory:
    """Memory a block needs, in MiB: on CPU the peak process RSS above the RSS at its start (all
    predictors are loaded in this process, so the total would mix them); on CUDA the peak allocated."""

    def __init__(self, device: str) -> None:
        import psutil

        self.device, self.process, self.peak = device, psutil.Process(), 0.0
        self.start = self.process.memory_info().rss / 2**20

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss / 2**20 - self.start)
            self._stop.wait(0.005)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def plain_nnunet_predictor(model_folder: Path, device: str):
    """nnU-Net's own predictor with its defaults and nnU-Net's own network (the head's weights left out)."""
    import json

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    plans = PlansManager(json.loads((model_folder / "plans.json").read_text()))
    checkpoint = torch.load(model_folder / "fold_0" / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    configuration = plans.get_configuration(checkpoint["init_args"]["configuration"])
    labels = plans.get_label_manager(dataset_json)
    network = nnUNetTrainer.build_network_architecture(
        plans, configuration, determine_num_input_channels(plans, configuration, dataset_json), labels.num_segmentation_heads, False
    )
    weights = {k: v for k, v in checkpoint["network_weights"].items() if not k.startswith("head.")}
    predictor = nnUNetPredictor(device=torch.device(device), allow_tqdm=False)
    predictor.manual_initialization(network, plans, configuration, [weights], dataset_json, "nnUNetTrainer", checkpoint["inference_allowed_mirroring_axes"])
    return predictor


def settings(model_folder: Path, device: str) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Benchmark rows: name -> (what it changes, factory). ``nnunet_defaults`` is the baseline."""
    from pancreas_multitask.inference.predictor import MODES, InferenceMode, make_predictor

    fast = MODES["fast"]
    return {
        "nnunet_defaults": ("plain nnUNetPredictor: step 0.5, 7 mirror flips + original, 1 tile per forward (baseline)", lambda: plain_nnunet_predictor(model_folder, device)),
        "accurate": ("this project's accurate mode: nnU-Net's defaults plus the subtype from every tile", lambda: make_predictor(model_folder, "accurate", device)),
        "accurate_batched": (f"accurate with {fast.tile_batch_size} tiles per forward", lambda: make_predictor(model_folder, InferenceMode(0.5, True, fast.tile_batch_size), device)),
        "no_mirroring": ("accurate without mirroring TTA (nnU-Net issue 258)", lambda: make_predictor(model_folder, InferenceMode(0.5, False), device)),
        "no_mirroring_step075": ("no mirroring, step 0.75 (the seed's knobs)", lambda: make_predictor(model_folder, InferenceMode(0.75, False), device)),
        "no_mirroring_batched": (f"no mirroring, {fast.tile_batch_size} tiles per forward", lambda: make_predictor(model_folder, InferenceMode(0.5, False, fast.tile_batch_size), device)),
        "fast": (f"fast mode: {fast.tile_batch_size} tiles per forward, original + one flip of all axes", lambda: make_predictor(model_folder, "fast", device)),
    }


def predict_one(name: str, predictor: Any, case_id: str, image: Path, out: Path) -> float:
    """Seconds for one case, end to end, written to ``out``: nnU-Net's own file route for the baseline."""
    from pancreas_multitask.inference.predictor import predict_cases

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if name == "nnunet_defaults":
        predictor.predict_from_files_sequential([[str(image)]], [str(out / case_id)], save_probabilities=False, overwrite=True)
    else:
        report = predict_cases(predictor, [(case_id, image)], out, overwrite=True)
        if report.failed:
            raise RuntimeError(report.failed)
    return time.perf_counter() - start


def accuracy(out: Path, truth: dict[str, tuple[Path, int]], with_subtype: bool) -> dict[str, Any]:
    """Mean Dice against the ground truth, per-case masks for the agreement, and macro-F1 when there is a subtype."""
    from pancreas_multitask.evaluation.metrics import classification_metrics, read_label_map, region_dices
    from pancreas_multitask.inference.predictor import case_records

    masks = {case: read_label_map(out / f"{case}.nii.gz")[0] for case in truth}
    dices = [region_dices(masks[case], read_label_map(gt)[0]) for case, (gt, _) in truth.items()]
    result: dict[str, Any] = {key: float(np.mean([d[key] for d in dices])) for key in ("dsc_pancreas", "dsc_lesion")}
    if with_subtype:
        predicted = {r["Names"].removesuffix(".nii.gz"): int(np.argmax(r["probabilities"])) for r in case_records(out)}
        result["macro_f1"] = classification_metrics([k for _, k in truth.values()], [predicted[c] for c in truth], 3)["macro_f1"]
    return {"summary": result, "masks": masks}


def run_cases(rows: dict[str, tuple[str, Callable[[], Any]]], cases: list[tuple[str, Path]], device: str, work: Path) -> dict[str, dict[str, Any]]:
    """Warm each setting up on the first case, then time every case with the settings taking turns."""
    predictors = {name: factory() for name, (_, factory) in rows.items()}
    for name, predictor in predictors.items():
        predict_one(name, predictor, *cases[0], work / "warmup" / name)
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    peaks: dict[str, float] = {name: 0.0 for name in rows}
    for case_id, image in runtime.progress(cases, "cases"):
        for name, predictor in predictors.items():
            with PeakMemory(device) as memory:
                seconds[name].append(predict_one(name, predictor, case_id, image, work / name))
            peaks[name] = max(peaks[name], memory.peak)
        print(case_id, " ".join(f"{n} {s[-1]:.2f}s" for n, s in seconds.items()), flush=True)
    return {name: {"seconds": seconds[name], "peak_memory_mib": peaks[name]} for name in rows}


def size_cases(work: Path, sizes: list[str]) -> list[tuple[str, Path]]:
    """One generated phantom case per requested size, in the quiz file format."""
    import nibabel as nib

    from pancreas_multitask.dataset.phantom import PhantomConfig, generate_case, to_nifti

    cases = []
    for size in sizes:
        shape, spacing = SIZES[size]
        case = generate_case(f"size_{size}", "test", 0, PhantomConfig(shape=shape, spacing=spacing, seed=1), np.random.default_rng(1))
        image_file = work / "sizes" / f"size_{size}_0000.nii.gz"
        image_file.parent.mkdir(parents=True, exist_ok=True)
        nib.save(to_nifti(case)[0], image_file)
        cases.append((size, image_file))
    return cases


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def markdown(result: dict[str, Any]) -> str:
    """The rows as a Markdown table, then one line per generated size."""
    lines = [
        "| setting | what it changes | median s/case | speedup vs nnU-Net defaults | peak memory (MiB)¹ | DSC pancreas | DSC lesion | macro-F1 | ΔDSC pancreas | ΔDSC lesion | Δmacro-F1 | pancreas mask Dice vs accurate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        f1 = "n/a" if row.get("macro_f1") is None else f"{row['macro_f1']:.3f}"
        lines.append(
            f"| {row['setting']} | {row['what']} | {row['median_seconds']:.2f} | {row['speedup']:.1f}× | {row['peak_memory_mib']:.0f} | "
            f"{row['dsc_pancreas']:.3f} | {row['dsc_lesion']:.3f} | {f1} | {_signed(row['delta_dsc_pancreas'])} | "
            f"{_signed(row['delta_dsc_lesion'])} | {_signed(row['delta_macro_f1'])} | {row['agreement_dsc_pancreas']:.4f} |"
        )
    lines.append("\n¹ " + ("peak RSS above the RSS before the case (CPU)" if result["device"] == "cpu" else "peak CUDA memory allocated, weights included"))
    for size in result["sizes"]:
        timings = ", ".join(f"{name} {v['seconds']:.1f} s, peak {v['peak_memory_mib']:.0f} MiB" for name, v in size["settings"].items())
        lines.append(f"\n{size['size']} case, {'×'.join(map(str, size['shape']))} voxels at {'×'.join(map(str, size['spacing']))} mm: {timings}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--manifest", default=str(REPO / "data_manifest.yaml"))
    parser.add_argument("--plans", default="nnUNetResEncUNetMPlans_cpu")
    parser.add_argument("--model-folder", default="", help="a trained model folder (default: the profile's)")
    parser.add_argument("--split", default="validation", help="raw quiz split with ground truth")
    parser.add_argument("--cases", type=int, default=0, help="use the first N cases (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="settings to run (default: all)")
    parser.add_argument("--sizes", nargs="*", default=[], choices=sorted(SIZES), help="also time single generated cases of these sizes")
    parser.add_argument("--out", default="", help="JSON file (default benchmarks/results/inference_speed_<device>.json)")
    args = parser.parse_args(argv)

    manifest = load_manifest(args.manifest)
    paths = manifest.paths(args.profile)
    runtime.configure_nnunet(paths, args.device)  # before nnunetv2 is imported
    import torch

    from pancreas_multitask.inference.predictor import split_cases
    from pancreas_multitask.training.run import model_folder as trained_model_folder

    torch.manual_seed(0)
    model = Path(args.model_folder) if args.model_folder else trained_model_folder(manifest, args.plans)
    cases = split_cases(paths.raw, args.split, manifest.file_ending)
    cases = cases[: args.cases] if args.cases else cases
    truth = {cid: (img.with_name(f"{cid}{manifest.file_ending}"), int(img.parent.name.removeprefix("subtype"))) for cid, img in cases}
    rows = settings(model, args.device)
    rows = {k: v for k, v in rows.items() if args.only is None or k in args.only or k in ("nnunet_defaults", "accurate")}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timings = run_cases(rows, cases, args.device, work)
        scores = {name: accuracy(work / name, truth, name != "nnunet_defaults") for name in rows}
        reference, base = scores["accurate"]["summary"], statistics.median(timings["nnunet_defaults"]["seconds"])
        table = []
        for name, (what, _) in rows.items():
            summary, median = scores[name]["summary"], statistics.median(timings[name]["seconds"])
            agreement = np.mean([region_agreement(scores[name]["masks"][c], scores["accurate"]["masks"][c]) for c in truth])
            table.append({
                "setting": name, "what": what, "median_seconds": median, "speedup": base / median,
                "peak_memory_mib": timings[name]["peak_memory_mib"], **summary,
                "delta_dsc_pancreas": summary["dsc_pancreas"] - reference["dsc_pancreas"],
                "delta_dsc_lesion": summary["dsc_lesion"] - reference["dsc_lesion"],
                "delta_macro_f1": summary["macro_f1"] - reference["macro_f1"] if "macro_f1" in summary else None,
                "agreement_dsc_pancreas": float(agreement), "seconds": timings[name]["seconds"],
            })
        sizes = []
        if args.sizes:
            size_rows = {k: v for k, v in rows.items() if k in ("nnunet_defaults", "fast")}
            for size, image in size_cases(work, args.sizes):
                shape, spacing = SIZES[size]
                chosen = size_rows if size == "quiz" else {"fast": size_rows["fast"]}  # the baseline takes too long on the large case
                result = run_cases(chosen, [(size, image), (size, image)], args.device, work / size)  # warm-up, then the timed run
                sizes.append({"size": size, "shape": list(shape), "spacing": list(spacing), "settings": {k: {"seconds": v["seconds"][-1], "peak_memory_mib": v["peak_memory_mib"]} for k, v in result.items()}})

    result = {
        "benchmark": "inference_speed", "device": args.device, "device_name": device_name(args.device), "profile": args.profile,
        "model": str(model.relative_to(paths.work)) if model.is_relative_to(paths.work) else model.name,
        "split": args.split, "cases": len(cases), "torch_threads": torch.get_num_threads(),
        "git_revision": runtime.git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": table, "sizes": sizes,
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"inference_speed_{args.device}.json"
    write_json(out, result)
    write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    print(f"wrote {out}")


def region_agreement(mask: np.ndarray, reference: np.ndarray) -> float:
    from pancreas_multitask.evaluation.metrics import dice

    return dice(mask > 0, reference > 0)


def device_name(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()}, {runtime.available_cores()} cores"


if __name__ == "__main__":
    main()
