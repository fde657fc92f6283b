"""Command line: masks and ``subtype_results.csv`` for a folder of ``*_0000.nii.gz`` images.

    python -m pancreas_multitask.inference -i IMAGES -o OUTPUT -m MODEL_FOLDER_OR_ZIP \\
        [-f 0 1 2 3 4] [-chk checkpoint_best.pth] [--mode fast|accurate|fastest] [-device cpu|cuda|auto] [--engine auto|torch|openvino] \\
        [--num_parts N --part_id K] [--overwrite] [--disable_postprocessing]

nnU-Net's postprocessing stored with the model (``fold_K/postprocessing.pkl``) is applied unless
``--disable_postprocessing``; the masks before it go to ``OUTPUT/no_postprocessing/``. The flags follow ``nnUNetv2_predict``. Exit status 1 when any input file could not be predicted
(each is listed by name); the other cases are still written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import runtime

MODE_NAMES = ("accurate", "fast", "fastest")  # predictor.MODES, named here: nnunetv2 is imported only after the environment is set
ENGINE_NAMES = ("auto", "torch", "openvino")  # engines.ENGINES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, nargs="+", help="a folder of *_0000.nii.gz images, or image files")
    parser.add_argument("-o", "--output", required=True, help="output folder (masks, subtype_results.csv)")
    parser.add_argument("-m", "--model", required=True, help="trained model folder, or a zip from nnUNetv2_export_model_to_zip / export_model")
    parser.add_argument("-f", "--folds", nargs="+", default=["0"], help="folds to ensemble (default 0)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_best.pth")
    parser.add_argument("--mode", default="fast", choices=MODE_NAMES, help="fast (default) and accurate keep nnU-Net's step and TTA; fastest does not (docs/inference.md)")
    parser.add_argument("-device", "--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--engine", default="auto", choices=ENGINE_NAMES,
                        help="what runs the network's forward pass: auto (default) is OpenVINO on the CPU when it imports, torch otherwise (docs/inference.md)")
    parser.add_argument("--num_parts", type=int, default=1, help="split the cases between this many processes")
    parser.add_argument("--part_id", type=int, default=0, help="which part this process predicts (0-based)")
    parser.add_argument("--overwrite", action="store_true", help="predict cases that already have outputs again")
    parser.add_argument("--models_dir", default="", help="where a model zip is unpacked (default: a 'models' folder beside OUTPUT)")
    parser.add_argument("--file_ending", default=".nii.gz")
    parser.add_argument("--disable_postprocessing", action="store_true", help="do not apply the postprocessing stored with the model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = runtime.detect_device(args.device)
    if device == "cpu":  # before nnunetv2 is imported; nnU-Net's default of 8 processes oversubscribes small machines
        runtime.set_nnunet_variables({"nnUNet_compile": "f", "nnUNet_def_n_proc": str(runtime.available_cores())}, keep_existing=True)
    from ..postprocessing import describe
    from .model_sharing import resolve_model
    from .predictor import input_cases, make_predictor, predict_cases

    models_dir = Path(args.models_dir) if args.models_dir else Path(args.output).resolve().parent / "models"
    model = resolve_model(args.model, models_dir)
    folds = [int(f) if f.isdigit() else f for f in args.folds]
    inputs = args.input[0] if len(args.input) == 1 and Path(args.input[0]).is_dir() else args.input
    cases = input_cases(inputs, args.file_ending)
    if not cases:
        print(f"no *_0000{args.file_ending} images in {inputs}", file=sys.stderr)
        return 1
    predictor = make_predictor(model, args.mode, device, folds, args.checkpoint, postprocessing=not args.disable_postprocessing, engine=args.engine)
    print(f"model {model} | folds {folds} | {args.checkpoint} | mode {args.mode} | device {device} | engine {predictor.engine} | postprocessing: {describe(predictor.postprocessing)} "
          f"| {len(cases)} case(s), part {args.part_id + 1}/{args.num_parts}")
    report = predict_cases(predictor, cases, args.output, args.overwrite, args.num_parts, args.part_id, args.file_ending)
    print(f"predicted {len(report.predicted)}, skipped {len(report.skipped)} (done before), failed {len(report.failed)} -> {args.output}")
    if report.failed:
        print("could not predict:\n" + "\n".join(report.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
