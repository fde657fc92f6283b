"""The library's shape: no import cycles between its modules or its packages, and a guard for every private
nnU-Net name the project overrides or calls (an upgrade that renames one fails here, loudly, first)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conftest import REPO

LIB = REPO / "lib" / "pancreas_multitask"


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every pancreas_multitask module ``path`` imports, at the top or inside a function."""
    name, found = _module_name(path), set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pancreas_multitask")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("pancreas_multitask"):
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names}  # "from .x import y" may name a module y
    return found


def _graph(level: str) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in LIB.rglob("*.py")}

    def node(module: str) -> str:
        parts = module.split(".")
        if level == "module":
            return module
        return ".".join(parts[:2])  # pancreas_multitask.<package or top-level module>

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in _imports(path) if t in modules}
        graph.setdefault(node(name), set()).update(node(t) for t in targets if node(t) != node(name))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level: str) -> None:
    cycle = _cycle(_graph(level))
    assert cycle is None, f"import cycle between {level}s: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"] and _cycle({"a": {"b"}, "b": set()}) is None


# ---------------------------------------------------------------- nnU-Net upgrade guard

def _parameters(function) -> list[str]:
    """Parameter names, without ``self`` (nnU-Net makes some methods static)."""
    return [p.name for p in inspect.signature(function).parameters.values() if p.name != "self"]


def test_nnunet_methods_the_trainer_overrides_keep_their_signatures() -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pancreas_multitask.training.trainers.nnUNetTrainerMultitask import nnUNetTrainerMultitask

    overridden = [n for n, f in vars(nnUNetTrainerMultitask).items() if inspect.isfunction(f) and hasattr(nnUNetTrainer, n)]
    assert {"run_training", "on_epoch_end", "train_step", "save_checkpoint", "perform_actual_validation", "on_train_end",
            "build_network_architecture", "configure_optimizers", "_do_i_compile", "print_to_log_file"} <= set(overridden)
    for name in overridden:
        base = getattr(nnUNetTrainer, name)
        assert _parameters(getattr(nnUNetTrainerMultitask, name)) == _parameters(base), f"nnUNetTrainer.{name} changed its signature"
    # what the overrides call or read on nnU-Net's side
    for name in ("set_deep_supervision_enabled", "on_epoch_start", "on_train_epoch_start", "on_validation_epoch_start", "validation_step",
                 "get_tr_and_val_datasets", "initialize", "load_checkpoint", "plot_network_architecture"):
        assert callable(getattr(nnUNetTrainer, name, None)), f"nnUNetTrainer.{name} is gone"


def test_nnunet_logger_keeps_the_private_dict_the_trainer_extends(tmp_path: Path) -> None:
    from nnunetv2.training.logging.nnunet_logger import LocalLogger, MetaLogger

    assert isinstance(MetaLogger(str(tmp_path), resume=False).local_logger, LocalLogger)  # trainer.logger.local_logger
    log = LocalLogger().my_fantastic_logging
    assert {"mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps"} <= set(log)


def test_nnunet_predictor_internals_the_predictor_overrides_are_there() -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from pancreas_multitask.inference.predictor import MultitaskPredictor

    expected = {"_internal_maybe_mirror_and_predict": ["x"], "_internal_predict_sliding_window_return_logits": ["data", "slicers", "do_on_device"],
                "predict_sliding_window_return_logits": ["input_image"]}  # called once per fold by predict_logits_from_preprocessed_data
    for name, parameters in expected.items():
        assert _parameters(getattr(nnUNetPredictor, name)) == parameters, f"nnUNetPredictor.{name} changed"
        assert _parameters(getattr(MultitaskPredictor, name)) == parameters
    assert _parameters(nnUNetPredictor.manual_initialization) == ["network", "plans_manager", "configuration_manager", "parameters", "dataset_json",
                                                                  "trainer_name", "inference_allowed_mirroring_axes"]
    for name in ("predict_sliding_window_return_logits", "predict_logits_from_preprocessed_data", "_internal_get_sliding_window_slicers"):
        assert callable(getattr(nnUNetPredictor, name, None)), f"nnUNetPredictor.{name} is gone"
    source = inspect.getsource(nnUNetPredictor.predict_logits_from_preprocessed_data)  # one sliding window per fold: the per-fold calibration counts on it
    assert "for params in self.list_of_parameters" in source and source.count("self.predict_sliding_window_return_logits(") >= 1
    predictor = nnUNetPredictor(device=__import__("torch").device("cpu"))
    assert {"tile_step_size", "use_gaussian", "use_mirroring", "perform_everything_on_device", "allow_tqdm"} <= set(vars(predictor))


def test_nnunet_variables_are_written_in_runtime_only() -> None:
    """nnU-Net reads its ``nnUNet_*`` variables; the library and the benchmarks set them through ``runtime`` only."""
    import re

    write = re.compile(r"os\.environ(\.update\(|\.setdefault\(\s*[\"']nnUNet|\.pop\(\s*[\"']nnUNet|\[\s*[\"']nnUNet[^\]]*\]\s*=)")
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in [*LIB.rglob("*.py"), *(REPO / "benchmarks").glob("*.py")] if path.name != "runtime.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if write.search(line)]
    assert not offenders, "\n".join(offenders)


def test_nnunet_decoder_runs_the_stages_the_decoder_head_hooks() -> None:
    """``source='decoder'`` hooks the last of nnU-Net's ``UNetDecoder.stages``: its output is what the segmentation layer reads."""
    from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

    source = inspect.getsource(UNetDecoder.forward)
    assert "self.stages[s]" in source and "self.seg_layers" in source, "UNetDecoder.forward no longer runs self.stages in order"
