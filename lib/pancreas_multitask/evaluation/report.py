"""The evaluation report: one standalone HTML file (Jinja2, inline CSS, figures as base64 PNG, no URL).

A missing optional input (training curves, inference timing, benchmark, provenance) leaves its
section saying "not available" instead of failing.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import math
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib.figure import Figure

from ..io import write_text
from ..model.calibration import temperature_warning
from ..runtime import git_revision, library_versions
from ..visualization import training_curves
from .chance import COLLAPSE_SHARE, chance_note
from .chance import describe as describe_chance
from .evaluate import TARGET_LABELS, EvaluationResult, worst_first
from .verdict import MIN_CASES_FOR_VERDICT
from .figures import confusion_heatmap, dsc_by_subtype, prediction_histogram, reliability_diagram, worst_case_montage

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
REPORT_NAME = "evaluation.html"


def fmt(value: Any, digits: int = 3) -> str:
    """How the report writes a number: ``digits`` decimals, ``n/a`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def fmt_ci(ci: Sequence[float] | None) -> str:
    """``[low, high]`` as the report writes a 95 % interval."""
    return "n/a" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def figure_data_uri(fig: Figure, dpi: int = 90) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (closed afterwards)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


LONG_LIST = 6  # longer lists of plain values are summarised in a table cell


def _cell(value: Any) -> str:
    """A readable table cell: numbers to 4 significant digits, short lists joined, mappings as ``key value`` pairs (never JSON)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return f"{len(value)} values" if len(value) > LONG_LIST else ", ".join(_cell(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {_cell(v)}" for k, v in value.items()) if len(value) <= LONG_LIST else f"{len(value)} entries"
    return "n/a" if value is None else _display_path(str(value))


DISPLAY_ROOTS: ContextVar[tuple[Path, ...]] = ContextVar("display_roots", default=())  # absolute paths under these show relative (write_report sets them)


def _display_path(text: str) -> str:
    """An absolute path under one of ``DISPLAY_ROOTS`` as the relative path a reader can find from the repository; other text as it is."""
    if not text.startswith("/"):
        return text
    path = Path(text)
    for root in DISPLAY_ROOTS.get():
        try:
            return str(path.relative_to(root)) or "."
        except ValueError:
            continue
    return text


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    """One level of nested mappings as their own columns (``time_shares`` -> ``time_shares read``, ...)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping) and value and not any(isinstance(v, Mapping) for v in value.values()):
            flat.update({f"{key} {sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def records_table(records: Sequence[Mapping[str, Any]], title: str) -> dict[str, Any]:
    """A list of dicts as one table; the columns are the union of their keys (nested ones flattened), in order of appearance."""
    records = [_flat(r) for r in records]
    columns = list(dict.fromkeys(k for r in records for k in r))
    return {"title": title, "columns": columns, "rows": [[_cell(r.get(c)) for c in columns] for r in records]}


def mapping_tables(data: Mapping[str, Any], title: str) -> list[dict[str, Any]]:
    """Generic tables for a JSON object: plain values as key/value rows; a list of dicts or a dict of dicts as a table each; other dicts recursively."""
    tables = []
    plain = [[key, _cell(value)] for key, value in data.items() if not isinstance(value, Mapping) and not _is_records(value)]
    if plain:
        tables.append({"title": title, "columns": ["", "value"], "rows": plain})
    for key, value in data.items():
        if _is_records(value):
            tables.append(records_table(value, f"{title}: {key}"))
        elif isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            table = records_table(list(value.values()), f"{title}: {key}")
            tables.append({**table, "columns": ["", *table["columns"]], "rows": [[name, *row] for name, row in zip(value, table["rows"])]})
        elif isinstance(value, Mapping) and value:
            tables += mapping_tables(value, f"{title}: {key}")
    return tables


def benchmark_tables(benchmark: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The benchmark's ``rows`` (a list of dicts) as one table, everything else as ``mapping_tables``; None without ``rows``."""
    if not _is_records(benchmark.get("rows")):
        return None
    return [records_table(benchmark["rows"], "benchmark")] + mapping_tables({k: v for k, v in benchmark.items() if k != "rows"}, "benchmark settings")


def markdown_blocks(text: str) -> list[dict[str, Any]]:
    """A benchmark's Markdown (what docs/benchmarks.md shows): pipe tables as tables, other lines as paragraphs (``**x**`` and
    backticks dropped); the report shows the same table as the docs instead of the JSON's every field."""
    blocks: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    clean = lambda cell: cell.strip().replace("**", "").replace("`", "")  # noqa: E731
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            cells = [clean(c) for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            continue
        if rows:
            blocks.append({"title": "", "columns": rows[0], "rows": rows[1:]})
            rows = []
        if line.strip():
            blocks.append({"text": clean(line)})
    return blocks


def benchmark_label(benchmark: Mapping[str, Any], provenance: Mapping[str, Any] | None) -> str:
    """Which run measured the benchmark: its date and revision, and whether that is this run's revision."""
    date, revision = benchmark.get("date"), benchmark.get("git_revision")
    this = (provenance or {}).get("git_revision")
    name = benchmark.get("benchmark", "benchmark")
    when = f"measured {date}" if date else "date not recorded"
    at = f"at revision {str(revision)[:12]}" if revision else "revision not recorded"
    same = revision is not None and this is not None and str(revision).removesuffix("+dirty") == str(this).removesuffix("+dirty")
    return f"{name}: {when}, {at}" + (" (this run's revision)" if same else ", not in this run (read from its JSON)")


def _load_json(value: Mapping[str, Any] | str | os.PathLike[str] | None) -> tuple[Mapping[str, Any] | None, str]:
    """(data, why not available)."""
    if value is None:
        return None, "not given"
    if isinstance(value, Mapping):
        return value, ""
    path = Path(value)
    if not path.is_file():
        return None, f"file not found: {path}"
    return json.loads(path.read_text()), ""


def collect_provenance(repo_root: str | os.PathLike[str], manifest_path: str | os.PathLike[str] | None, profile: str | None, parameters: Mapping[str, Any] | None, device: str | None) -> dict[str, Any]:
    """Git revision, profile, parameters, the manifest's sha256, library versions, device and date, for the report."""
    manifest = Path(manifest_path) if manifest_path is not None else None
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest is not None and manifest.is_file() else "not available"
    return {
        "git_revision": git_revision(repo_root),
        "profile": profile or "not recorded",
        "device": device or "not recorded",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "manifest": str(manifest) if manifest is not None else "not recorded",
        "manifest_sha256": digest,
        "parameters": dict(parameters or {}),
        "library_versions": library_versions(),
    }


def _splits_line(splits: Mapping[str, Any]) -> str:
    """The line naming the split that chose and the one evaluated (``metrics.json``'s ``splits``)."""
    return f"Checkpoint, postprocessing and subtype temperature chosen on: {splits['selection']}. Evaluated split: {splits['evaluated'] or 'not named'}."


def chance_text(classification: Mapping[str, Any]) -> str:
    """The chance line of a macro-F1 (``metrics.json``'s ``classification``), in words."""
    return describe_chance(classification["chance"], classification["class_names"])


def _summary_rows(result: EvaluationResult) -> list[dict[str, str]]:
    classification = result.summary["classification"]
    rows = []
    for key, target in result.summary["targets"].items():
        chance = chance_text(classification) if key == "macro_f1" and classification else "—"
        value = fmt(target["value"]) + (f" ({classification['f1_over']})" if key == "macro_f1" and classification else "")
        rows.append({"label": target["label"], "value": value, "ci": fmt_ci(target["ci95"]), "n": target["n"], "target": f"≥ {target['threshold']:.2f}",
                     "verdict": target["verdict"], "reason": target["reason"], "chance": chance})
    return rows


def _per_case_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    rows = []
    for _, case in worst_first(result.per_case).iterrows():
        predicted = None if pd.isna(case["subtype_pred"]) else int(case["subtype_pred"])
        rows.append({
            "case": case["case"], "true": result.class_names[int(case["subtype_true"])],
            "pred": "n/a" if predicted is None else result.class_names[predicted], "prob": fmt(case["prob_pred"], 2),
            "dsc_pancreas": fmt(case["dsc_pancreas"]), "dsc_lesion": fmt(case["dsc_lesion"]),
            "misclassified": predicted is not None and predicted != int(case["subtype_true"]),
            "no_mask": not case["pred_file"],
        })
    return rows


def _classification(result: EvaluationResult) -> dict[str, Any] | None:
    summary = result.summary["classification"]
    if summary is None:
        return None
    per_class = [{"name": c["name"], "precision": fmt(c["precision"]), "recall": fmt(c["recall"]), "f1": fmt(c["f1"]), "support": c["support"]} for c in summary["per_class"]]
    null = summary["chance"]["permutation_null"]
    return {"n": summary["n"], "macro_f1": fmt(summary["macro_f1"]), "macro_f1_ci": fmt_ci(summary["macro_f1_ci95"]), "f1_over": summary["f1_over"],
            "accuracy": fmt(summary["accuracy"]), "balanced_accuracy": f"{fmt(summary['balanced_accuracy'])} {fmt_ci(summary['balanced_accuracy_ci95'])}",
            "mcc": f"{fmt(summary['mcc'])} {fmt_ci(summary['mcc_ci95'])}", "chance": chance_text(summary), "p_value": fmt(null["p_value"], 4),
            "permutations": null["permutations"], "chance_note": chance_note(summary),
            "collapse": summary["collapse_warnings"], "label_warning": summary["label_warning"],
            "per_class": per_class, "heatmap": figure_data_uri(confusion_heatmap(summary["confusion_matrix"], result.class_names)),
            "histogram": figure_data_uri(prediction_histogram(summary["prediction_histogram"], result.class_names, COLLAPSE_SHARE)), "collapse_share": f"{COLLAPSE_SHARE:.0%}",
            "calibration": _calibration(summary.get("calibration"))}


def _calibration(calibration: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """ECE before and after temperature scaling, with CIs, and the reliability diagram."""
    if not calibration:
        return None
    rows = [{"label": label, "ece": fmt(calibration[key]["ece"]), "ci": fmt_ci(calibration[key]["ece_ci95"])}
            for key, label in (("uncalibrated", "before (uncalibrated)"), ("calibrated", "after temperature scaling" if "uncalibrated" in calibration else "the CSV's probabilities"))
            if key in calibration]
    return {"rows": rows, "n": calibration["n"], "bins": calibration["bins"], "figure": figure_data_uri(reliability_diagram(calibration))}


def _surface(result: EvaluationResult) -> dict[str, Any] | None:
    """Mean DSC, NSD and HD95 per structure with CIs, and the lesion detection rate (``metrics.json``)."""
    summary = result.summary
    surface = summary.get("surface")
    if not surface:
        return None
    rows = []
    for name, label in (("pancreas", "whole pancreas"), ("lesion", "lesion")):
        dsc, nsd, hd = summary["segmentation"][f"dsc_{name}"], surface[f"nsd_{name}"], surface[f"hd95_{name}"]
        rows.append({"label": label, "dsc": f"{fmt(dsc['mean'])} {fmt_ci(dsc['ci95'])}", "nsd": f"{fmt(nsd['mean'])} {fmt_ci(nsd['ci95'])}",
                     "hd95": f"{fmt(hd['mean'], 1)} [{fmt(hd['ci95'][0], 1)}, {fmt(hd['ci95'][1], 1)}]" if hd["ci95"] else "n/a", "n": dsc["n"]})
    detection = summary["lesion_detection"]
    return {"rows": rows, "tolerance": f"{surface['nsd_tolerance_mm']:g}", "detection": detection, **detection_texts(detection)}


def detection_texts(detection: Mapping[str, Any]) -> dict[str, str]:
    """The lesion-wise detection in words: cases found, components found, false-positive components per case."""
    fp = detection["fp_components_ci95"]
    fp_text = "n/a" if fp is None else (f"{fmt(detection['fp_components_per_case'], 2)} [{fmt(fp[0], 2)}, {fmt(fp[1], 2)}] "
                                         f"per case ({detection['fp_components_total']} in {detection['fp_cases']} cases)")
    if detection["rate"] is None:
        return {"detection_text": "n/a (no case with a true lesion)", "components_text": "n/a", "fp_text": fp_text}
    return {
        "detection_text": f"{fmt(detection['rate'])} {fmt_ci(detection['ci95'])} ({detection['detected']} of {detection['n']} cases)",
        "components_text": f"{fmt(detection['component_sensitivity'])} {fmt_ci(detection['component_sensitivity_ci95'])} ({detection['components_detected']} of {detection['components']} components)",
        "fp_text": fp_text,
    }


def _temperatures(inference: Mapping[str, Any] | None) -> list[dict[str, str | None]]:
    """Per fold of the model that predicted (``inference.json``): its temperature and where it was fitted, and a warning
    when the temperature sits at a bound of its range."""
    calibration = (inference or {}).get("calibration") or {}
    return [{"fold": fold, "text": f"{fold}: temperature {c['temperature']:.3f}, {c['fitted_on']}",
             "warning": temperature_warning(c["temperature"], c.get("cases", 0))} for fold, c in calibration.items()]


def _postprocessing(result: EvaluationResult) -> dict[str, Any] | None:
    """Mean Dice (with CI) without and with nnU-Net's postprocessing, per structure."""
    pp = result.summary.get("postprocessing")
    if not pp:
        return None
    rows = []
    for key in ("dsc_pancreas", "dsc_lesion"):
        without, with_ = pp[key]["without"], pp[key]["with"]
        delta = None if without["mean"] is None or with_["mean"] is None else with_["mean"] - without["mean"]
        rows.append({"label": TARGET_LABELS[key], "without": f"{fmt(without['mean'])} {fmt_ci(without['ci95'])}",
                     "with": f"{fmt(with_['mean'])} {fmt_ci(with_['ci95'])}", "delta": "n/a" if delta is None else f"{delta:+.3f}"})
    return {"rows": rows, "chosen_on": pp.get("chosen_on", "validation")}


def _training(training_metrics: pd.DataFrame | str | os.PathLike[str] | None) -> tuple[str | None, str]:
    if training_metrics is None:
        return None, "not given"
    if not isinstance(training_metrics, pd.DataFrame):
        path = Path(training_metrics)
        if not path.is_file():
            return None, f"file not found: {path}"
        training_metrics = pd.read_csv(path)
    try:
        return figure_data_uri(training_curves(training_metrics)), ""
    except KeyError as exc:
        plt.close("all")
        return None, f"the per-epoch file lacks the column {exc}"


def write_report(
    result: EvaluationResult,
    output_html: str | os.PathLike[str],
    *,
    training_metrics: pd.DataFrame | str | os.PathLike[str] | None = None,
    inference: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    benchmark: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    worst_n: int = 3,
    display_roots: Sequence[str | os.PathLike[str]] = (),
    data_note: str = "",
    scan_problems: Sequence[str] = (),
    study_note: str = "",
) -> Path:
    """Render the report to ``output_html`` (atomically) and return its path.

    ``training_metrics``: the trainer's per-epoch CSV (path or frame); ``inference``: ``inference.json``
    (path or dict); ``benchmark``: a JSON whose ``rows`` list becomes a table; ``provenance``: see
    ``collect_provenance``. Which split chose and which is evaluated come from the result (``summary["splits"]``).
    The worst cases are ordered by the lower of their two DSCs. Absolute paths under
    ``display_roots`` (the repository) are shown relative to them. ``data_note``: a warning on the first screen
    (the synthetic phantom's numbers are not results on CT). ``scan_problems``: what the raw-data scan found wrong
    (``raw_cases.json``), each naming its file; under ``on_bad_case: skip`` those cases were left out. ``study_note``:
    beside the macro-F1, what a larger study on the same kind of data found (the phantom's learnability study).
    """
    token = DISPLAY_ROOTS.set(tuple(Path(r).resolve() for r in display_roots))
    try:
        return _write_report(result, Path(output_html), training_metrics, inference, benchmark, provenance, worst_n, data_note, scan_problems, study_note)
    finally:
        DISPLAY_ROOTS.reset(token)


def _write_report(result: EvaluationResult, output_html: Path, training_metrics, inference, benchmark,
                  provenance: Mapping[str, Any] | None, worst_n: int, data_note: str, scan_problems: Sequence[str] = (), study_note: str = "") -> Path:
    summary = result.summary
    inference_data, inference_missing = _load_json(inference)
    benchmark_data, benchmark_missing = _load_json(benchmark)
    benchmark_content = benchmark_tables(benchmark_data) if benchmark_data is not None else None
    markdown_file = Path(benchmark).with_suffix(".md") if isinstance(benchmark, (str, os.PathLike)) else None
    benchmark_markdown = markdown_blocks(markdown_file.read_text()) if markdown_file is not None and markdown_file.is_file() and benchmark_content else None
    if benchmark_data is not None and benchmark_content is None:
        benchmark_missing = "the benchmark JSON has no 'rows' list"
    worst = worst_first(result.per_case)
    worst = worst[worst["pred_file"].astype(bool)].head(worst_n)
    segmentation = summary["segmentation"]
    context = {
        "title": f"Evaluation: {summary['splits']['evaluated'] or 'predictions'}",
        "splits": _splits_line(summary["splits"]),
        "optimistic": summary["splits"]["evaluated_is_selection"],
        "trained": summary["splits"]["evaluated_is_training"],
        "data_note": data_note,
        "n_ground_truth": summary["n_ground_truth_cases"],
        "n_segmentation": segmentation["dsc_pancreas"]["n"],
        "summary_rows": _summary_rows(result),
        "min_cases": MIN_CASES_FOR_VERDICT,
        "medians": {"pancreas": fmt(segmentation["dsc_pancreas"]["median"]), "lesion": fmt(segmentation["dsc_lesion"]["median"])},
        "bootstrap": summary["bootstrap"],
        "missing": summary["missing_predictions"],
        "unexpected": summary["unexpected_predictions"],
        "scan_problems": list(scan_problems),
        "study_note": study_note,
        "sources": summary["sources"],
        "classification": _classification(result),
        "temperatures": _temperatures(inference_data),
        "classification_not_assessable": summary.get("classification_not_assessable"),
        "postprocessing": _postprocessing(result),
        "surface": _surface(result),
        "dsc_figure": figure_data_uri(dsc_by_subtype(result.per_case, result.class_names)) if segmentation["dsc_pancreas"]["n"] else None,
        "per_case": _per_case_rows(result),
        "montage": figure_data_uri(worst_case_montage(worst, result.class_names)) if len(worst) else None,
        "worst_n": len(worst),
        "inference_tables": mapping_tables(inference_data, "inference") if inference_data is not None else None,
        "inference_missing": inference_missing,
        "benchmark_tables": benchmark_content,
        "benchmark_markdown": benchmark_markdown,
        "benchmark_label": benchmark_label(benchmark_data, provenance) if benchmark_content else "",
        "benchmark_missing": benchmark_missing,
        "provenance_tables": mapping_tables(provenance, "provenance") if provenance else None,
    }
    # last: training_curves sets seaborn's theme, which would restyle the figures above
    context["training_figure"], context["training_missing"] = _training(training_metrics)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["display_path"] = _display_path
    write_text(output_html, env.get_template(TEMPLATE).render(**context))
    return output_html
