"""Benchmark: training cost of nnUNetTrainerMultitask against plain nnUNetTrainer, with a profile's settings.

Both trainers are built from their classes on the same plans and preprocessed data (run 01_prepare
first); the multitask trainer gets the profile's settings (pooling, head, loss schedule, case-level
validation every ``case_val_every`` epochs), and nnUNetTrainer the same iterations per epoch.

- **Per iteration:** ``train_step`` alone, in alternating blocks so that machine noise hits both.
- **Per epoch:** each trainer's own ``run_training`` for ``--epochs`` epochs, timed from nnU-Net's epoch
  timestamps: training, validation iterations, logging and checkpoints, and the multitask trainer's
  case-level validation, whose cost is added at the rate of the profile's whole schedule.
- **What bounds the overhead:** one case-level pass timed on its own, with the network's share of it, the pass the
  5 % target would allow, and OpenVINO (the weights as inputs, since they change between passes) on the same tiles.

    python benchmarks/train_speed.py --profile demo

Writes ``benchmarks/results/train_speed_<device>.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerMultitask")


def _trainers(pre: Path, plans: str, device: str, settings, patch_size=None, batch_size=None) -> dict[str, Any]:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pancreas_multitask.training.train import build_trainer
    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask

    trainers = {}
    for name, cls in zip(TRAINERS, (nnUNetTrainer, nnUNetTrainerMultitask)):
        trainer = build_trainer(pre, plans, 0, device, trainer_class=cls)
        if patch_size:
            trainer.configuration_manager.configuration["patch_size"] = list(patch_size)
        if batch_size:
            trainer.configuration_manager.configuration["batch_size"] = batch_size
            trainer.batch_size = batch_size
        if isinstance(trainer, nnUNetTrainerMultitask):
            trainer.configure(settings)
        else:  # the same amount of work per epoch as the multitask trainer
            trainer.num_epochs = settings.num_epochs
            trainer.num_iterations_per_epoch = settings.iterations_per_epoch
            trainer.num_val_iterations_per_epoch = settings.val_iterations_per_epoch
            trainer.save_every = settings.save_every
        trainers[name] = trainer
    return trainers


def per_iteration(trainers: dict[str, Any], device: str, iterations: int, blocks: int) -> dict[str, list[float]]:
    """Seconds per ``train_step`` (data loading not timed), alternating blocks of ``iterations`` per trainer."""
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for trainer in trainers.values():
        trainer.on_train_start()
        trainer.on_train_epoch_start()
        for _ in range(3):  # warm-up: cuDNN autotuning, allocator
            trainer.train_step(next(trainer.dataloader_train))
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    peaks: dict[str, float] = {}
    for _ in range(blocks):
        for name, trainer in trainers.items():
            batches = [next(trainer.dataloader_train) for _ in range(iterations)]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            for batch in batches:
                trainer.train_step(batch)
            sync()
            seconds[name].append((time.perf_counter() - start) / iterations)
            if device == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    for trainer in trainers.values():
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            loader._finish()
    return {"seconds": seconds, "peak_gpu_mib": peaks}


def per_epoch(trainers: dict[str, Any]) -> dict[str, list[float]]:
    """Each trainer's ``run_training``; seconds of every epoch from nnU-Net's epoch timestamps."""
    result = {}
    for name, trainer in trainers.items():
        trainer.run_training()
        log = trainer.logger.local_logger.my_fantastic_logging
        result[name] = [end - start for start, end in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
    return result


def case_validation_epochs(num_epochs: int, every: int) -> list[int]:
    """The epochs in which the multitask trainer classifies the validation cases (every ``every``-th and the last)."""
    return [e for e in range(num_epochs) if e % every == 0 or e == num_epochs - 1]


def case_pass_breakdown(trainer: Any, openvino: bool = True) -> dict[str, Any]:
    """One case-level pass of ``trainer`` (its network as it is), timed whole and in the network's forward passes.

    The network's share says what bounds the pass: its tiles are already the fewest its estimator allows
    (``case_val_step``, one pass per tile, no flips). With ``openvino``, the engine that could make the forward cheaper
    is measured on the same tiles: since the weights change between passes, it has to take them as inputs
    (``weights_as_inputs``), converted once per training, against torch's forward of the same batches.
    """
    import torch

    network = trainer.multitask_network()
    starts: list[float] = []
    spans: list[tuple[float, int]] = []
    batches: list[torch.Tensor] = []

    def started(module: Any, args: tuple) -> None:  # a pre-hook that returns something replaces the inputs
        batches.append(args[0].detach().clone())
        starts.append(time.perf_counter())

    def ended(module: Any, args: tuple, output: torch.Tensor) -> None:
        spans.append((time.perf_counter() - starts[-1], output.shape[0]))

    hooks = [network.encoder.register_forward_pre_hook(started), network.head.register_forward_hook(ended)]
    try:
        start = time.perf_counter()
        trainer.case_level_validation()
        seconds = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    network_seconds = sum(t for t, _ in spans)
    result = {"cases": len(trainer._case_keys[1]), "tiles": sum(n for _, n in spans), "forwards": len(spans), "seconds": seconds,
              "network_seconds": network_seconds, "network_share": network_seconds / seconds,
              "step": trainer.validation_mode().tile_step_size, "mirroring": trainer.validation_mode().use_mirroring}
    if openvino:
        result["openvino_weights_as_inputs"] = weights_as_inputs(trainer, batches)
    return result


def weights_as_inputs(trainer: Any, batches: list) -> dict[str, Any]:
    """OpenVINO's forward with the weights as inputs (one conversion for every later pass of a training) against torch eager,
    on ``batches``: seconds to export and convert, to compile, and per forward; the largest output difference."""
    import numpy as np
    import torch

    from pancreas_multitask.inference.engines import _BothOutputs, import_openvino

    network = trainer.multitask_network()
    was_training = network.training
    network.eval()
    trainer.set_deep_supervision_enabled(False)
    both = _BothOutputs(network)
    names = [name for name, _ in both.named_parameters()]

    class Functional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.both = both

        def forward(self, x, *weights):
            return torch.func.functional_call(self.both, dict(zip(names, weights)), (x,))

    weights = [p.detach() for p in both.parameters()]
    try:
        ov = import_openvino()
        start = time.perf_counter()
        with torch.no_grad():
            model = ov.convert_model(torch.export.export(Functional(), (batches[0], *weights)))
        converted = time.perf_counter()
        model.reshape({model.inputs[0]: list(batches[0].shape), **{i: list(w.shape) for i, w in zip(model.inputs[1:], weights)}})
        request = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        compiled = time.perf_counter()
        feeds = [{0: b.numpy(), **{i + 1: w.numpy() for i, w in enumerate(weights)}} for b in batches if b.shape == batches[0].shape]
        same = [b for b in batches if b.shape == batches[0].shape]
        with torch.inference_mode():
            start_torch = time.perf_counter()
            expected = [network.forward_with_class(b) for b in same]
            torch_seconds = (time.perf_counter() - start_torch) / len(same)
        start_ov = time.perf_counter()
        got = [request.infer(f) for f in feeds]
        ov_seconds = (time.perf_counter() - start_ov) / len(same)
        difference = max(float(np.abs(g[k] - e[k].numpy()).max()) for g, e in zip(got, expected) for k in (0, 1))
        return {"openvino": ov.__version__ if hasattr(ov, "__version__") else "", "forwards": len(same), "batch_shape": list(batches[0].shape),
                "seconds_export_and_convert": converted - start, "seconds_compile": compiled - converted,
                "seconds_per_forward": {"torch": torch_seconds, "openvino": ov_seconds}, "max_output_difference": difference}
    except Exception as exc:  # a benchmark of an alternative: say why it could not be measured
        return {"failure": f"{type(exc).__name__}: {exc}"}
    finally:
        trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
        network.train(was_training)


TARGET_OVERHEAD = 0.05  # issue 24: the multitask epoch at most 5 % dearer than nnU-Net's


def overhead_bound(plain_epoch: float, multitask_epoch: float | None, rate: float, profile_epochs: int, case_pass: dict[str, Any]) -> dict[str, Any] | None:
    """What the per-epoch overhead target asks of the case-level pass, and what OpenVINO (weights as inputs) would give.

    ``multitask_epoch``: the multitask epoch without the pass; ``rate``: passes per epoch over the profile's
    ``profile_epochs``. OpenVINO's conversion is paid once per training, spread over those epochs.
    """
    if multitask_epoch is None or rate <= 0:
        return None
    allowed = ((1 + TARGET_OVERHEAD) * plain_epoch - multitask_epoch) / rate
    bound: dict[str, Any] = {"target": TARGET_OVERHEAD, "pass_seconds_allowed": allowed, "pass_seconds": case_pass["seconds"],
                             "speedup_needed": case_pass["seconds"] / allowed if allowed > 0 else None,
                             "overhead_measured_pass": (multitask_epoch + rate * case_pass["seconds"]) / plain_epoch - 1,
                             # the pass against the multitask trainer's own epoch: what it costs whatever the two trainers' epochs do
                             "share_of_own_epoch": rate * case_pass["seconds"] / multitask_epoch}
    alternative = case_pass.get("openvino_weights_as_inputs", {})
    if "seconds_per_forward" in alternative:
        forward = alternative["seconds_per_forward"]
        network = case_pass["network_seconds"] * forward["openvino"] / forward["torch"]
        projected = case_pass["seconds"] - case_pass["network_seconds"] + network
        one_off = alternative["seconds_export_and_convert"] + alternative["seconds_compile"]
        bound["openvino"] = {"pass_seconds": projected, "one_off_seconds": one_off,
                             "overhead": (multitask_epoch + rate * projected + one_off / profile_epochs) / plain_epoch - 1}
    return bound


def measure(pre: Path, plans: str, device: str, settings, iterations: int = 10, blocks: int = 3, patch_size=None, batch_size=None,
            profile_epochs: int | None = None) -> dict[str, Any]:
    """Per-iteration and per-epoch seconds of both trainers; the JSON-ready result.

    The multitask trainer's case-level validation runs in some epochs only; its cost is the mean of
    those epochs minus the mean of the others, and the per-epoch time is given at the rate of the
    profile's whole schedule (``profile_epochs``, default the timed epochs). The end-of-training estimator
    check is not an epoch cost and is left out.
    """
    settings = replace(settings, deployed_check_cases=0)
    timed = per_iteration(_trainers(pre, plans, device, settings, patch_size, batch_size), device, iterations, blocks)
    epoch_trainers = _trainers(pre, plans, device, settings, patch_size, batch_size)
    config = epoch_trainers["nnUNetTrainerMultitask"].configuration_manager
    epochs = per_epoch(epoch_trainers)
    breakdown = case_pass_breakdown(epoch_trainers["nnUNetTrainerMultitask"])
    iteration = {name: statistics.median(v) for name, v in timed["seconds"].items()}
    multitask = epochs["nnUNetTrainerMultitask"]
    validating = set(case_validation_epochs(len(multitask), settings.case_val_every))
    with_validation = statistics.mean(multitask[e] for e in validating)
    without = [t for e, t in enumerate(multitask) if e not in validating]
    profile_epochs = profile_epochs or len(multitask)
    rate = len(case_validation_epochs(profile_epochs, settings.case_val_every)) / profile_epochs
    case_validation = with_validation - statistics.mean(without) if without else None
    at_rate = statistics.mean(without) + case_validation * rate if without else with_validation
    epoch = {"nnUNetTrainer": statistics.mean(epochs["nnUNetTrainer"]), "nnUNetTrainerMultitask": at_rate}
    return {
        "plans": plans, "patch_size": list(config.patch_size), "batch_size": config.batch_size,
        "features_per_stage": list(config.network_arch_init_kwargs["features_per_stage"]),
        "settings": {"pooling": settings.head.pooling, "iterations_per_epoch": settings.iterations_per_epoch,
                     "val_iterations_per_epoch": settings.val_iterations_per_epoch, "case_val_every": settings.case_val_every, "epochs": settings.num_epochs},
        "seconds_per_iteration": iteration, "iteration_blocks": timed["seconds"], "peak_gpu_mib": timed["peak_gpu_mib"] or None,
        "seconds_per_epoch": epoch, "epoch_seconds": epochs, "profile_epochs": profile_epochs,
        "multitask_epoch_without_case_validation": statistics.mean(without) if without else None,
        "case_validation_seconds": case_validation, "case_validations_per_epoch": rate,
        "overhead_per_iteration": iteration["nnUNetTrainerMultitask"] / iteration["nnUNetTrainer"] - 1.0,
        "overhead_per_epoch": epoch["nnUNetTrainerMultitask"] / epoch["nnUNetTrainer"] - 1.0,
        "case_pass": breakdown, "bound": overhead_bound(epoch["nnUNetTrainer"], statistics.mean(without) if without else None, rate, profile_epochs, breakdown),
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"{result['device']}, plans `{result['plans']}`, patch {'×'.join(map(str, result['patch_size']))}, batch {result['batch_size']}; "
        f"profile `{result['profile']}`: {s['pooling']} pooling, {s['iterations_per_epoch']} + {s['val_iterations_per_epoch']} iterations per epoch, "
        f"case-level validation every {s['case_val_every']} epoch(s), {s['epochs']} epochs timed; revision {result['git_revision']}, {result['date']}",
        "",
        "| trainer | s / iteration | s / epoch (validation included, at the profile's rate) |" + (" peak GPU MiB |" if result.get("peak_gpu_mib") else ""),
        "| --- | --- | --- |" + (" --- |" if result.get("peak_gpu_mib") else ""),
    ]
    for name in TRAINERS:
        peak = f" {result['peak_gpu_mib'][name]:.0f} |" if result.get("peak_gpu_mib") else ""
        lines.append(f"| {name} | {result['seconds_per_iteration'][name]:.3f} | {result['seconds_per_epoch'][name]:.2f} |{peak}")
    lines.append(f"| multitask overhead | {100 * result['overhead_per_iteration']:+.1f} % | {100 * result['overhead_per_epoch']:+.1f} % |" + (" |" if result.get("peak_gpu_mib") else ""))
    if result.get("case_validation_seconds") is not None:
        lines += ["", f"The multitask epoch is {result['multitask_epoch_without_case_validation']:.2f} s without the case-level validation, which costs "
                      f"{result['case_validation_seconds']:.1f} s each time; over the profile's {result['profile_epochs']} epochs it runs "
                      f"{result['case_validations_per_epoch']:.3f} times per epoch, which the per-epoch column includes."]
    lines += bound_markdown(result)
    return "\n".join(lines) + "\n"


def bound_markdown(result: dict[str, Any]) -> list[str]:
    """What bounds the overhead: the case-level pass, timed whole and in the network, and the alternative engine."""
    case, bound = result.get("case_pass"), result.get("bound")
    if not case or not bound:
        return []
    lines = ["", f"**What bounds it.** One case-level pass timed on its own: {case['cases']} validation cases, {case['tiles']} tiles in "
                 f"{case['forwards']} forwards (step {case['step']:g}, {'every flip' if case['mirroring'] else 'no flips'}: the fewest tiles its estimator allows), {case['seconds']:.1f} s, "
                 f"{100 * case['network_share']:.0f} % of it in the network's forward (torch eager, {1000 * case['network_seconds'] / case['tiles']:.0f} ms a tile). "
                 f"At the profile's rate it adds {100 * bound['share_of_own_epoch']:.1f} % to the multitask trainer's own epoch. "
                 f"Against nnU-Net's epoch, at that cost the overhead is {100 * bound['overhead_measured_pass']:+.1f} %; {100 * bound['target']:.0f} % allows a pass of "
                 f"{bound['pass_seconds_allowed']:.1f} s" + (", which no pass can reach." if not bound.get("speedup_needed") else
                                                       f": {bound['speedup_needed']:.1f}× faster." if bound["speedup_needed"] > 1 else ": met.")]
    alternative = case.get("openvino_weights_as_inputs", {})
    if "failure" in alternative:
        lines.append(f"OpenVINO with the weights as inputs could not be measured: {alternative['failure']}")
    elif "openvino" in bound:
        forward = alternative["seconds_per_forward"]
        lines.append(f"OpenVINO, the faster engine at inference, has to take the weights as inputs here (they change between passes): "
                     f"{forward['torch'] / forward['openvino']:.2f}× torch's forward on the same {alternative['forwards']} batches (largest output difference "
                     f"{alternative['max_output_difference']:.1e}), after a one-off export and conversion of {alternative['seconds_export_and_convert']:.1f} s "
                     f"and a compile of {alternative['seconds_compile']:.1f} s. Over the profile's {result['profile_epochs']} epochs that would give "
                     f"{100 * bound['openvino']['overhead']:+.1f} % per epoch (projected from these rates, not run).")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", help="whose data, plans and trainer settings to time")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per trainer")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of run_training per trainer (default: the profile's case_val_every, at least 5)")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/train_speed_<device>.json)")
    args = parser.parse_args(argv)



    from pancreas_multitask.io import write_json, write_text
    from pancreas_multitask.manifest import load_manifest
    from pancreas_multitask.profiles import load_parameters
    from pancreas_multitask.runtime import configure_nnunet, detect_device, git_revision, library_versions, set_nnunet_variables
    from pancreas_multitask.model.settings import settings_from_parameters

    manifest = load_manifest(REPO / "data_manifest.yaml")
    paths = replace(manifest.paths(args.profile), results=Path(tempfile.mkdtemp(prefix="train_speed_")))  # keep the real results folder clean
    params = load_parameters(REPO / "notebooks" / "params", args.profile)
    device = detect_device(args.device)
    configure_nnunet(paths, device)
    set_nnunet_variables({"nnUNet_compile": "f"})  # the multitask trainer does not compile by default; compare like with like
    import torch

    settings = settings_from_parameters(params, len(manifest.subtypes))
    epochs = args.epochs or max(5, settings.case_val_every)
    profile_epochs = settings.num_epochs
    settings = replace(settings, num_epochs=epochs, patience=max(epochs + 1, settings.case_val_every))  # no early stop
    result = measure(paths.nnunet_preprocessed / manifest.dataset_name, params["plans"], device, settings, args.iterations, args.blocks,
                     profile_epochs=profile_epochs)
    result = {
        "benchmark": "train_speed", "profile": args.profile, "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "git_revision": git_revision(REPO), "date": time.strftime("%Y-%m-%d %H:%M"), **result, "versions": library_versions(),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"train_speed_{device}.json"
    write_json(out, result)
    write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":  # nnU-Net's data loaders start worker processes
    main()
