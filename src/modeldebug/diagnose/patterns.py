"""The table of message patterns: (cause, regex, builder); the first that matches explains the error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from modeldebug.diagnose import autograd, dtype_device, memory, numerics, shapes
from modeldebug.diagnose.context import SAVED_VERSION, Context, Diagnosis, first_line
from modeldebug.findings import fix

CAUSES = ("shape_mismatch", "dtype_mismatch", "device_mismatch", "inplace_autograd", "out_of_memory",
          "nan_detected", "other")

Builder = Callable[[Context, re.Match], Diagnosis]


@dataclass(frozen=True)
class Pattern:
    cause: str
    regex: re.Pattern
    build: Builder


def _p(cause: str, rx: str, build: Builder) -> Pattern:
    return Pattern(cause, re.compile(rx, re.S), build)


PATTERNS: list[Pattern] = [
    # out of memory first: its messages mention sizes that look like shapes
    _p("out_of_memory", r"(?:CUDA|HIP|XPU|MPS backend) out of memory|CUDA error: out of memory|"
       r"DefaultCPUAllocator: can't allocate memory|OutOfMemoryError", memory.oom),
    # device before dtype: "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor)"
    _p("device_mismatch", r"Expected all tensors to be on the same device|"
       r"Input type \(torch\.(?:cuda\.)?\w+\) and (?:weight|bias) type \(torch\.cuda\.\w+\)|"
       r"Input type \(torch\.cuda\.\w+\) and (?:weight|bias) type \(torch\.\w+\)|"
       r"is not on the expected device|Expected object of device type|"
       r"indices should be either on cpu or on the same device|on different devices", dtype_device.devices),
    _p("device_mismatch", r"Torch not compiled with CUDA enabled|"
       r"Attempting to deserialize object on a CUDA device but torch\.cuda\.is_available\(\) is False|"
       r"Found no NVIDIA driver", dtype_device.no_cuda),
    _p("other", r"device-side assert triggered|Assertion `[^`]*` failed", numerics.device_assert),
    # shapes
    _p("shape_mismatch", r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", shapes.mm_shapes),
    _p("shape_mismatch", r"Expected size for first two dimensions of batch2 tensor to be: (\[[\d, ]+\]) but got: (\[[\d, ]+\])", shapes.bmm_shapes),
    _p("shape_mismatch", r"size mismatch, got input \(\d+\), mat \(\d+x\d+\), vec \(\d+\)", shapes.mv_shapes),
    _p("shape_mismatch", r"Given groups=(\d+), weight of size (\[[\d, ]+\]), expected input(\[[\d, ]+\]) to have (\d+) channels, but got (\d+) channels", shapes.conv_channels),
    _p("shape_mismatch", r"Expected (\d)D \(unbatched\) or (\d)D \(batched\) input to (\w+), but got input of size: (\[[\d, ]*\])", shapes.conv_ndim),
    _p("shape_mismatch", r"input\.size\(-1\) must be equal to input_size\. Expected (\d+), got (\d+)", shapes.rnn_size),
    _p("shape_mismatch", r"(LSTM|GRU|RNN): Expected input to be 2D or 3D, got (\d)D", shapes.rnn_ndim),
    _p("shape_mismatch", r"running_mean should contain (\d+) elements not (\d+)", shapes.norm_features),
    _p("shape_mismatch", r"Target size \(torch\.Size\((\[[\d, ]*\])\)\) must be the same as input size \(torch\.Size\((\[[\d, ]*\])\)\)", shapes.target_shape),
    _p("shape_mismatch", r"Expected input batch_size \((\d+)\) to match target batch_size \((\d+)\)", shapes.batch_size),
    _p("shape_mismatch", r"The size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton dimension (\d+)", shapes.broadcast),
    _p("shape_mismatch", r"Sizes of tensors must match except in dimension (\d+)\. Expected size (\d+) but got size "
       r"(\d+) for tensor number (\d+) in the list|stack expects each tensor to be equal size", shapes.cat_sizes),
    # dtypes
    _p("dtype_mismatch", r"mat1 and mat2 must have the same dtype, but got (\w+) and (\w+)", dtype_device.input_vs_param_dtype),
    _p("dtype_mismatch", r"expected (?:mat1 and mat2|m1 and m2) to have the same dtype, but got: ([\w:]+) != ([\w:]+)", dtype_device.input_vs_param_dtype),
    _p("dtype_mismatch", r"Input type \(([\w.]+)\) and (?:weight|bias) type \(([\w.:]+)\) should be the same", dtype_device.input_vs_param_dtype),
    _p("dtype_mismatch", r"expected target dtype to be Long or Byte, but got (\w+)|expected scalar type Long but found (\w+)", dtype_device.target_needs_long),
    _p("dtype_mismatch", r"Found dtype (\w+) but expected (\w+)", dtype_device.target_needs_float),
    _p("dtype_mismatch", r"result type (\w+) can't be cast to the desired output type (\w+)", dtype_device.cast_target),
    _p("dtype_mismatch", r"'indices' to have one of the following scalar types: Long, Int; but got ([\w.]+) instead", dtype_device.index_dtype),
    _p("dtype_mismatch", r"expected scalar type \w+ but found \w+|must have the same dtype|should be the same dtype", dtype_device.generic_dtype),
    # in-place and autograd
    _p("inplace_autograd", SAVED_VERSION, autograd.inplace_version),
    _p("inplace_autograd", r"Trying to backward through the graph a second time", autograd.backward_twice),
    _p("inplace_autograd", r"a (?:view of a )?leaf Variable that requires grad is being used in an in-place operation", autograd.leaf_inplace),
    _p("other", r"does not require grad and does not have a grad_fn", autograd.no_graph),
    _p("inplace_autograd", r"is a view and (?:is being|its base or another view of its base has been) modified inplace", autograd.view_inplace),
    # non-finite values
    _p("nan_detected", r"Function '(\w+)' returned nan values in its \d+th output", numerics.anomaly_nan),
    _p("nan_detected", r"The total norm of order [\d.]+ for gradients from `parameters` is non-finite", numerics.nonfinite_norm),
    _p("nan_detected", r"probability tensor contains either `inf`, `nan` or element < 0", numerics.nan_probs),
    _p("nan_detected", r"Expected parameter (\w+) \(Tensor of shape .*?\) of distribution (\w+)\(.*?found invalid values:\s*\n?.*\bnan\b", numerics.nan_constraint),
    # index out of range (cause other; evidence.detail says which)
    _p("other", r"index out of range in self|index \d+ is out of bounds for dimension", numerics.embedding_index),
    _p("other", r"Target (-?\d+) is out of bounds", numerics.target_bounds),
    _p("nan_detected", r"\b(?:nan|NaN|non-finite|inf)\b.*\b(?:loss|gradient|grad|output|value)s?\b|"
       r"\b(?:loss|gradient|grad)s?\b.*\b(?:nan|NaN|non-finite)\b", numerics.nan_generic),
]

CONTRACT_CAUSES = {"wrong_loss_function", "numerically_unstable_op", "label_problem", "detached_graph",
                    "graph_kept_alive", "learning_rate_too_high", "other"}


def matches(ctx: Context) -> bool:
    """Whether a pattern of the table explains the message (also those whose cause is ``other``)."""
    return any(p.regex.search(ctx.message) for p in PATTERNS)


def match(ctx: Context) -> tuple[str, Diagnosis]:
    """The first pattern that matches the message: its cause and diagnosis (``other`` when none does)."""
    text = ctx.message
    for p in PATTERNS:
        m = p.regex.search(text)
        if m:
            return p.cause, p.build(ctx, m)
    where = f" (raised at {ctx.where})" if ctx.where else ""
    msg = f"Training raised {ctx.error_type}{where} in {ctx.name}: {first_line(text)}"
    return "other", Diagnosis(msg, [fix(f"Read the line that raised{where}; modeldebug has no specific advice for this error.")],
                              ["other"], 0.5)
