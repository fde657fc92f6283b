"""The engine that runs the network's forward pass: torch, or OpenVINO on the CPU.

Only the forward pass of a batch of tiles moves. nnU-Net's sliding window, the Gaussian weighting, every
TTA pass, the export and the postprocessing stay in the predictor, and both outputs come back (the
segmentation logits and the subtype logits), so the tile aggregation is unchanged.

OpenVINO's files live beside the model, in ``openvino_cache/<network key>/`` (``network_key``: the
checkpoint's, settings' and plans' bytes):

* ``model.xml``/``model.bin`` and ``model.json``: the network converted once (fp32, dynamic batch);
* ``<batch shape>_<threads>t.blob`` and its ``.json``: compiled once per input shape and thread count,
  with the performance hint and streams that measured fastest here (``calibrate``).

Each ``.json`` record is written last and holds the sha256 of the files it describes, the key and the
OpenVINO version: a killed or damaged write, a cache of other weights or of another OpenVINO is rebuilt,
never used. A lock serialises processes that share the model (``--num_parts``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..io import atomic_path, file_lock, write_json
from ..runtime import available_cores

ENGINES = ("auto", "torch", "openvino")
CACHE_FOLDER = "openvino_cache"
HINTS = ("LATENCY", "THROUGHPUT")


def import_openvino() -> Any:
    """The ``openvino`` module, imported without its usage statistics (which its import would switch on, writing ``~/intel``)."""
    with _no_telemetry():
        import openvino
    return openvino


def openvino_problem() -> str | None:
    """Why OpenVINO cannot be used here, or None."""
    try:
        import_openvino()
    except Exception as exc:  # ImportError, or a broken installation
        return f"openvino cannot be imported ({type(exc).__name__}: {exc})"
    return None


def choose_engine(requested: str, device: str) -> tuple[str, str | None]:
    """(engine, a line saying why it is not the one asked for, or None).

    ``auto``: OpenVINO on the CPU when it imports, torch otherwise; ``openvino`` on a GPU runs torch.
    """
    if requested not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {requested!r}")
    if requested == "torch" or (requested == "auto" and device != "cpu"):
        return "torch", None
    if device != "cpu":
        return "torch", f"engine openvino runs on the CPU only; on {device} the network runs in torch"
    problem = openvino_problem()
    if problem is not None:
        return "torch", f"engine {requested}: {problem}; the network runs in torch"
    return "openvino", None


def network_key(files: Sequence[Path]) -> str:
    """What a converted network depends on: the bytes of ``files`` (the checkpoint, the settings and plans it is
    built from), the project's network code and the versions of the libraries that build and trace it."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for path in [*files, *sorted(Path(__file__).parents[1].joinpath("model").glob("*.py"))]:
        digest.update(path.name.encode())
        digest.update(sha256(path).encode() if path.is_file() else b"absent")
    digest.update(repr([(name, version(name)) for name in ("torch", "nnunetv2", "dynamic_network_architectures", "openvino")]).encode())
    return digest.hexdigest()[:16]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root(model_folder: Path) -> Path:
    """``<model>/openvino_cache``, or a folder under the system's temporary folder when the model folder is read-only."""
    folder = Path(model_folder) / CACHE_FOLDER
    try:
        folder.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return folder
    except OSError:
        return temporary_cache_root()


def temporary_cache_root() -> Path:
    """Where the cache goes when the model folder is read-only."""
    return Path(tempfile.gettempdir()) / "pancreas_multitask" / CACHE_FOLDER


@contextlib.contextmanager
def _no_telemetry() -> Iterator[None]:
    """OpenVINO's import and converter send usage statistics and write ``~/intel`` unless they run under ``CI=true``."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the network's Python control flow
            yield
    finally:
        if before is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = before


class _BothOutputs(torch.nn.Module):
    """The network as one module with two outputs: (segmentation logits, subtype logits)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        segmentation, class_logits = self.network.forward_with_class(x)
        if isinstance(segmentation, (list, tuple)):
            raise ValueError("deep supervision is on: the engine converts the inference network only")
        return segmentation, class_logits


@dataclass
class _Compiled:
    model: Any  # openvino.CompiledModel
    requests: list[Any]  # openvino.InferRequest, one per stream
    record: dict[str, Any]


class OpenVinoForward:
    """``forward(x) -> (segmentation, class logits)`` on OpenVINO's CPU plugin, for the network's current weights.

    ``keys``: one ``network_key`` per fold; ``select(fold)`` before the fold's tiles (the torch network holds the
    same fold's weights then, which a first conversion reads). ``records``: one per compiled input shape.
    """

    def __init__(self, network: torch.nn.Module, cache: Path, keys: Sequence[str], threads: int | None = None) -> None:
        self.openvino = import_openvino()
        self.core = self.openvino.Core()
        self.network, self.cache, self.keys = network, Path(cache), list(keys)
        self.threads = int(threads or available_cores())
        self.fold = 0
        self._compiled: dict[tuple[int, tuple[int, ...]], _Compiled] = {}
        self.records: list[dict[str, Any]] = []

    @property
    def version(self) -> str:
        return self.openvino.get_version()

    def select(self, fold: int) -> None:
        self.fold = fold

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(x.shape)
        compiled = self._compiled.get((self.fold, shape))
        if compiled is None:
            compiled = self._compiled[(self.fold, shape)] = self._prepare(x)
        return self._infer(compiled, x.detach().float().cpu().contiguous().numpy())

    @staticmethod
    def _infer(compiled: _Compiled, data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        requests = compiled.requests
        if len(requests) == 1:
            requests[0].infer({0: data})
        else:  # THROUGHPUT: one slice of the batch per stream, in parallel
            for request, part in zip(requests, np.split(data, len(requests))):
                request.start_async({0: part})
            for request in requests:
                request.wait()
        segmentation = np.concatenate([r.get_output_tensor(0).data for r in requests])  # copies out of the requests' buffers
        class_logits = np.concatenate([r.get_output_tensor(1).data for r in requests])
        return torch.from_numpy(segmentation), torch.from_numpy(class_logits)

    # ---- cache ----------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> _Compiled:
        """Import this shape's compiled network from the cache, or convert, calibrate, compile and cache it."""
        start = time.perf_counter()
        key, shape = self.keys[self.fold], tuple(x.shape)
        folder = self.cache / key
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{'x'.join(map(str, shape))}_{self.threads}t"
        blob, record_file = folder / f"{stem}.blob", folder / f"{stem}.json"
        with file_lock(folder / ".lock"):  # another process may be compiling the same shape: its result is loaded below
            waited, start = time.perf_counter() - start, time.perf_counter()
            record, compiled, converting = self._valid(record_file, blob, key, shape=list(shape), threads=self.threads), None, 0.0
            if record is not None:
                try:
                    compiled = self._import(blob, record)
                except Exception:  # e.g. a blob this CPU cannot run: compiled again below
                    compiled = None
            from_cache = compiled is not None
            if compiled is None:
                model, converting = self._network(folder, key, x)
                hint, streams, probe = self.calibrate(model, shape)
                compiled_model = self._compile(model, shape, hint, streams)
                record = {"key": key, "openvino": self.version, "shape": list(shape), "threads": self.threads, "hint": hint, "streams": streams, "probe_seconds": probe}
                try:
                    with atomic_path(blob) as tmp:
                        tmp.write_bytes(compiled_model.export_model().getvalue())
                    record["blob_sha256"] = sha256(blob)
                    write_json(record_file, record)  # last: a blob without its record is never used
                except OSError as exc:  # a full or read-only disk: this run keeps the compiled network, the next compiles again
                    print(f"OpenVINO: the compiled network could not be cached in {folder} ({exc}); it is used uncached", flush=True)
                compiled = _Compiled(compiled_model, [compiled_model.create_infer_request() for _ in range(streams)], record)
        seconds = time.perf_counter() - start
        entry = {"shape": list(shape), "fold": self.fold, "hint": record["hint"], "streams": record["streams"], "threads": self.threads,
                 "probe_seconds": record.get("probe_seconds", {}), "from_cache": from_cache, "seconds": round(seconds, 3),
                 "seconds_converting": round(converting, 3), "seconds_waiting_for_another_process": round(waited, 3),
                 # beside the model: named relative to the model folder, so a record names no machine's paths
                 "cache": str(folder) if self.cache == temporary_cache_root() else f"{CACHE_FOLDER}/{key}"}
        self.records.append(entry)
        print(f"OpenVINO: network for input {'x'.join(map(str, shape))} {'loaded from the cache' if from_cache else 'compiled'} in {seconds:.1f} s "
              f"({entry['hint']}, {entry['streams']} stream(s), {self.threads} thread(s)); cache {folder}", flush=True)
        return compiled

    def _valid(self, record_file: Path, payload: Path | Sequence[Path], key: str, **expected: Any) -> dict[str, Any] | None:
        """The record if it describes these files (sha256), this key, this OpenVINO and ``expected``; else None."""
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key or record.get("openvino") != self.version:
            return None
        if any(record.get(name) != value for name, value in expected.items()):
            return None
        files = [payload] if isinstance(payload, Path) else list(payload)
        hashes = [record.get("blob_sha256")] if isinstance(payload, Path) else [record.get(f"{p.suffix[1:]}_sha256") for p in files]
        if not all(p.is_file() and h == sha256(p) for p, h in zip(files, hashes)):
            return None
        return record

    def _import(self, blob: Path, record: dict[str, Any]) -> _Compiled:
        compiled = self.core.import_model(blob.read_bytes(), "CPU", self._config(record["hint"], record["streams"]))
        return _Compiled(compiled, [compiled.create_infer_request() for _ in range(record["streams"])], record)

    def _network(self, folder: Path, key: str, x: torch.Tensor) -> tuple[Any, float]:
        """(the converted network, seconds spent converting: 0 when it came from the cache)."""
        xml, weights, record_file = folder / "model.xml", folder / "model.bin", folder / "model.json"
        if self._valid(record_file, [xml, weights], key, input=list(x.shape[1:])) is not None:
            return self.core.read_model(xml), 0.0
        start = time.perf_counter()
        ov = self.openvino
        with _no_telemetry(), torch.no_grad():
            model = ov.convert_model(_BothOutputs(self.network).eval(), example_input=x[:1].float().cpu(), input=[ov.PartialShape([-1, *x.shape[1:]])])
        with atomic_path(xml) as tmp_xml:  # the .bin is written beside the .xml under the temporary name, then both are moved
            try:
                ov.save_model(model, tmp_xml, compress_to_fp16=False)
                tmp_xml.with_suffix(".bin").replace(weights)
            finally:
                tmp_xml.with_suffix(".bin").unlink(missing_ok=True)
        write_json(record_file, {"key": key, "openvino": self.version, "torch": torch.__version__, "input": list(x.shape[1:]),
                                 "xml_sha256": sha256(xml), "bin_sha256": sha256(weights)})
        return self.core.read_model(xml), time.perf_counter() - start

    # ---- compiling and calibration --------------------------------------------------------------
    def _config(self, hint: str, streams: int) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32"}
        if hint == "THROUGHPUT":
            config["NUM_STREAMS"] = streams
        return config

    def _compile(self, model: Any, shape: Sequence[int], hint: str, streams: int) -> Any:
        """Compiled for ``shape``; under THROUGHPUT each of the ``streams`` requests takes ``batch / streams`` tiles."""
        reshaped = model.clone()
        reshaped.reshape({reshaped.inputs[0]: self.openvino.PartialShape([shape[0] // streams, *shape[1:]])})
        return self.core.compile_model(reshaped, "CPU", self._config(hint, streams))

    def streams_for(self, batch: int) -> int:
        """Parallel streams that divide the batch evenly: the largest divisor of ``batch`` up to the thread count."""
        return max(s for s in range(1, min(batch, self.threads) + 1) if batch % s == 0)

    def calibrate(self, model: Any, shape: Sequence[int], repeats: int = 3) -> tuple[str, int, dict[str, float]]:
        """(hint, streams, best seconds of each candidate): LATENCY (all threads on one request) against THROUGHPUT
        with each stream count that divides the batch, on a probe of as many tiles as the most streams, the best of
        ``repeats`` runs after a warm-up. With one stream possible: LATENCY, unmeasured."""
        most = self.streams_for(shape[0])
        if most == 1:
            return "LATENCY", 1, {}
        probe_shape = (most, *shape[1:])
        data = np.random.default_rng(0).standard_normal(probe_shape).astype(np.float32)
        seconds: dict[str, float] = {}
        for streams in [1, *(s for s in range(2, most + 1) if most % s == 0)]:
            hint = "LATENCY" if streams == 1 else "THROUGHPUT"
            compiled = self._compile(model, probe_shape, hint, streams)
            candidate = _Compiled(compiled, [compiled.create_infer_request() for _ in range(streams)], {})
            self._infer(candidate, data)  # warm-up
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                self._infer(candidate, data)
                runs.append(time.perf_counter() - start)
            seconds[hint if streams == 1 else f"{hint} x{streams}"] = round(min(runs), 4)
        best = min(seconds, key=seconds.get)
        return ("LATENCY", 1, seconds) if best == "LATENCY" else ("THROUGHPUT", int(best.split("x")[1]), seconds)

    def describe(self) -> str:
        shapes = ", ".join(f"{'x'.join(map(str, r['shape']))}: {r['hint']} ({r['streams']} stream(s)), {'from the cache' if r['from_cache'] else 'compiled'} in {r['seconds']:.1f} s"
                           for r in self.records)
        return f"OpenVINO {self.version} on the CPU, {self.threads} thread(s), fp32" + (f"; {shapes}" if shapes else "")
