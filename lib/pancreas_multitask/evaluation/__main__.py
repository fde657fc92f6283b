"""Evaluate predictions against ground truth: ``metrics.json``, ``per_case.csv`` and ``evaluation.html``.

Seed-compatible interface::

    python -m pancreas_multitask.evaluation --validation_data GT_DIR --prediction_folder PRED_DIR \\
        --prediction_csv CSV --output_folder OUT

``GT_DIR`` is in the quiz layout (``subtypeK/`` folders give the true class). For the test split,
``--answer_key subtype_labels.csv [--answer_masks DIR] [--images DIR]`` replaces ``--validation_data``
(``--answer_key`` may also be the folder holding ``subtype_labels.csv`` and ``masks/``, as the phantom writes it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..manifest import load_manifest
from ..dataset.ground_truth import ANSWER_KEY_CSV, ANSWER_KEY_MASKS

REPO = Path(__file__).resolve().parents[3]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pancreas_multitask.evaluation", description=__doc__.split("\n\n")[0])
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--validation_data", type=Path, help="ground truth in the quiz layout: GT_DIR/subtypeK/<case>.nii.gz")
    truth.add_argument("--answer_key", type=Path, help=f"answer-key CSV (Names, Subtype) for the test split, or the folder holding {ANSWER_KEY_CSV}")
    parser.add_argument("--answer_masks", type=Path, help=f"the answer key's mask folder (default: '{ANSWER_KEY_MASKS}' beside the CSV)")
    parser.add_argument("--images", type=Path, help="images (<case>_0000.nii.gz) for the answer key's overlays")
    parser.add_argument("--prediction_folder", type=Path, required=True, help="predicted masks <case>.nii.gz")
    parser.add_argument("--prediction_csv", type=Path, required=True, help="predicted subtypes: Names, Subtype[, prob_*]")
    parser.add_argument("--output_folder", type=Path, required=True, help="where metrics.json, per_case.csv and evaluation.html go")
    parser.add_argument("--checkpoint_split", default="validation", help="the split that chose the checkpoint, postprocessing and temperature (default: validation)")
    parser.add_argument("--evaluated_split", help="the split evaluated (default: the ground-truth folder's name, or 'test' for an answer key)")
    parser.add_argument("--training_split", default="train", help="the split the model was trained on (default: train); scoring it decides nothing")
    parser.add_argument("--training_metrics", type=Path, help="the trainer's per-epoch training_metrics.csv, for the report's curves")
    parser.add_argument("--inference_json", type=Path, help="inference.json, for the report's timing table")
    parser.add_argument("--benchmark_json", type=Path, help="a benchmark JSON with a 'rows' list, for the report")
    parser.add_argument("--manifest", type=Path, help="data_manifest.yaml: its layout parses --validation_data, its subtypes are the classes a macro-F1 is over, and it is hashed into the report's provenance (default: the repository's)")
    parser.add_argument("--profile", help="the profile, for the provenance")
    parser.add_argument("--device", help="the device the model ran on, for the provenance")
    parser.add_argument("--worst_n", type=int, default=3, help="worst cases shown as overlays (default: 3)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    args = parser.parse_args(argv)
    if args.answer_key is None and (args.answer_masks is not None or args.images is not None):
        parser.error("--answer_masks and --images go with --answer_key")
    return args


def summary_lines(summary: dict, written: list[Path]) -> list[str]:
    """The short summary the CLI prints."""
    from .report import fmt, fmt_ci

    from .chance import chance_note
    from .report import chance_text, detection_texts

    splits = summary["splits"]
    lines = [f"cases: {summary['n_ground_truth_cases']} in the ground truth, {summary['segmentation']['dsc_pancreas']['n']} with a predicted mask",
             f"chosen on: {splits['selection']}; evaluated: {splits['evaluated']}"
             + (" (the cases it was trained on: nothing is decided)" if splits["evaluated_is_training"] else " (the same cases: optimistic)" if splits["evaluated_is_selection"] else "")]
    for target in summary["targets"].values():
        lines.append(f"{target['label']}: {fmt(target['value'])} {fmt_ci(target['ci95'])} (target >= {target['threshold']:.2f}, {target['n']} cases) "
                     f"{target['verdict'].upper()}: {target['reason']}")
    classification = summary["classification"]
    if classification is not None:
        lines.append(f"subtype macro-F1 {classification['f1_over']}; balanced accuracy {fmt(classification['balanced_accuracy'])}, MCC {fmt(classification['mcc'])}, "
                     f"accuracy {fmt(classification['accuracy'])}")
        lines.append(f"chance line: {chance_text(classification)}")
        if note := chance_note(classification):
            lines.append(f"WARNING: {note}")
        lines += [f"WARNING: collapsed subtype answers: {line}" for line in classification["collapse_warnings"]]
        if classification["label_warning"]:
            lines.append(f"WARNING: {classification['label_warning']}")
    elif summary.get("classification_not_assessable"):
        lines.append(f"classification not assessable: {summary['classification_not_assessable']}")
    for key, label in (("dsc_pancreas", "whole-pancreas DSC"), ("dsc_lesion", "lesion DSC")):
        if summary.get("postprocessing"):
            pp = summary["postprocessing"][key]
            lines.append(f"{label} without / with postprocessing: {fmt(pp['without']['mean'])} / {fmt(pp['with']['mean'])}")
    detection = detection_texts(summary["lesion_detection"])
    lines.append(f"lesions found: {detection['detection_text']}; false-positive lesion components: {detection['fp_text']}")
    lines.append(f"missing predictions: {len(summary['missing_predictions'])}, without ground truth: {len(summary['unexpected_predictions'])}")
    lines += [f"wrote {path}" for path in written]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from .evaluate import METRICS_JSON, PER_CASE_CSV, clear_outputs, evaluate_folder
    from ..dataset.ground_truth import read_answer_key, read_quiz_layout
    from .report import REPORT_NAME, collect_provenance, write_report
    from .stage import data_note
    from ..workspace import UNPROCESSED

    try:
        clear_outputs(args.output_folder, (METRICS_JSON, PER_CASE_CSV, REPORT_NAME))  # a killed re-run leaves no stale mix
        manifest = load_manifest(args.manifest or REPO / "data_manifest.yaml")
        if args.validation_data is not None:
            cases, source = read_quiz_layout(args.validation_data, manifest), str(args.validation_data)
            evaluated = args.evaluated_split or Path(os.path.abspath(args.validation_data)).name
        else:
            key = args.answer_key / ANSWER_KEY_CSV if args.answer_key.is_dir() else args.answer_key
            masks = args.answer_masks or key.parent / ANSWER_KEY_MASKS
            cases, source = read_answer_key(key, masks, args.images), f"{key} (masks: {masks})"
            evaluated = args.evaluated_split or "test"
        label_file = key if args.validation_data is None else None
        unprocessed = args.prediction_folder / UNPROCESSED
        result = evaluate_folder(cases, args.prediction_folder, args.prediction_csv, args.output_folder, resamples=args.resamples, seed=args.seed, ground_truth_source=source,
                                 unprocessed_folder=unprocessed if unprocessed.is_dir() else None, selection_split=args.checkpoint_split, evaluated_split=evaluated,
                                 label_file=label_file, training_split=args.training_split, class_names=manifest.subtypes)
        parameters = {key: str(value) for key, value in vars(args).items() if value is not None}
        provenance = collect_provenance(REPO, args.manifest, args.profile, parameters, args.device)
        report = write_report(
            result, args.output_folder / REPORT_NAME, display_roots=(Path.cwd(),),
            data_note=data_note(args.validation_data if args.validation_data is not None else (args.answer_key if args.answer_key.is_dir() else args.answer_key.parent)),
            training_metrics=args.training_metrics, inference=args.inference_json, benchmark=args.benchmark_json,
            provenance=provenance, worst_n=args.worst_n,
        )
    except (ValueError, FileNotFoundError) as exc:  # VolumeError and JSONDecodeError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(result.summary, [args.output_folder / METRICS_JSON, args.output_folder / PER_CASE_CSV, report])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
