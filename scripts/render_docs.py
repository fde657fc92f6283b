"""Render the README's and the docs' numbers from the committed artefacts in ``benchmarks/results/``.

    python scripts/render_docs.py           # rewrite every block
    python scripts/render_docs.py --check   # exit 1, naming the blocks, when a file differs from what would be rendered

A block is the text between ``<!-- render:KIND ARG ... -->`` and ``<!-- /render:KIND -->`` in ``README.md`` or
``docs/*.md``; everything between the two markers is generated. The kinds:

* ``targets RUN SPLIT``: a published run's targets with CI, verdict and chance line (``runs/RUN/evaluation/SPLIT/metrics.json``);
* ``details RUN SPLIT``: the same split's segmentation, detection, classification and calibration details;
* ``times RUN``: the run's revision, date and seconds per notebook (``run.json``);
* ``train RUN``: the training record (``train.json``): which checkpoint, chosen where, with what;
* ``benchmark NAME``: ``benchmarks/results/NAME.md`` as its script wrote it, with the date and revision from ``NAME.json``;
* ``heads-chance``: the chance line and the answers per subtype of every head in ``classification_heads_cpu.json``;
* ``learnability [NAME]``: the learnability study's headline (``evaluation.learnability.headline``) from ``NAME.json``;
* ``real-ct [NAME]``, ``real-ct-curve [NAME]``: the head's effect on real CT with seeds, and the real-CT learning curve (``benchmarks/real_ct.py``);
* ``profiles demo=RUN realct=RUN``: the profiles, their cases (from their parameters or the run's records) and the quoted runs' time.

A run is published with ``scripts/publish_run.py``; ``tests/test_docs.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
RESULTS = REPO / "benchmarks" / "results"
RUNS = RESULTS / "runs"
BLOCK = re.compile(r"(<!-- render:(?P<kind>[\w-]+)(?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /render:(?P=kind) -->)", re.S)


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such artefact (publish the run with scripts/publish_run.py, or run the benchmark)")
    return json.loads(path.read_text())


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: list[float] | None, digits: int = 3) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s" if seconds >= 60 else f"{seconds:.0f} s"


def _run(run: str) -> tuple[dict, Path]:
    folder = RUNS / run
    return _json(folder / "run.json"), folder


def _split_line(run: str, split: str, metrics: dict) -> str:
    record, _ = _run(run)
    splits = metrics["splits"]
    chose = ("the cases it was trained on" if splits["evaluated_is_training"] else "the same cases: optimistic" if splits["evaluated_is_selection"]
             else "cases that chose nothing")
    return (f"Run `{run}` (profile `{record['profile']}`, revision `{record['git_revision'][:12]}`), {split} split, "
            f"{metrics['n_ground_truth_cases']} cases ({chose}); checkpoint, postprocessing and temperature chosen on: {splits['selection']}.")


def render_targets(run: str, split: str) -> str:
    from pancreas_multitask.evaluation.chance import chance_note, describe

    metrics = _json(RUNS / run / "evaluation" / split / "metrics.json")
    classification = metrics["classification"]
    lines = [_split_line(run, split, metrics), "",
             "| metric | value | 95 % CI | cases | target | verdict | chance line |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, t in metrics["targets"].items():
        value = _num(t["value"]) + (f" ({classification['f1_over']})" if key == "macro_f1" and classification else "")
        chance = describe(classification["chance"], classification["class_names"]) if key == "macro_f1" and classification else "—"
        why = f" ({t['reason']})" if t["verdict"] == "undecided" and "interval contains" not in t["reason"] else ""
        lines.append(f"| {t['label']} | {value} | {_ci(t['ci95'])} | {t['n']} | ≥ {t['threshold']:.2f} | **{t['verdict']}**{why} | {chance} |")
    notes = []
    if classification:
        if note := chance_note(classification):
            notes.append(note)
        notes += [f"collapsed answers: {w}" for w in classification["collapse_warnings"]]
    elif metrics.get("classification_not_assessable"):
        notes.append(f"classification not assessable: {metrics['classification_not_assessable']}")
    return "\n".join(lines + ([""] + [f"* {n}." for n in notes] if notes else [])) + "\n"


def render_details(run: str, split: str) -> str:
    metrics = _json(RUNS / run / "evaluation" / split / "metrics.json")
    seg, surface, detection = metrics["segmentation"], metrics["surface"], metrics["lesion_detection"]
    lines = [f"Run `{run}`, {split} split, {metrics['n_ground_truth_cases']} cases, mean [95 % CI]:", "",
             "| structure | DSC | median DSC | NSD at 2 mm | HD95, mm |", "| --- | --- | --- | --- | --- |"]
    for name, label in (("pancreas", "whole pancreas"), ("lesion", "lesion")):
        d, n, h = seg[f"dsc_{name}"], surface[f"nsd_{name}"], surface[f"hd95_{name}"]
        lines.append(f"| {label} | {_num(d['mean'])} {_ci(d['ci95'])} | {_num(d['median'])} | {_num(n['mean'])} {_ci(n['ci95'])} | {_num(h['mean'], 1)} {_ci(h['ci95'], 1)} |")
    lines.append("")
    if detection["rate"] is not None:
        lines.append(f"* Lesions found (lesion-wise, Dice ≥ {detection['min_dice']:g} with the predicted lesion touching them): {detection['detected']} of {detection['n']} cases, "
                     f"{_num(detection['rate'])} {_ci(detection['ci95'])}; {detection['components_detected']} of {detection['components']} true lesion components. "
                     f"False-positive lesion components: {_num(detection['fp_components_per_case'], 2)} {_ci(detection['fp_components_ci95'], 2)} per case.")
    pp = metrics.get("postprocessing")
    if pp:
        lines.append(f"* nnU-Net's postprocessing (chosen on {pp['chosen_on']}): whole pancreas {_num(pp['dsc_pancreas']['without']['mean'])} → "
                     f"{_num(pp['dsc_pancreas']['with']['mean'])}, lesion {_num(pp['dsc_lesion']['without']['mean'])} → {_num(pp['dsc_lesion']['with']['mean'])} (mean DSC without → with).")
    classification = metrics["classification"]
    if classification:
        hist = classification["prediction_histogram"]
        names = classification["class_names"]
        lines.append(f"* Subtype: accuracy {_num(classification['accuracy'])}, balanced accuracy {_num(classification['balanced_accuracy'])} {_ci(classification['balanced_accuracy_ci95'])}, "
                     f"MCC {_num(classification['mcc'])} {_ci(classification['mcc_ci95'])}; cases per subtype true / predicted: "
                     + ", ".join(f"{n} {t}/{p}" for n, t, p in zip(names, hist["true"], hist["predicted"])) + ".")
        calibration = classification.get("calibration") or {}
        if "uncalibrated" in calibration:
            lines.append(f"* Calibration: ECE {_num(calibration['uncalibrated']['ece'])} {_ci(calibration['uncalibrated']['ece_ci95'])} before temperature scaling, "
                         f"{_num(calibration['calibrated']['ece'])} {_ci(calibration['calibrated']['ece_ci95'])} after.")
    return "\n".join(lines) + "\n"


def render_times(run: str) -> str:
    record, _ = _run(run)
    total = sum(n["seconds"] for n in record["notebooks"])
    cells = " | ".join(f"{n['notebook'].removesuffix('.ipynb')} {_minutes(n['seconds'])}" for n in record["notebooks"])
    return (f"Run `{run}`: profile `{record['profile']}`, revision `{record['git_revision'][:12]}`, started {record['started']}, status {record['status']}, "
            f"**{_minutes(total)}** for the notebooks (the first run's installation not included): {cells}.\n")


TRAIN_KEYS = ("selected checkpoint", "selected at epoch", "selected on", "case-level macro-F1 (val) with its 95 % CI", "chance line (the same cases)",
              "subtype answers (val): true / predicted per subtype", "pseudo-Dice whole_pancreas (val patches)", "pseudo-Dice lesion (val patches)",
              "full-volume Dice whole_pancreas (val, nnU-Net)", "full-volume Dice lesion (val, nnU-Net)",
              "postprocessing (nnU-Net, chosen on the selection split)", "subtype temperature (fitted on the selection split)",
              "training pass vs deployed estimator (same subtype, val)", "stopped because")


def render_train(run: str) -> str:
    record = _json(RUNS / run / "train.json")
    lines = [f"`train.json` of run `{run}` (every number here is on the selection split, which chose the checkpoint: optimistic):", "",
             "| | value |", "| --- | --- |"]
    lines += [f"| {key} | {record[key]} |" for key in TRAIN_KEYS if key in record]
    return "\n".join(lines) + "\n"


def _latest_run(data: dict) -> dict:
    """A resumable benchmark stamps each run: the latest by date (a run may be taken over from another result)."""
    return max(data.get("runs") or [{}], key=lambda run: run.get("date") or "")


def render_benchmark(name: str) -> str:
    data = _json(RESULTS / f"{name}.json")
    table = (RESULTS / f"{name}.md").read_text().strip()
    stamped = data if data.get("date") else _latest_run(data)
    when = f"{stamped['date']}, revision `{str(stamped.get('git_revision', 'not recorded'))[:12]}`" if stamped.get("date") else "date and revision not recorded"
    return f"`benchmarks/results/{name}.json` ({when}):\n\n{table}\n"


def render_heads_chance() -> str:
    import numpy as np

    from pancreas_multitask.evaluation.chance import collapse_warnings, constant_answer
    from pancreas_multitask.evaluation.metrics import macro_f1_batch
    from pancreas_multitask.manifest import load_manifest

    data = _json(RESULTS / "classification_heads_cpu.json")
    names = list(load_manifest(REPO / "data_manifest.yaml").subtypes)
    truth = np.asarray(data["test_labels"])
    k = len(names)
    constant = constant_answer(truth, k)
    order = np.random.default_rng(0).permuted(np.tile(np.arange(len(truth)), (2000, 1)), axis=1)  # one shuffle of the cases for every seed
    lines = [f"Chance line on the same {len(truth)} test cases (true subtypes {np.bincount(truth, minlength=k).tolist()}): always {names[constant['subtype']]} scores "
             f"{constant['macro_f1']:.3f} {_ci(constant['ci95'])}. Per head, its answers shuffled over the cases (the same 2000 shuffles for every seed, "
             f"macro-F1 averaged over the seeds), and how often it names each subtype:", "",
             "| variant | test macro-F1 | shuffled: 95th percentile | answers per subtype, per seed | collapsed (one subtype > 80 % of the answers, or one of the truth never named) |",
             "| --- | --- | --- | --- | --- |"]
    for row in data["rows"]:
        runs = [r for r in data["runs"] if r["variant"] == row["variant"]]
        if not runs:
            continue
        answers = [np.asarray(r["test_probabilities"]).argmax(axis=1) for r in runs]
        shuffled = np.mean([macro_f1_batch(np.broadcast_to(truth, order.shape), a[order], k) for a in answers], axis=0)
        counts = [np.bincount(a, minlength=k).tolist() for a in answers]
        collapsed = sum(bool(collapse_warnings(truth, a, names)) for a in answers)
        lines.append(f"| {row['variant']} | {row['macro_f1']:.3f} | {np.percentile(shuffled, 95):.3f} | {'; '.join(str(c) for c in counts)} | "
                     f"{collapsed} of {len(counts)} seeds |")
    return "\n".join(lines) + "\n"


def render_profiles(**runs: str) -> str:
    from pancreas_multitask.profiles import load_parameters

    def phantom_cases(profile: str) -> str:
        phantom = load_parameters(REPO / "notebooks" / "params", profile)["phantom"]
        return f"synthetic phantom, {sum(phantom['train'])} / {sum(phantom['validation'])} / {phantom['test']} cases"

    def measured(profile: str) -> str:
        if profile not in runs:
            return "—"
        record, _ = _run(runs[profile])
        return f"{_minutes(sum(n['seconds'] for n in record['notebooks']))} (run `{runs[profile]}`)"

    realct = _json(RUNS / runs["realct"] / "prepare.json") if "realct" in runs else {}
    counts = realct.get("cases") or {}
    real = f"real CT, {counts.get('train', '?')} / {counts.get('validation', '?')} / {counts.get('test', '?')} cases (subtype 2 only)" if counts else "real CT (subtype 2 only)"
    rows = [("`demo` (default)", phantom_cases("demo"), "CPU", "the demo", measured("demo")),
            ("`smoke`", phantom_cases("smoke"), "CPU", "CI and the notebook tests", "—"),
            ("`realct`", real, "CPU", "real segmentation numbers and timing ([real data](docs/real_data.md))", measured("realct")),
            ("`local`", "your quiz data (`$PANCREAS_QUIZ_DIR`)", "CUDA if present", "a GPU server", "—"),
            ("`colab`", "your quiz data on Google Drive", "Colab GPU", "Colab", "—")]
    lines = ["| profile | data (train / validation / test) | device | for | notebooks took (2 CPU cores) |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {p} | {d} | {dev} | {what} | {t} |" for p, d, dev, what, t in rows]
    return "\n".join(lines) + "\n"


def render_learnability(name: str = "classification_learnability_cpu") -> str:
    """The learnability study's headline (``learnability.headline``) from ``benchmarks/results/NAME.json``."""
    from pancreas_multitask.evaluation.learnability import headline

    result = _json(RESULTS / f"{name}.json")
    text = headline(result) or "No network run of the study has finished yet."
    return f"`benchmarks/results/{name}.json` ({result['date']}, revision `{result['git_revision'][:12]}`): {text}\n"


def render_speed(name: str = "inference_speed_cpu") -> str:
    """The CPU speed headline from the inference benchmark: ``fast`` per engine against nnU-Net on the folder, the
    roofline of one forward of ``fast``'s batch, and the full ResEncM plan on one quiz-sized case."""
    result = _json(RESULTS / f"{name}.json")
    rows = {row["setting"]: row for row in result["rows"]}
    base = rows["nnunet_defaults"]
    lines = [f"`benchmarks/results/{name}.json` ({result['date']}, revision `{result['git_revision'][:12]}`), {result['device_name']}, "
             f"{result['cases']} real CT images of `{result['profile']}`, every row with step 0.5 and all 8 passes:", ""]
    for setting, engine in (("fast", "torch"), ("fast_openvino", "OpenVINO")):
        if setting in rows:
            row = rows[setting]
            worst = row["min_dice_vs_nnunet"]
            lines.append(f"* `fast` in {engine}: {row['seconds_per_case']:.2f} s per case against {base['seconds_per_case']:.2f} s for nnU-Net's "
                         f"defaults, **{row['speedup']:.1f}×**; worst-case Dice against nnU-Net's masks {worst['pancreas']:.4f} (pancreas) / {worst['lesion']:.4f} (lesion).")
    roof = result.get("roofline")
    if roof:
        peak = roof["theoretical_peak"]["gflops"]
        forward = ", ".join(f"{engine} {r['gflops']:.0f} GFLOP/s ({_share(r['share_of_theoretical_peak'])} of the theoretical fp32 peak"
                            f"{'' if peak is None else f' of {peak:.0f}'}, {_share(r['share_of_measured_peak'])} of the measured {roof['measured_peak_gflops']:.0f})"
                            for engine, r in roof["forward"].items())
        lines.append(f"* One forward pass of `fast`'s batch ({'×'.join(map(str, roof['fast_batch']))}): {forward}.")
    quiz = result.get("quiz_case")
    if quiz:
        q = {row["setting"]: row for row in quiz["rows"]}
        cached = next(row for name, row in q.items() if "from the cache" in name)
        first = next(row for name, row in q.items() if "first case" in name)
        torch_row = q["fast (torch)"]
        lines.append(f"* A model with nnU-Net's full ResEncM plan (what `local` trains on a GPU) predicts one quiz-sized case "
                     f"(`{quiz['case']['id']}`, {quiz['case']['gflop'] / 1000:.1f} TFLOP) on this CPU with all 8 passes in "
                     f"**{cached['seconds']:.0f} s** (`fast`, OpenVINO; {first['seconds']:.0f} s for the first case, which converts and compiles; "
                     f"{torch_row['seconds']:.0f} s in torch), against **{q['nnunet_defaults']['seconds']:.0f} s** for nnU-Net's defaults"
                     + (f" (measured {quiz['date']}, revision `{quiz['git_revision'][:12]}`)." if "date" in quiz else "."))
    return "\n".join(lines) + "\n"


def _benchmark_script(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import importlib

    return importlib.import_module(name)


def render_real_ct(name: str = "real_ct_cpu") -> str:
    """The head's effect on the real-CT segmentation, with seeds, as its intervals allow (``real_ct.headline``)."""
    result = _json(RESULTS / f"{name}.json")
    text = _benchmark_script("real_ct").headline(result) if "summary" in result else ""
    if not text:
        raise ValueError(f"{RESULTS / name}.json has no paired seeded runs yet: run benchmarks/real_ct.py --seeds 0 1 2")
    return f"`benchmarks/results/{name}.json` ({result['runs'][-1]['date']}, revision `{result['runs'][-1]['git_revision'][:12]}`): {text}\n"


def render_real_ct_curve(name: str = "real_ct_learning_curve_cpu") -> str:
    """What a CPU user gets for the training minutes of each point of the real-CT learning curve (``real_ct.curve_headline``)."""
    result = _json(RESULTS / f"{name}.json")
    last = _latest_run(result)
    return f"`benchmarks/results/{name}.json` ({last['date']}, revision `{last['git_revision'][:12]}`): {_benchmark_script('real_ct').curve_headline(result)}\n"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


RENDERERS: dict[str, Callable[..., str]] = {
    "targets": render_targets, "details": render_details, "times": render_times, "train": render_train,
    "benchmark": render_benchmark, "heads-chance": render_heads_chance, "profiles": render_profiles, "learnability": render_learnability,
    "speed": render_speed, "real-ct": render_real_ct, "real-ct-curve": render_real_ct_curve,
}


def render_block(kind: str, args: str) -> str:
    if kind not in RENDERERS:
        raise ValueError(f"unknown block kind {kind!r}; known: {sorted(RENDERERS)}")
    positional = [a for a in args.split() if "=" not in a]
    keywords = dict(a.split("=", 1) for a in args.split() if "=" in a)
    return RENDERERS[kind](*positional, **keywords)


def render_text(text: str, where: str = "") -> str:
    """``text`` with every block rendered; a marker without its partner (a typo, CRLF line ends) is an error, not skipped."""
    opened = len(re.findall(r"^<!-- render:", text, re.M))  # markers start a line (prose may quote them)
    if opened != len(BLOCK.findall(text)) or opened != len(re.findall(r"^<!-- /render:", text, re.M)):
        raise ValueError(f"{where}: {opened} opening render marker(s) but {len(BLOCK.findall(text))} complete block(s); every "
                         "'<!-- render:KIND ... -->' line needs its '<!-- /render:KIND -->' on a later line (LF line ends)")
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("kind"), m.group("args")) + m.group(5), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a document differs from what would be rendered")
    args = parser.parse_args(argv)
    drift = []
    for path in documents(REPO):
        text = path.read_text()
        rendered = render_text(text, path.name)
        if rendered == text:
            continue
        if args.check:
            drift.append(path)
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), rendered.splitlines(True), path.name, "rendered", n=1))
        else:
            path.write_text(rendered)
            print(f"rendered {path.name}")
    if drift:
        print(f"\n{len(drift)} document(s) differ from their artefacts: {', '.join(p.name for p in drift)}; run python scripts/render_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
