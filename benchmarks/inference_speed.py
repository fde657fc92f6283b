"""Folder-level inference benchmark: nnU-Net's own ``predict_from_files`` (what ``nnUNetv2_predict -i FOLDER``
runs, with its defaults) against this project's ``accurate``, ``fast`` and ``fastest`` modes.

Every setting predicts the same folder of raw images with the same model, end to end (read, preprocess,
sliding window, resample back, write), after one warm-up case; the predictors are built before the
clock starts. Per setting it records the folder's wall time and the speedup against nnU-Net, per-case
agreement with nnU-Net's masks (Dice per region, worst case), Dice against the ground truth of the
labelled cases, subtype agreement with ``accurate``, peak host memory (worker processes included) and
peak GPU memory, and for the project's modes the share of time in read / preprocess / network /
export / write. nnU-Net runs the same computations as ``accurate``, with preprocessing and export in
its worker processes, so ``accurate``'s shares describe it too. Postprocessing is off for every
setting so that all masks are comparable.

    python benchmarks/inference_speed.py --profile realct            # the real CT (../shared/data/real_ct)
    python benchmarks/inference_speed.py --profile demo --device cuda
    python benchmarks/inference_speed.py --profile realct --splits validation test --quiz-case   # the published CPU run

On the CPU it adds a roofline (``roofline.py``: counted convolution FLOPs, the rate each row reaches, the fp32 peak) and
with ``--quiz-case`` the full ResEncM plan on one quiz-sized case (``quiz_case.py``).

Writes ``benchmarks/results/inference_speed_<device>.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pancreas_multitask import runtime
from pancreas_multitask.io import write_json, write_text
from pancreas_multitask.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
BASELINE = "nnunet_defaults"
STAGES = ("read", "preprocess", "network", "export", "write")


class PeakMemory:
    """Peak memory of a block, in MiB: host RSS of this process and its children (nnU-Net's workers) above
    the RSS at the start, sampled every 0.1 s; and on CUDA the peak allocated by torch."""

    def __init__(self, device: str) -> None:
        import psutil

        self.device, self.process, self.host, self.gpu = device, psutil.Process(), 0.0, None
        self.start = self._rss()

    def _rss(self) -> float:
        import psutil

        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a worker that just exited
                pass
        return total / 2**20

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.host = max(self.host, self._rss() - self.start)
            self._stop.wait(0.1)

    def __exit__(self, *exc: object) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.gpu = torch.cuda.max_memory_allocated() / 2**20


def plain_nnunet_predictor(model_folder: Path, device: str):
    """nnU-Net's own predictor with its defaults and nnU-Net's own network (the head's weights left out)."""
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
    predictor = nnUNetPredictor(device=torch.device(device), allow_tqdm=False, verbose=False, verbose_preprocessing=False)
    predictor.manual_initialization(network, plans, configuration, [weights], dataset_json, "nnUNetTrainer", checkpoint["inference_allowed_mirroring_axes"])
    return predictor


def settings(model_folder: Path, device: str) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Benchmark rows: name -> (what it is, factory). The ablation rows show what each knob of ``fast`` buys."""
    from dataclasses import replace

    from pancreas_multitask.inference.predictor import MODES, make_predictor

    fast = MODES["fast"]

    def ours(mode, engine="torch"):  # torch unless the row is about the engine, so the rows compare like with like
        return lambda: make_predictor(model_folder, mode, device, postprocessing=False, engine=engine)

    rows = {
        BASELINE: ("nnU-Net's predict_from_files, defaults: step 0.5, mirroring TTA (8 passes), worker processes for preprocessing and export (baseline)", lambda: plain_nnunet_predictor(model_folder, device)),
        "accurate": (MODES["accurate"].describe(), ours("accurate")),
        "fast_flips_batched_only": ("ablation: accurate with each tile's 8 passes in one forward", ours(replace(MODES["accurate"], flips_in_batch=True))),
        "fast_scipy_export": ("ablation: fast with nnU-Net's scipy export", ours(replace(fast, device_export=False))),
        "fast": (fast.describe(), ours("fast")),
        "fastest": (MODES["fastest"].describe(), ours("fastest")),
    }
    if device == "cpu":
        rows["fast_openvino"] = ("fast with the OpenVINO engine (the CPU's default; conversion, calibration and compilation in the warm-up)", ours("fast", "openvino"))
    rows["fast_compiled"] = ("fast with torch.compile (compilation in the warm-up)", ours(replace(fast, compile=True)))
    return rows


def predict_folder(name: str, predictor: Any, cases: list[tuple[str, Path]], out: Path) -> float:
    """Wall seconds to predict ``cases`` into ``out``: nnU-Net's folder route for the baseline, ``predict_cases`` for ours."""
    from pancreas_multitask.inference.predictor import predict_cases

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if name == BASELINE:
        predictor.predict_from_files([[str(image)] for _, image in cases], str(out), save_probabilities=False, overwrite=True)
    else:
        report = predict_cases(predictor, cases, out, overwrite=True)
        if report.failed:
            raise RuntimeError(f"{name}: {report.failed}")
    return time.perf_counter() - start


def run(model_folder: Path, cases: list[tuple[str, Path]], truth: dict[str, Path], device: str, work: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Every setting on the whole folder; the JSON-ready result (``rows``: one dict per setting)."""
    from pancreas_multitask.evaluation.metrics import dice, read_label_map
    from pancreas_multitask.inference.predictor import case_records

    rows = {k: v for k, v in settings(model_folder, device).items() if only is None or k in only or k in (BASELINE, "accurate")}
    predictors = {name: factory() for name, (_, factory) in rows.items()}
    timings: dict[str, dict[str, Any]] = {}
    for name, predictor in predictors.items():
        predict_folder(name, predictor, cases[:1], work / "warmup" / name)  # imports, cuDNN autotuning, compilation
        with PeakMemory(device) as memory:
            seconds = predict_folder(name, predictor, cases, work / name)
        timings[name] = {"seconds": seconds, "host_mib": memory.host, "gpu_mib": memory.gpu}
        print(f"{name}: {seconds:.1f} s for {len(cases)} cases", flush=True)

    masks = {name: {case: read_label_map(work / name / f"{case}.nii.gz")[0] for case, _ in cases} for name in rows}
    truths = {case: read_label_map(path)[0] for case, path in truth.items()}
    subtypes = {name: {r["Names"]: int(np.argmax(r["probabilities"])) for r in case_records(work / name)} for name in rows if name != BASELINE}
    base = timings[BASELINE]["seconds"]
    table = []
    for name, (what, _) in rows.items():
        agreement = {region: [dice(np.isin(masks[name][c], labels), np.isin(masks[BASELINE][c], labels)) for c, _ in cases] for region, labels in (("pancreas", (1, 2)), ("lesion", (2,)))}
        scored = {region: [dice(np.isin(masks[name][c], labels), np.isin(truths[c], labels)) for c in truths] for region, labels in (("pancreas", (1, 2)), ("lesion", (2,)))}
        row: dict[str, Any] = {
            "setting": name, "what": what, "rule_compliant": name == BASELINE or predictors[name].mode.rule_compliant, "folder_seconds": timings[name]["seconds"], "seconds_per_case": timings[name]["seconds"] / len(cases),
            "speedup": base / timings[name]["seconds"], "peak_host_mib": timings[name]["host_mib"], "peak_gpu_mib": timings[name]["gpu_mib"],
            "min_dice_vs_nnunet": {r: float(min(v)) for r, v in agreement.items()},
            "mean_dice_vs_nnunet": {r: float(np.mean(v)) for r, v in agreement.items()},
            "dice_vs_truth": {r: float(np.mean(v)) if v else None for r, v in scored.items()},
        }
        if name != BASELINE:
            records = case_records(work / name)
            totals = {stage: sum(r["stages"][stage] for r in records) for stage in STAGES}
            row["time_shares"] = {stage: totals[stage] / sum(totals.values()) for stage in STAGES}
            row["subtype_agrees_with_accurate"] = float(np.mean([subtypes[name][k] == v for k, v in subtypes["accurate"].items()]))
            row["engine"] = predictors[name].engine_record()  # OpenVINO: each compiled shape's hint, streams and seconds
        table.append(row)
    result = {"rows": table, "cases": len(cases), "labelled_cases": len(truth)}
    if device == "cpu" and "fast" in predictors:
        result["roofline"] = roofline_section(predictors, cases, work)
    return result


def roofline_section(predictors: dict[str, Any], cases: list[tuple[str, Path]], work: Path) -> dict[str, Any]:
    """The convolutions' GFLOP per case, the rate each of our rows reaches in its network stage over the folder, one
    forward pass of ``fast``'s batch timed alone on each engine, and the machine's fp32 peaks (``roofline``)."""
    import torch

    import roofline
    from pancreas_multitask.inference.predictor import case_records

    fast = predictors["fast"]
    patch = list(fast.configuration_manager.patch_size)
    channels = len(fast.dataset_json["channel_names"])
    per_sample = roofline.conv_flops_per_sample(fast.network, (channels, *patch))
    tiles = {case: roofline.tiles_per_case(fast.preprocess([str(image)])[0].shape[1:], patch, fast.tile_step_size) for case, image in cases}
    theoretical = roofline.theoretical_peak(runtime.available_cores())
    measured = roofline.measured_peak()
    folder = {}
    for name, predictor in predictors.items():
        if name == BASELINE:
            continue
        network_seconds = sum(r["stages"]["network"] for r in case_records(work / name))
        folder[name] = roofline.rates(per_sample * len(predictor._passes()) * sum(tiles.values()), network_seconds, theoretical["gflops"], measured)
    batch = torch.randn(fast.mode.tile_batch_size * len(fast._passes()), channels, *patch, generator=torch.Generator().manual_seed(0))
    engines: dict[str, Callable[[], Any]] = {"torch": lambda: fast.network.forward_with_class(batch)}
    openvino = predictors.get("fast_openvino")
    if openvino is not None and openvino.openvino is not None and openvino.engine_failure is None:
        engines["openvino"] = lambda: openvino.openvino(batch)
    with torch.inference_mode():
        forward = {engine: roofline.rates(per_sample * batch.shape[0], roofline.best_seconds(run), theoretical["gflops"], measured) for engine, run in engines.items()}
    return {"patch": patch, "gflop_per_tile_pass": per_sample / 1e9, "tiles_per_case": tiles,
            "gflop_per_case_fast": per_sample * len(fast._passes()) * float(np.mean(list(tiles.values()))) / 1e9,
            "theoretical_peak": theoretical, "measured_peak_gflops": measured, "threads": torch.get_num_threads(),
            "fast_batch": list(batch.shape), "forward": forward, "folder_network_stage": folder}


def folder_cases(workspace, splits: list[str]) -> tuple[list[tuple[str, Path]], dict[str, Path]]:
    """The raw images of ``splits`` as the prepare stage recorded them, and the masks of those that have one."""
    cases = [case for split in splits for case in workspace.cases(split)]
    return [(c.case_id, c.image) for c in cases], {c.case_id: c.mask for c in cases if c.mask is not None}


def _dice_pair(values: dict[str, float | None]) -> str:
    return " / ".join("n/a" if values[r] is None else f"{values[r]:.4f}" for r in ("pancreas", "lesion"))


def markdown(result: dict[str, Any]) -> str:
    """The rows as a Markdown table, then the time shares of the project's modes."""
    gpu = result["device"] == "cuda"
    lines = [
        f"{result['cases']} images ({result['labelled_cases']} labelled) of `{result['profile']}`, {result['device_name']}, revision {result['git_revision']}, {result['date']}",
        "",
        "| setting | rule-compliant | folder s | s / case | speedup vs nnU-Net | worst-case Dice vs nnU-Net (pancreas / lesion) | Dice vs truth (pancreas / lesion) | subtype = accurate | peak host MiB" + (" | peak GPU MiB |" if gpu else " |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | ---" + (" | --- |" if gpu else " |"),
    ]
    for row in result["rows"]:
        compliant = "yes" if row["rule_compliant"] else "**no**"
        agrees = "–" if "subtype_agrees_with_accurate" not in row else f"{100 * row['subtype_agrees_with_accurate']:.0f} %"
        lines.append(
            f"| {row['setting']} | {compliant} | {row['folder_seconds']:.1f} | {row['seconds_per_case']:.2f} | {row['speedup']:.2f}× | "
            f"{_dice_pair(row['min_dice_vs_nnunet'])} | {_dice_pair(row['dice_vs_truth'])} | {agrees} | {row['peak_host_mib']:.0f}"
            + (f" | {row['peak_gpu_mib']:.0f} |" if gpu else " |")
        )
    lines += ["", "Share of the work per stage (summed over cases; on CUDA stages overlap, so the wall time is shorter than their sum):", "",
              "| setting | " + " | ".join(STAGES) + " |", "| --- |" + " --- |" * len(STAGES)]
    for row in result["rows"]:
        if "time_shares" in row:
            lines.append(f"| {row['setting']} | " + " | ".join(f"{100 * row['time_shares'][s]:.0f} %" for s in STAGES) + " |")
    if "roofline" in result:
        lines += roofline_markdown(result["roofline"])
    if "quiz_case" in result:
        from quiz_case import quiz_case_markdown

        lines += quiz_case_markdown(result["quiz_case"])
    lines += ["", "Settings:", ""] + [f"- **{row['setting']}**: {row['what']}" for row in result["rows"]]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def roofline_markdown(roof: dict[str, Any]) -> list[str]:
    """The roofline section: one forward of fast's batch per engine, then each row's network stage over the folder."""
    peak = roof["theoretical_peak"]
    theoretical = "unknown" if peak["gflops"] is None else f"{peak['gflops']:.0f} GFLOP/s ({peak['how']})"
    lines = ["", f"Roofline (fp32, {roof['threads']} thread(s)): theoretical peak {theoretical}; measured peak "
             f"{roof['measured_peak_gflops']:.0f} GFLOP/s (torch's 4096² matrix product). Convolutions counted with torch's FLOP counter: "
             f"{roof['gflop_per_tile_pass']:.2f} GFLOP per tile and pass of {'×'.join(map(str, roof['patch']))}, "
             f"{roof['gflop_per_case_fast']:.0f} GFLOP per case in `fast` (mean over the folder's cases).", "",
             "| what | engine | GFLOP | s | GFLOP/s | share of theoretical peak | share of measured peak |", "| --- | --- | --- | --- | --- | --- | --- |"]
    batch = "×".join(map(str, roof["fast_batch"]))
    rows = [(f"one forward of `fast`'s batch {batch}", engine, r) for engine, r in roof["forward"].items()]
    rows += [(f"`{name}`: network stage over the folder", "", r) for name, r in roof["folder_network_stage"].items()]
    for what, engine, r in rows:
        lines.append(f"| {what} | {engine} | {r['gflop']:.0f} | {r['seconds']:.2f} | {r['gflops']:.0f} | {_share(r['share_of_theoretical_peak'])} | {_share(r['share_of_measured_peak'])} |")
    if any(r["exceeds_peak"] for _, _, r in rows):
        lines += ["", "A rate above the theoretical peak is an *effective* rate: the engine computes some convolutions with fewer "
                  "multiplications than the direct count (e.g. Winograd), so the counted FLOPs over its time pass the peak."]
    lines += ["", "The network stage includes the sliding window's own work (Gaussian weighting, adding tiles), so its rate is below one forward's."]
    return lines


def device_name(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()}, {runtime.available_cores()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="realct")
    parser.add_argument("--manifest", default=str(REPO / "data_manifest.yaml"))
    parser.add_argument("--plans", default="nnUNetResEncUNetMPlans_cpu")
    parser.add_argument("--model-folder", default="", help="a trained model folder (default: the profile's)")
    parser.add_argument("--splits", nargs="+", default=["train", "validation", "test"], help="raw quiz splits whose images form the folder")
    parser.add_argument("--cases", type=int, default=0, help="use the first N images (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="settings to run besides the baseline and accurate (default: all)")
    parser.add_argument("--out", default="", help="JSON file (default benchmarks/results/inference_speed_<device>.json)")
    parser.add_argument("--quiz-case", action="store_true", help="CPU: also time one quiz-sized case with the full ResEncM plan (quiz_case.py)")
    parser.add_argument("--quiz-iterations", type=int, default=2, help="training iterations of that model")
    args = parser.parse_args(argv)

    import tempfile

    workspace = Workspace.create(args.manifest, args.profile, {"plans": args.plans})
    runtime.configure_nnunet(workspace.paths, args.device)  # before nnunetv2 is imported
    import torch

    torch.manual_seed(0)
    model = Path(args.model_folder) if args.model_folder else workspace.model
    cases, truth = folder_cases(workspace, args.splits)
    if args.cases:
        cases = cases[: args.cases]
        truth = {c: truth[c] for c, _ in cases if c in truth}
    with tempfile.TemporaryDirectory() as tmp:
        result = run(model, cases, truth, args.device, Path(tmp), args.only)
        if args.quiz_case:  # in its own process: nnU-Net reads its folders at import, and this model has others
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "quiz_case.py"), "--out", f"{tmp}/quiz_case.json",
                            "--iterations", str(args.quiz_iterations)], check=True)
            result["quiz_case"] = json.loads(Path(f"{tmp}/quiz_case.json").read_text())
    result = {
        "benchmark": "inference_speed", "device": args.device, "device_name": device_name(args.device), "profile": args.profile,
        "splits": args.splits, "model": model.name, "torch_threads": torch.get_num_threads(),
        "git_revision": runtime.git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"), **result,
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"inference_speed_{args.device}.json"
    write_json(out, result)
    write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    print(f"wrote {out}")


if __name__ == "__main__":  # nnU-Net's worker processes are spawned: they re-import this file
    main()
