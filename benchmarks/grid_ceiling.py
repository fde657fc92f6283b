"""Benchmark: how much Dice a training grid costs before any network is trained (the grid's ceiling).

A network trained on a coarser grid than the image's sees the masks resampled to it, and its prediction is
resampled back to the image for scoring. Even a perfect prediction on that grid loses the boundary the grid
cannot hold. Per real case and target spacing, this takes the **true** mask through the same round trip with
nnU-Net's own functions and settings (``ExperimentPlanner.determine_resampling``: the mask to the grid as
preprocessing resamples it; ``determine_segmentation_softmax_export_fn``: each region's map back to the image as
the export resamples probabilities, then > 0.5) and scores it against the original: the best full-volume Dice that
grid allows, per region (whole pancreas {1, 2}, lesion {2}), with a bootstrap CI over cases.

    python benchmarks/grid_ceiling.py [--real-ct FOLDER] [--spacings 2.5,1.5,1.5 2.0,1.2,1.2 ...]

No training, no network: minutes on a CPU. Writes ``benchmarks/results/grid_ceiling.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACINGS = ("2.5,1.5,1.5", "2.0,1.2,1.2", "2.0,1.0,1.0", "2.0,0.73,0.73")  # realct's grid, two finer ones, the quiz's median
REGIONS = {"pancreas": (1, 2), "lesion": (2,)}


def round_trip(seg: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> dict[str, np.ndarray]:
    """Each region of ``seg`` (z, y, x labels at ``spacing``) after nnU-Net's trip to the ``target`` grid and back."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    _, _, to_grid, to_grid_kwargs = ExperimentPlanner.determine_resampling(None)  # nnU-Net's defaults; they do not read the planner
    back, back_kwargs = ExperimentPlanner.determine_segmentation_softmax_export_fn(None)
    shape = compute_new_shape(seg.shape, spacing, target)
    coarse = to_grid(seg[None].astype(np.float32), shape, spacing, target, **to_grid_kwargs)[0]
    out = {}
    for name, labels in REGIONS.items():
        region = np.isin(coarse, labels).astype(np.float32)
        out[name] = back(region[None], seg.shape, target, spacing, **back_kwargs)[0] > 0.5
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def case_ceiling(mask_file: Path, spacings: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Per target spacing, each region's Dice after the round trip, for one labelled case."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    seg, props = SimpleITKIO().read_seg(str(mask_file))
    seg = np.rint(seg[0]).astype(np.int16)  # the quiz's masks are float
    spacing = [float(s) for s in props["spacing"]]
    truth = {name: np.isin(seg, labels) for name, labels in REGIONS.items()}
    result: dict[str, Any] = {"shape": list(seg.shape), "spacing": spacing, "by_spacing": {}}
    for target in spacings:
        back = round_trip(seg, spacing, target)
        result["by_spacing"][_key(target)] = {name: dice(back[name], truth[name]) for name in REGIONS}
    return result


def _key(spacing: Sequence[float]) -> str:
    return "×".join(f"{s:g}" for s in spacing)


def summarise(cases: dict[str, dict[str, Any]], spacings: Sequence[Sequence[float]], resamples: int = 2000) -> dict[str, Any]:
    from pancreas_multitask.evaluation.metrics import mean_ci

    out = {}
    for target in spacings:
        key, entry = _key(target), {}
        for name in REGIONS:
            values = [c["by_spacing"][key][name] for c in cases.values() if c["by_spacing"][key][name] is not None]
            entry[name] = {"mean": float(np.mean(values)), "ci95": [float(v) for v in mean_ci(values, resamples=resamples, seed=0)],
                           "min": float(np.min(values)), "cases": len(values)}
        out[key] = entry
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"The grid's ceiling on {result['cases']} real CT cases (`{result['data']}`): each true mask to the grid and back with nnU-Net's "
             "resampling (as preprocessing and the export do), scored against itself: the best full-volume Dice a perfect network on that "
             "grid could reach. Mean over cases [95 % bootstrap CI], and the worst case. The cases' own median spacing: "
             f"{_key(result['median_spacing'])} mm.", "",
             "| grid (z × y × x mm) | whole pancreas [95 % CI] | worst | lesion [95 % CI] | worst |", "| --- | --- | --- | --- | --- |"]
    for key, entry in result["summary"].items():
        p, q = entry["pancreas"], entry["lesion"]
        lines.append(f"| {key} | {p['mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] | {p['min']:.3f} | "
                     f"{q['mean']:.3f} [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}] | {q['min']:.3f} |")
    return "\n".join(lines) + "\n"


def labelled_cases(root: Path) -> list[tuple[str, Path]]:
    """``(case, mask)`` of every labelled case of the quiz layout under ``root`` (train and validation)."""
    masks = sorted(p for split in ("train", "validation") for p in (root / split).glob("subtype*/quiz_*.nii.gz") if not p.name.endswith("_0000.nii.gz"))
    if not masks:
        raise FileNotFoundError(f"{root}: no labelled quiz cases (train|validation/subtypeK/quiz_K_NNN.nii.gz)")
    return [(p.name.split(".")[0], p) for p in masks]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-ct", type=Path, help="the real CT in the quiz layout (default: the realct profile's raw folder in data_manifest.yaml)")
    parser.add_argument("--spacings", nargs="+", default=list(DEFAULT_SPACINGS), help="z,y,x in mm")
    parser.add_argument("--cases", type=int, default=0, help="the first N cases (0: all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "grid_ceiling.json")
    args = parser.parse_args(argv)

    from pancreas_multitask.io import write_benchmark
    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.runtime import git_revision, library_versions

    args.real_ct = args.real_ct or load_manifest(REPO / "data_manifest.yaml").paths("realct").raw
    spacings = [[float(v) for v in s.split(",")] for s in args.spacings]
    found = labelled_cases(args.real_ct)[: args.cases or None]
    cases = {}
    for case, mask in found:
        cases[case] = case_ceiling(mask, spacings)
        print(case, {k: {r: None if v is None else round(v, 3) for r, v in d.items()} for k, d in cases[case]["by_spacing"].items()}, flush=True)
    result = {"benchmark": "grid_ceiling", "data": args.real_ct.name, "cases": len(cases),
              "median_spacing": [float(v) for v in np.median([c["spacing"] for c in cases.values()], axis=0)],
              "spacings": spacings, "summary": summarise(cases, spacings), "per_case": cases,
              "git_revision": git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"), "versions": library_versions()}
    write_benchmark(args.out, result, markdown(result))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    main()
