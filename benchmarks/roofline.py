"""Roofline figures for the CPU inference benchmark: the convolutions' FLOPs a case costs, the rate the network
reaches, and the machine's fp32 peak, theoretical and measured.

* **FLOPs**: torch's own counter (``torch.utils.flop_counter.FlopCounterMode``) over one forward pass of one tile
  on a meta-device copy of the network (no arithmetic is done), convolutions only; times the tiles of nnU-Net's
  sliding window (``compute_steps_for_sliding_window``) and the passes per tile (8 with the mirroring TTA).
  That is the direct-convolution count: an engine that uses Winograd or FFT kernels does fewer multiplications,
  so its *effective* rate can pass the peak (``exceeds_peak`` says when).
* **theoretical peak**: cores x clock x FLOP per cycle and core (32 with AVX2 and FMA: two 8-wide FMA units,
  64 with AVX-512, both assuming two FMA units), the clock from ``/proc/cpuinfo``.
* **measured peak**: the best of a few large fp32 matrix products in torch with the same threads.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

CPUINFO = Path("/proc/cpuinfo")


def conv_flops_per_sample(network: Any, input_shape: Sequence[int]) -> float:
    """FLOPs of the convolutions (transposed ones included) in one forward pass of one (C, Z, Y, X) input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(network).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty((1, *input_shape), device="meta"))
    return float(sum(flops for op, flops in counter.get_flop_counts().get("Global", {}).items() if "convolution" in str(op)))


def tiles_per_case(shape: Sequence[int], patch: Sequence[int], step: float) -> int:
    """Tiles of nnU-Net's sliding window over a preprocessed image of spatial ``shape`` (padded up to the patch)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = [max(s, p) for s, p in zip(shape, patch)]
    return int(np.prod([len(steps) for steps in compute_steps_for_sliding_window(padded, list(patch), step)]))


def flop_per_cycle(flags: set[str]) -> int | None:
    """fp32 FLOP per cycle and core from the CPU's flags (two FMA units assumed), or None without FMA."""
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    return None


def theoretical_peak(cores: int, cpuinfo: str | None = None) -> dict[str, Any]:
    """cores x clock x FLOP/cycle, from ``/proc/cpuinfo`` (None values where it cannot be told, e.g. not Linux)."""
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text() if CPUINFO.is_file() else ""
    clocks = [float(line.split(":")[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    flag_lines = [line.split(":")[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")]
    per_cycle = flop_per_cycle(set(flag_lines[0])) if flag_lines else None
    ghz = float(np.mean(clocks)) / 1000 if clocks else None
    gflops = cores * ghz * per_cycle if ghz and per_cycle else None
    return {"cores": cores, "ghz": ghz, "flop_per_cycle": per_cycle, "gflops": gflops,
            "how": f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle" if gflops else "unknown (no clock or FMA flags in /proc/cpuinfo)"}


def best_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measured_peak(size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of torch's fp32 ``size`` x ``size`` matrix product with torch's threads (2 size^3 FLOPs each)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def rates(flops: float, seconds: float, theoretical: float | None, measured: float) -> dict[str, Any]:
    """GFLOP/s for ``flops`` done in ``seconds``, as shares of both peaks."""
    gflops = flops / seconds / 1e9
    return {"gflop": flops / 1e9, "seconds": seconds, "gflops": gflops,
            "share_of_theoretical_peak": gflops / theoretical if theoretical else None, "share_of_measured_peak": gflops / measured,
            "exceeds_peak": bool(theoretical and gflops > theoretical)}
