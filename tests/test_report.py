"""The evaluation report: standalone HTML with the numbers of metrics.json, embedded figures, no URL."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pancreas_multitask.evaluation.evaluate import evaluate_folder
from pancreas_multitask.dataset.ground_truth import read_quiz_layout
from pancreas_multitask.evaluation.report import TEMPLATE, TEMPLATES, collect_provenance, fmt, fmt_ci, write_report

from conftest import MANIFEST

DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")
EXTERNAL = re.compile(r"https?:|//cdn|//www\.|\bwww\.|src=\"(?!data:image/png;base64,)|href=\"(?!#)|<link\b|<script\b|@import|url\(", re.IGNORECASE)


@pytest.fixture(scope="module")
def evaluated(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny phantom's validation split against predictions derived from it (one shifted, one without lesion, one misclassified)."""
    root = tmp_path_factory.mktemp("report")
    cases = read_quiz_layout(tiny_phantom / "quiz" / "validation", MANIFEST)
    (root / "pred").mkdir()
    lines = ["Names,Subtype,prob_subtype0,prob_subtype1,prob_subtype2"]
    for i, case in enumerate(cases):
        img = nib.load(str(case.gt_file))
        labels = np.rint(img.get_fdata()).astype(np.uint8)
        predicted = [np.roll(labels, 2, axis=1), np.where(labels == 2, 1, labels), labels][i % 3]
        nib.save(nib.Nifti1Image(predicted, img.affine), str(root / "pred" / case.mask_file))
        guess = (case.subtype + (i == 0)) % 3
        probs = np.full(3, 0.1)
        probs[guess] = 0.8
        lines.append(f"{case.mask_file},{guess},{probs[0]:.6f},{probs[1]:.6f},{probs[2]:.6f}")
    (root / "pred" / "subtype_results.csv").write_text("\n".join(lines) + "\n")
    result = evaluate_folder(cases, root / "pred", root / "pred" / "subtype_results.csv", root / "out", resamples=300, ground_truth_source=str(tiny_phantom / "quiz" / "validation"),
                             selection_split="validation", evaluated_split="validation")
    return root, result


def as_test_split(result, tmp_path: Path):
    """The fixture's predictions scored as if they were another split than the one that chose."""
    first = result.per_case.iloc[0]
    return evaluate_folder(read_quiz_layout(Path(first["gt_file"]).parents[1], MANIFEST), Path(first["pred_file"]).parent, Path(first["pred_file"]).parent / "subtype_results.csv",
                           tmp_path / "as_test", resamples=100, selection_split="validation", evaluated_split="test")


def training_frame() -> pd.DataFrame:
    epochs = np.arange(4)
    columns = ["train_losses", "train_seg_losses", "train_cls_losses", "val_losses", "pseudo_dice_pancreas", "pseudo_dice_lesion",
               "ema_fg_dice", "val_macro_f1", "val_accuracy", "val_criterion", "w_seg", "w_cls", "lrs"]
    return pd.DataFrame({"epoch": epochs, **{c: np.linspace(1.0, 0.5, len(epochs)) for c in columns}})


def section(text: str, element_id: str) -> str:
    return re.search(rf'<table id="{element_id}">(.*?)</table>', text, re.S).group(1)


def test_report_holds_the_numbers_of_metrics_json_and_is_offline(evaluated, repo: Path) -> None:
    root, result = evaluated
    provenance = collect_provenance(repo, repo / "data_manifest.yaml", "smoke", {"worst_n": 2}, "cpu")
    inference = {"mode": "fast", "counts": {"validation": {"predicted": 3, "failed": 0}}, "median_seconds_per_case": 1.2346}
    inference["model"] = str(root / "models" / "fold_0")  # an absolute path under the repository
    inference["calibration"] = {"fold 0": {"temperature": 20.0, "fitted_on": "fold 0 validation cases", "cases": 15}}  # at its bound
    benchmark = {"rows": [{"predictor": "nnUNetPredictor", "s_per_case": 3.21}, {"predictor": "multitask", "s_per_case": 3.3, "time_shares": {"read": 0.25, "network": 0.75}}],
                 "device": "cpu", "sizes": {"small": [1, 2, 3], "large": [4, 5, 6]}, "date": "2026-11-30 10:00", "git_revision": "0123456789abcdef0123"}
    path = write_report(result, root / "out" / "evaluation.html", training_metrics=training_frame(), inference=inference, benchmark=benchmark, provenance=provenance, worst_n=2,
                        display_roots=(root.parent,))
    text = path.read_text()
    # readable cells: no JSON, no absolute path under the repository; the benchmark says when and where it was measured
    assert "<td>small</td><td>1, 2, 3</td>" in text and '{"' not in html.unescape(text.split("<h2>Provenance</h2>")[0])
    assert f"<td>{root.name}/models/fold_0</td>" in text and f"<code>{root.name}/pred</code>" in text and str(root) not in text
    label = re.search(r'<p class="note" id="benchmark-label">(.*?)</p>', text).group(1)
    assert "measured 2026-11-30 10:00" in label and "0123456789ab" in label and "not in this run" in label
    metrics = json.loads((root / "out" / "metrics.json").read_text())

    summary = html.unescape(section(text, "summary"))
    rows = re.findall(r'<tr><td>(.*?)</td><td class="num">(.*?)</td><td class="num">(.*?)</td><td class="num">(\d+)</td><td>.*?</td><td><span class="(\w+)">(.*?)</span><br><span class="note">(.*?)</span></td>', summary)
    over = metrics["classification"]["f1_over"]
    expected = [(t["label"], fmt(t["value"]) + (f" ({over})" if key == "macro_f1" else ""), fmt_ci(t["ci95"]), str(t["n"]), t["verdict"].replace(" ", ""), t["verdict"], t["reason"])
                for key, t in metrics["targets"].items()]
    assert rows == expected and len(rows) == 3
    assert all(t["label"].endswith("(chosen on these cases)") and t["verdict"] == "undecided" for t in metrics["targets"].values())  # scored where chosen; 3 cases
    assert metrics["targets"]["dsc_lesion"]["value"] < 1.0 and metrics["classification"]["accuracy"] == pytest.approx(2 / 3)
    per_class = section(text, "per-class")
    for c in metrics["classification"]["per_class"]:
        assert f"<tr><td>{c['name']}</td><td class=\"num\">{fmt(c['precision'])}</td><td class=\"num\">{fmt(c['recall'])}</td><td class=\"num\">{fmt(c['f1'])}</td><td class=\"num\">{c['support']}</td></tr>" in per_class
    assert f"accuracy {fmt(metrics['classification']['accuracy'])}" in text
    assert "these numbers are optimistic" in text and "Checkpoint, postprocessing and subtype temperature chosen on: validation. Evaluated split: validation." in text
    # the per-case table lists every case, worst first
    per_case = section(text, "per-case")
    shown = re.findall(r"<tr[^>]*><td>(quiz_\w+)</td>", per_case)
    lowest = result.per_case[["dsc_pancreas", "dsc_lesion"]].min(axis=1)
    assert shown == list(result.per_case.assign(k=lowest).sort_values("k")["case"])
    assert text.count('<tr class="flag">') == 1  # the misclassified case
    # provenance, inference and benchmark tables
    assert hashlib.sha256((repo / "data_manifest.yaml").read_bytes()).hexdigest() == provenance["manifest_sha256"] in text
    assert provenance["git_revision"] in text and "<td>1.235</td>" in text and "<td>validation</td><td>3</td><td>0</td>" in text
    assert "<td>nnUNetPredictor</td><td>3.21</td>" in text
    assert "<th>time_shares network</th>" in text and "<td>0.75</td>" in text and "{&#34;" not in text  # nested values as columns, no JSON

    images = re.findall(r"<img\b[^>]*>", text)
    assert len(images) == 6  # confusion matrix, prediction histogram, reliability diagram, DSC per subtype, worst cases, training curves
    calibration = metrics["classification"]["calibration"]  # the fixture's CSV holds probabilities only: shown as they are
    assert "uncalibrated" not in calibration and calibration["n"] == 3
    assert f"<tr><td>the CSV&#39;s probabilities</td><td class=\"num\">{fmt(calibration['calibrated']['ece'])}</td>" in section(text, "calibration")
    assert "fold 0: temperature 20.000, fold 0 validation cases" in text
    assert re.search(r'<p class="warn">Calibration, fold 0: the temperature is at the top of its range \(20\)[^<]*close to uniform\.</p>', text)
    for tag in images:
        uri = re.search(r'src="([^"]+)"', tag).group(1)
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    without_images = DATA_URI.sub("data:image/png;base64,", text)  # base64 text may hold "//cdn" by chance
    assert EXTERNAL.findall(without_images) == []
    assert EXTERNAL.findall(html.unescape(without_images)) == []


def test_missing_optional_inputs_say_not_available(evaluated, tmp_path: Path) -> None:
    _, result = evaluated
    result = as_test_split(result, tmp_path)
    text = write_report(result, tmp_path / "r.html", training_metrics=tmp_path / "absent.csv", benchmark={"device": "cpu"}).read_text()
    assert "optimistic" not in text and "chosen on these cases" not in text
    assert f"Not available (file not found: {tmp_path / 'absent.csv'})" in text
    assert "Not available (not given)" in text  # inference and provenance
    assert "Not available (the benchmark JSON has no &#39;rows&#39; list)" in text
    assert len(re.findall(r"<img\b", text)) == 5  # no training curves
    text = write_report(result, tmp_path / "r.html", training_metrics=pd.DataFrame({"epoch": [0, 1]})).read_text()
    assert "Not available (the per-epoch file lacks the column" in text


def test_problems_of_the_scan_and_the_study_note_are_shown(evaluated, tmp_path: Path) -> None:
    _, result = evaluated
    assert "Problems the raw-data scan found" not in write_report(result, tmp_path / "r.html").read_text()
    problem = f"{tmp_path / 'quiz' / 'train' / 'subtype0' / 'quiz_0_001.nii.gz'}: the mask has pancreas but no lesion (label 2)"
    text = html.unescape(write_report(result, tmp_path / "r.html", scan_problems=[problem], display_roots=(tmp_path,)).read_text())
    assert "Problems the raw-data scan found (1)" in text
    assert "<code>quiz/train/subtype0/quiz_0_001.nii.gz</code>: the mask has pancreas but no lesion (label 2)" in text
    assert 'id="study-note"' not in text
    text = write_report(result, tmp_path / "r.html", study_note="the study's headline").read_text()
    assert "What the subtype head reaches on a larger test split of the same phantom: the study&#39;s headline" in text


def test_fmt_and_template_are_packaged(repo: Path) -> None:
    assert fmt(0.91) == "0.910" and fmt(None) == "n/a" and fmt(float("nan")) == "n/a" and fmt(7) == "7"
    assert fmt_ci([0.1, 0.23456]) == "[0.100, 0.235]" and fmt_ci(None) == "n/a"
    package_data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pancreas_multitask"]
    template = (TEMPLATES / TEMPLATE).relative_to(repo / "lib" / "pancreas_multitask")
    assert any(template.match(pattern) for pattern in package_data)


def test_one_class_set_shows_classification_as_not_assessable_and_postprocessing_before_after(tiny_phantom: Path, tmp_path: Path) -> None:
    """Only subtype-1 cases (like the real CT set, all subtype 2): no 'macro-F1 1.00, pass'; pp Dice both ways."""
    cases = [c for c in read_quiz_layout(tiny_phantom / "quiz" / "validation", MANIFEST) + read_quiz_layout(tiny_phantom / "quiz" / "train", MANIFEST) if c.subtype == 1]
    final, raw = tmp_path / "pred", tmp_path / "pred" / "no_postprocessing"
    raw.mkdir(parents=True)
    lines = ["Names,Subtype,prob_subtype0,prob_subtype1,prob_subtype2"]
    for case in cases:
        img = nib.load(str(case.gt_file))
        labels = np.rint(img.get_fdata()).astype(np.uint8)
        noisy = labels.copy()
        noisy[0, 0, 0] = 1  # a stray voxel: what keeping the largest component removes
        nib.save(nib.Nifti1Image(noisy, img.affine), str(raw / case.mask_file))
        nib.save(nib.Nifti1Image(labels, img.affine), str(final / case.mask_file))
        lines.append(f"{case.mask_file},1,0.1,0.8,0.1")
    (final / "subtype_results.csv").write_text("\n".join(lines) + "\n")
    result = evaluate_folder(cases, final, final / "subtype_results.csv", tmp_path / "out", resamples=100, unprocessed_folder=raw,
                             selection_split="validation", evaluated_split="validation")
    summary = result.summary
    assert summary["classification"] is None and "one-class set" in summary["classification_not_assessable"]
    assert summary["targets"]["macro_f1"] == {**summary["targets"]["macro_f1"], "value": None, "verdict": "not assessable"}
    assert "one-class set" in summary["targets"]["macro_f1"]["reason"]
    pp = summary["postprocessing"]
    assert pp["dsc_pancreas"]["with"]["mean"] == 1.0 and pp["dsc_pancreas"]["without"]["mean"] < 1.0
    assert (result.per_case["dsc_pancreas_no_postprocessing"] < 1.0).all()
    text = html.unescape(write_report(result, tmp_path / "report.html").read_text())
    summary_table = section(text, "summary")
    assert "not assessable" in summary_table and "1.000" not in summary_table.split("macro-F1")[1]
    assert "Not assessable: all" in text
    rows = section(text, "postprocessing")
    assert f"{pp['dsc_pancreas']['without']['mean']:.3f}" in rows and "chosen on the <b>validation</b> split" in text


def test_a_benchmark_with_markdown_shows_the_readmes_table(evaluated, tmp_path: Path) -> None:
    _, result = evaluated
    benchmark = tmp_path / "speed.json"
    benchmark.write_text(json.dumps({"rows": [{"setting": "fast", "a": 1, "b": 2, "c": 3}], "date": "2026-11-30", "git_revision": "abc"}))
    benchmark.with_suffix(".md").write_text("Caption with `code`\n\n| setting | s / case |\n| --- | --- |\n| fast | **1.50** |\n\nA note.\n")
    text = write_report(result, tmp_path / "r.html", benchmark=benchmark).read_text()
    part = text.split("<h2>Benchmark</h2>")[1].split("<h2>")[0]
    assert "<th>setting</th><th>s / case</th>" in part and "<td>fast</td><td>1.50</td>" in part  # the Markdown's columns, not the JSON's
    assert "<p>Caption with code</p>" in part and "<p>A note.</p>" in part and "<th>a</th>" not in part


def test_one_class_answers_raise_the_collapse_warning_and_the_chance_flag(evaluated, tiny_phantom: Path, tmp_path: Path) -> None:
    """The heads benchmark's original head answered one subtype for every case; the report must say so on its first screen."""
    root, _ = evaluated
    cases = read_quiz_layout(tiny_phantom / "quiz" / "validation", MANIFEST)
    csv = tmp_path / "one_class.csv"
    csv.write_text("Names,Subtype,prob_subtype0,prob_subtype1,prob_subtype2\n" + "".join(f"{c.mask_file},1,0.2,0.6,0.2\n" for c in cases))
    result = evaluate_folder(cases, root / "pred", csv, tmp_path / "out", resamples=200, selection_split="validation", evaluated_split="test")
    classification = result.summary["classification"]
    assert classification["prediction_histogram"] == {"true": [1, 1, 1], "predicted": [0, 3, 0]}
    assert classification["collapse_warnings"] == ["subtype1 is 3 of the 3 answers (100%, more than 80%)", "subtype0 is never predicted, though 1 case(s) have it",
                                                   "subtype2 is never predicted, though 1 case(s) have it"]
    chance = classification["chance"]
    assert chance["indistinguishable_from_chance"] and chance["permutation_null"]["p95"] == pytest.approx(classification["macro_f1"])  # shuffling one answer changes nothing
    assert chance["constant_answer"]["macro_f1"] == pytest.approx(classification["macro_f1"]) == pytest.approx(0.5 / 3)
    text = html.unescape(write_report(result, tmp_path / "r.html").read_text())
    first_screen = text.split("<h2>Subtype classification</h2>")[0]
    assert "Collapsed subtype answers: subtype1 is 3 of the 3 answers (100%, more than 80%); subtype0 is never predicted" in first_screen
    assert 'id="collapse-warning"' in first_screen and 'id="chance-warning"' in first_screen
    assert "always subtype0: 0.167" in section(text, "summary") and 'alt="prediction histogram"' in text and 'id="chance-line"' in text
    balanced = pd.DataFrame({"subtype_true": [0, 1, 2] * 4, "subtype_pred": pd.array([0, 1, 2, 1] * 3, dtype="Int64")})
    from pancreas_multitask.evaluation.evaluate import classification_summary

    assert classification_summary(balanced, ["a", "b", "c"], 200, 0)["collapse_warnings"] == []  # 6 of 12 answers are b: no collapse


def test_the_chance_note_tells_below_chance_from_indistinguishable() -> None:
    """Answers that rotate the subtypes score far under their own shuffles: 'below chance', not 'cannot be told from chance'."""
    from pancreas_multitask.evaluation.chance import chance_note
    from pancreas_multitask.evaluation.evaluate import classification_summary

    truth = [0, 1, 2] * 12
    summary = lambda pred: classification_summary(pd.DataFrame({"subtype_true": truth, "subtype_pred": pd.array(pred, dtype="Int64")}), ["a", "b", "c"], 300, 0)  # noqa: E731
    swapped = summary([(t + 1) % 3 for t in truth])  # every answer the next subtype: F1 0
    assert swapped["macro_f1_ci95"][1] < swapped["chance"]["permutation_null"]["interval95"][0]
    assert chance_note(swapped).startswith("the macro-F1 is below chance")
    assert chance_note(summary(truth)) is None  # perfect answers
    rng = np.random.default_rng(0)
    noise = summary(rng.integers(0, 3, len(truth)).tolist())
    assert noise["chance"]["indistinguishable_from_chance"] and chance_note(noise).startswith("the macro-F1 cannot be told from chance")
