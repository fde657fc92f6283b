"""Benchmark: a model with nnU-Net's full ResEncM plan (what the ``local`` profile trains on a GPU) predicting one
quiz-sized real case on this CPU: nnU-Net's defaults against ``fast`` on each engine.

The real CT (the ``realct`` profile's raw folder) is planned with nnU-Net's ResEncM planner, unchanged, and
preprocessed under ``--work``; the ``local`` recipe's trainer then trains for ``--iterations`` iterations on the
CPU (a real training costs a GPU; these weights only have to make the masks comparable). The case is the
labelled validation case closest in size (in mm) to the quiz's median crop, 64x119x179 voxels at 2.0x0.73x0.73 mm.

Rows: nnU-Net's ``predict_from_files`` with its defaults (step 0.5, 8 mirroring passes, its worker processes);
``fast`` in torch; ``fast`` in OpenVINO twice, first with an empty cache (conversion, calibration and compilation
included, what a user's first case costs) and then from the cache. Masks are compared with nnU-Net's (Dice per
region). One case per row and no warm-up: each row costs minutes of CPU. Resumable: the preprocessing and the
trained weights under ``--work`` are reused.

``inference_speed.py --quiz-case`` runs this in its own process (nnU-Net reads its folders once, at import).

    python benchmarks/quiz_case.py --out result.json [--iterations 2] [--work work/quiz_case]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "benchmarks"))

QUIZ_MEDIAN_MM = (64 * 2.0, 119 * 0.73, 179 * 0.73)  # z, y, x extent of the quiz's median crop


def closest_to_quiz(images: Sequence[Path]) -> Path:
    """The image whose extent in mm is closest (sum of absolute log ratios over the axes) to the quiz's median crop."""
    import numpy as np
    import SimpleITK as sitk

    def distance(image: Path) -> float:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(image))
        reader.ReadImageInformation()
        extent = np.array(reader.GetSize()[::-1]) * np.array(reader.GetSpacing()[::-1])  # z, y, x
        return float(np.abs(np.log(extent / np.array(QUIZ_MEDIAN_MM))).sum())

    return min(images, key=distance)


def quiz_case_markdown(result: dict[str, Any]) -> list[str]:
    """The section of the inference benchmark's Markdown."""
    case = result["case"]
    lines = ["", f"A GPU-trained model on this CPU: nnU-Net's full ResEncM plan (features {result['features']}, patch "
             f"{'×'.join(map(str, result['patch_size']))} at {'×'.join(f'{s:g}' for s in result['spacing'])} mm), weights from "
             f"{result['iterations']} CPU training iteration(s) of the `local` recipe (timing only), on `{case['id']}` "
             f"({'×'.join(map(str, case['shape']))} voxels at {'×'.join(f'{s:.2f}' for s in case['spacing'])} mm; "
             f"{case['tiles']} tile(s) × {case['passes']} passes, {case['gflop']:.0f} GFLOP of convolutions)"
             + (f"; measured {result['date']} at revision `{result['git_revision'][:12]}`" if "date" in result else "") + ":", "",
             "| setting | s | speedup vs nnU-Net | Dice vs nnU-Net (pancreas / lesion) |", "| --- | --- | --- | --- |"]
    base = result["rows"][0]["seconds"]
    for row in result["rows"]:
        dice = row.get("dice_vs_nnunet")
        agreement = "–" if dice is None else f"{dice['pancreas']:.4f} / {dice['lesion']:.4f}"
        lines.append(f"| {row['setting']} | {row['seconds']:.1f} | {base / row['seconds']:.2f}× | {agreement} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "quiz_case")
    parser.add_argument("--iterations", type=int, default=2, help="training iterations of the local recipe")
    args = parser.parse_args(argv)

    from pancreas_multitask.experiment_planning.plans import RESENC_M
    from pancreas_multitask.experiment_planning.prepare import prepare
    from pancreas_multitask.io import write_json
    from pancreas_multitask.manifest import ProfilePaths, load_manifest
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configure_nnunet, git_revision
    from pancreas_multitask.workspace import Workspace

    manifest = load_manifest(REPO / "data_manifest.yaml")
    paths = ProfilePaths(raw=manifest.paths("realct").raw, work=args.work.resolve(), test_answers=None)
    configure_nnunet(paths, "cpu")  # before nnunetv2 is imported
    import numpy as np
    import torch

    from pancreas_multitask.evaluation.metrics import dice, read_label_map
    from pancreas_multitask.inference.engines import cache_root
    from pancreas_multitask.inference.predictor import make_predictor
    from pancreas_multitask.model.settings import settings_from_parameters
    from pancreas_multitask.training.train import train

    import inference_speed
    import roofline

    workspace = Workspace(manifest, paths, RESENC_M)
    realct = load_parameters(REPO / "notebooks" / "params", "realct")
    prepare(workspace, {**realct, "cpu_plan": None, "split_mode": "given"})
    local = settings_from_parameters(load_parameters(REPO / "notebooks" / "params", "local"), len(manifest.subtypes))
    settings = replace(local, num_epochs=1, iterations_per_epoch=args.iterations, val_iterations_per_epoch=1, deployed_check_cases=0,
                       calibrate=False, final_validation_mirroring=False, save_every=1)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = train(workspace, settings, device="cpu", final_validation=False).output_folder.parent
    training_seconds = time.perf_counter() - start

    case = closest_to_quiz([c.image for c in workspace.cases("validation")])
    case_id = case.name.removesuffix(f"_0000{manifest.file_ending}")
    out = args.work / "predictions"
    shutil.rmtree(out, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    nnunet = inference_speed.plain_nnunet_predictor(model, "cpu")
    rows.append({"setting": inference_speed.BASELINE, "seconds": inference_speed.predict_folder(inference_speed.BASELINE, nnunet, [(case_id, case)], out / "nnunet")})
    shutil.rmtree(cache_root(model), ignore_errors=True)  # the first OpenVINO row starts cold
    predictors = {"fast (torch)": make_predictor(model, "fast", postprocessing=False, engine="torch"),
                  "fast (OpenVINO, first case: convert, calibrate, compile)": make_predictor(model, "fast", postprocessing=False, engine="openvino")}
    predictors["fast (OpenVINO, from the cache)"] = make_predictor(model, "fast", postprocessing=False, engine="openvino")
    reference = read_label_map(out / "nnunet" / f"{case_id}.nii.gz")[0]
    for index, (name, predictor) in enumerate(predictors.items()):
        folder = out / f"row{index}"
        seconds = inference_speed.predict_folder(name, predictor, [(case_id, case)], folder)
        mask = read_label_map(folder / f"{case_id}.nii.gz")[0]
        rows.append({"setting": name, "seconds": seconds, "engine": predictor.engine_record(),
                     "dice_vs_nnunet": {r: float(dice(np.isin(mask, labels), np.isin(reference, labels))) for r, labels in (("pancreas", (1, 2)), ("lesion", (2,)))}})
        print(f"{name}: {seconds:.1f} s", flush=True)

    fast = predictors["fast (torch)"]
    patch = list(fast.configuration_manager.patch_size)
    data = fast.preprocess([str(case)])[0]
    per_sample = roofline.conv_flops_per_sample(fast.network, (data.shape[0], *patch))
    tiles = roofline.tiles_per_case(data.shape[1:], patch, fast.tile_step_size)
    passes = len(fast._passes())
    plans = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    import SimpleITK as sitk

    image = sitk.ReadImage(str(case))
    write_json(args.out, {
        "git_revision": git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"), "plans": RESENC_M, "patch_size": patch, "spacing": plans["spacing"], "features": plans["architecture"]["arch_kwargs"]["features_per_stage"],
        "iterations": args.iterations, "training_seconds": training_seconds,
        "case": {"id": case_id, "shape": list(image.GetSize()[::-1]), "spacing": list(image.GetSpacing()[::-1]), "preprocessed_shape": list(data.shape[1:]),
                 "tiles": tiles, "passes": passes, "gflop": per_sample * tiles * passes / 1e9},
        "rows": rows,
    })


if __name__ == "__main__":  # nnU-Net's preprocessing and data loading start worker processes
    main()
