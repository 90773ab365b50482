"""Helpers the ONNX debugger's parts share: loading, inputs, sessions, statistics, reports.

onnx and onnxruntime are imported inside functions (``require``) so that ``import modeldebug``
works without the ``onnx`` extra.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from modeldebug.errors import DebuggingError, require
from modeldebug.metrics import OnnxMetrics
from modeldebug.types import Finding, Report, RunInfo

ModelLike = Any  # a path, bytes, or onnx.ModelProto

# ONNX tensor element types -> numpy (the ones onnxruntime feeds and returns).
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}

OPT_LEVELS = ("disable", "basic", "extended", "all")


def onnx_mod():
    return require("onnx", "onnx")


def ort_mod():
    return require("onnxruntime", "onnx")


def load_model(model: ModelLike):
    """Return an ``onnx.ModelProto`` from a path, bytes or a ModelProto.

    Raises DebuggingError with a one-line message for a missing, corrupt, truncated or non-ONNX
    file, so that callers (and the CLI) can show it as it is.
    """
    onnx = onnx_mod()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        data, where = bytes(model), "the given bytes"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise DebuggingError(f"{path}: no such file; expected the path of an .onnx model.")
        data, where = path.read_bytes(), str(path)
    else:
        raise TypeError(f"Expected `model` to be a path, bytes or onnx.ModelProto but got {type(model).__name__}.")
    if not data:
        raise DebuggingError(f"{where} is empty; expected an ONNX model (re-export it).")
    kind = _sniff(data)
    if kind:
        raise DebuggingError(f"{where} is not an ONNX model ({kind}); pass the .onnx file that torch.onnx.export wrote.")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError; the message alone is cryptic
        raise DebuggingError(
            f"{where} is not a readable ONNX model (the file is corrupt or truncated: {_one_line(exc)}); re-export or re-download it."
        ) from None
    # Protobuf parses many random byte strings "successfully" into an empty message.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not (proto.graph.node or proto.graph.output):
        raise DebuggingError(
            f"{where} does not look like an ONNX model (no IR version or no graph); check that it is an .onnx file."
        )
    if where != "the given bytes":
        _load_external_data(proto, Path(where).parent)
    return proto


# First bytes of a ModelProto: the protobuf tags of its fields (ir_version=1 ... functions=25).
_MODEL_TAGS = {0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}
_MAGIC = {
    b"PK\x03\x04": "a zip archive, e.g. a PyTorch checkpoint saved with torch.save",
    b"\x80\x02": "a Python pickle",
    b"\x89HDF": "an HDF5 file, e.g. a Keras model",
    b"\x93NUMPY": "a numpy array file",
    b"\x7fELF": "an executable",
}


def _sniff(data: bytes) -> str | None:
    """Name what the bytes are when they are plainly not an ONNX model; None when they may be one."""
    for magic, what in _MAGIC.items():
        if data.startswith(magic):
            return what
    if data[0] in _MODEL_TAGS:
        return None
    head = data[:512]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it is a text file"
    return f"unexpected first byte 0x{data[0]:02x}"


def _load_external_data(proto, base_dir: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if any(uses_external_data(t) for t in proto.graph.initializer):
        try:
            load_external_data_for_model(proto, str(base_dir))
        except Exception as exc:
            raise DebuggingError(f"Cannot read the model's external weights from {base_dir}: {_one_line(exc)}") from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 300) -> str:
    return _one_line(exc, limit)


def make_session(
    proto,
    providers: Sequence[str] | None = None,
    optimization_level: str = "all",
    profile_prefix: str | None = None,
    threads: int | None = None,
):
    """An onnxruntime session on the given providers at the given graph optimization level."""
    ort = ort_mod()
    opts = ort.SessionOptions()
    if optimization_level not in OPT_LEVELS:
        raise ValueError(f"Expected `optimization_level` to be one of {OPT_LEVELS} but got {optimization_level!r}.")
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = {
        "disable": level.ORT_DISABLE_ALL,
        "basic": level.ORT_ENABLE_BASIC,
        "extended": level.ORT_ENABLE_EXTENDED,
        "all": level.ORT_ENABLE_ALL,
    }[optimization_level]
    opts.log_severity_level = 4  # errors also come back as exceptions, which become findings
    if threads is not None:
        opts.intra_op_num_threads = threads
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    providers = check_providers(providers)
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=providers)


def default_providers() -> list[str]:
    return ["CPUExecutionProvider"]


def check_providers(providers: Sequence[Any] | None) -> list[Any]:
    """The providers to use, refused (DebuggingError) when the installed onnxruntime lacks one.

    onnxruntime itself only warns and falls back to CPU, and the kernel look-up of a CPU-only build
    then reports missing kernels: both hide that the provider is not there at all.
    """
    ort = ort_mod()
    providers = list(providers or default_providers())
    available = ort.get_available_providers()
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
    missing = [n for n in names if n not in available]
    if missing:
        known = set(ort.get_all_providers())
        unknown = [n for n in missing if n not in known]
        hint = (
            f"{', '.join(unknown)} is not an onnxruntime provider name"
            if unknown
            else "install the onnxruntime build for it (e.g. onnxruntime-gpu for CUDAExecutionProvider) or pick an available one"
        )
        raise DebuggingError(
            f"Execution provider {', '.join(missing)} is not available in this onnxruntime {ort.__version__} "
            f"(available: {', '.join(available)}); {hint}."
        )
    return providers


def random_inputs(session, seed: int = 0, dim_value: int = 1) -> dict[str, np.ndarray]:
    """Inputs that match the session's input signature; symbolic dimensions become ``dim_value``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        dtype = _ORT_TYPES.get(inp.type)
        if dtype is None:
            raise DebuggingError(
                f"Cannot make a random value for input {inp.name!r} of type {inp.type}; pass the inputs yourself.",
                type="profiling",
            )
        shape = [d if isinstance(d, int) and d >= 0 else dim_value for d in (inp.shape or [])]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        elif dtype is np.str_:
            feeds[inp.name] = np.full(shape, "a", dtype=object)
        else:
            # small non-negative integers: most integer inputs are indices or sizes
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def check_feeds(session, inputs: Mapping[str, Any] | Sequence[Any] | None) -> dict[str, Any]:
    """Name positional inputs after the session's inputs and say which are missing."""
    names = [i.name for i in session.get_inputs()]
    if inputs is None:
        return random_inputs(session)
    if not isinstance(inputs, Mapping):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(inputs) != len(names):
            raise DebuggingError(f"The model takes {len(names)} inputs {names} but {len(inputs)} were given.")
        inputs = dict(zip(names, inputs))
    missing = [n for n in names if n not in inputs]
    if missing:
        raise DebuggingError(f"Missing inputs {missing}; the model takes {names}.")
    return {n: _as_numpy(inputs[n]) for n in names}


def _as_numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    return value


def value_stats(arr: np.ndarray) -> dict[str, Any]:
    """Summary of one array: counts of NaN/Inf and the range of its finite values."""
    arr = np.asarray(arr)
    out: dict[str, Any] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "numel": int(arr.size)}
    if arr.dtype.kind not in "fiuc" or arr.size == 0:
        return out
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        inf = np.isinf(arr)
        out["nan_count"] = int(nan.sum())
        out["inf_count"] = int(inf.sum())
        finite = arr[~(nan | inf)]
    else:
        finite = arr
    if finite.size:
        f64 = finite.astype(np.float64)
        out.update(
            min=float(f64.min()),
            max=float(f64.max()),
            mean=float(f64.mean()),
            zero_count=int((f64 == 0).sum()),
            negative_count=int((f64 < 0).sum()),
        )
    return out


def new_report(command: Sequence[str], findings: list[Finding], metrics: OnnxMetrics, started: float) -> Report:
    return Report(
        run=RunInfo(
            id=uuid.uuid4().hex[:12],
            command=list(command),
            status="completed",
            exit_code=0,
            duration_s=round(time.perf_counter() - started, 4),
            started_at=time.time() - (time.perf_counter() - started),
            device="cpu",
        ),
        findings=findings,
        metrics=metrics,
    )


def model_label(model: ModelLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return "<in-memory model>"


def subgraph_nodes(graph):
    """Every node of the graph and of its nested subgraphs (If, Loop, Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from subgraph_nodes(attr.g)
            for g in attr.graphs:
                yield from subgraph_nodes(g)


def with_all_outputs(proto, names: Sequence[str]):
    """A copy of the model whose graph also outputs ``names`` (intermediate values).

    onnxruntime accepts outputs without type information, so values that shape inference could not
    type still come back.
    """
    onnx = onnx_mod()
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    existing = {o.name for o in copy.graph.output}
    typed = {vi.name: vi for vi in copy.graph.value_info}
    for name in names:
        if name and name not in existing:
            copy.graph.output.append(typed[name] if name in typed else onnx.ValueInfoProto(name=name))
            existing.add(name)
    return copy
