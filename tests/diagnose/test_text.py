"""diagnose_text on messages this CPU-only machine cannot raise: CUDA devices, CUDA/MPS out of memory,
device-side asserts. The messages are torch's own (c10/cuda/CUDACachingAllocator.cpp, ATen's device
checks, Loss.cu), placed in the traceback of a real crash so that the frames are real too."""

from __future__ import annotations

import traceback
import warnings

import pytest
import torch
from torch import nn

from diagnose_scenarios import SCENARIOS, raise_scenario
from modeldebug.diagnose import diagnose_exception, diagnose_text, explain, module_names_of


def _text(f) -> str:
    return " ".join([f.message] + [r.description + " " + (r.implementation or "") for r in f.recommendations])


def traceback_with(scenario_id: str, last_line: str) -> str:
    """A real traceback of a scenario, its last line replaced by ``last_line``."""
    s = next(s for s in SCENARIOS if s.id == scenario_id)
    exc, _ = raise_scenario(s)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = tb[: tb.rindex(f"{type(exc).__name__}: ")]
    return head + last_line + "\n"


DEVICE_OLD = ("RuntimeError: Expected all tensors to be on the same device, but found at least two devices, cuda:0 and "
              "cpu! (when checking argument for argument mat1 in method wrapper_CUDA_addmm)")
DEVICE_NEW = ("RuntimeError: Expected all tensors to be on the same device, but got mat1 is on cpu, different from "
              "other tensors on cuda:0 (when checking argument in method wrapper_CUDA_addmm)")
DEVICE_CONV = ("RuntimeError: Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the "
               "same or input should be a MKLDNN tensor and weight is a dense tensor")
DEVICE_LOAD = ("RuntimeError: Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False. "
               "If you are running on a CPU-only machine, please use torch.load with map_location=torch.device('cpu') "
               "to map your storages to the CPU.")
OOM_NEW = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
           "79.19 GiB of which 1.05 GiB is free. Including non-PyTorch memory, this process has 78.13 GiB memory in use. "
           "Of the allocated memory 70.33 GiB is allocated by PyTorch, and 7.05 GiB is reserved by PyTorch but "
           "unallocated. If reserved but unallocated memory is large try setting "
           "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
           "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
OOM_OLD = ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; 14.56 GiB "
           "already allocated; 3.44 MiB free; 14.69 GiB reserved in total by PyTorch) If reserved memory is >> allocated "
           "memory try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and "
           "PYTORCH_CUDA_ALLOC_CONF")
OOM_MPS = ("RuntimeError: MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.20 GB, max allowed: "
           "18.13 GB). Tried to allocate 256.00 MB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable "
           "upper limit for memory allocations (may cause system failure).")
ASSERT_NLL = ("/pytorch/aten/src/ATen/native/cuda/Loss.cu:250: nll_loss_forward_reduce_cuda_kernel_2d: block: [0,0,0], "
              "thread: [5,0,0] Assertion `t >= 0 && t < n_classes` failed.\n")
ASSERT_TAIL = ("RuntimeError: CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
               "reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging consider "
               "passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
ASSERT_EMB = ("/pytorch/aten/src/ATen/native/cuda/Indexing.cu:1289: indexSelectLargeIndex: block: [12,0,0], thread: "
              "[64,0,0] Assertion `srcIndex < srcSelectDimSize` failed.\n")

CASES = [
    # id, scenario giving the frames, last line, cause, module_type from the frames, words
    ("device_found_two_devices", "linear_after_flatten", DEVICE_OLD, "device_mismatch", "Linear",
     ["cpu and cuda:0", "`mat1`", "x.to(next(model.parameters()).device)"]),
    ("device_got_mat1_on_cpu", "linear_after_flatten", DEVICE_NEW, "device_mismatch", "Linear",
     ["cpu and cuda:0", "`mat1`", "model.to(device)"]),
    ("device_conv_input_type", "conv_grayscale_input", DEVICE_CONV, "device_mismatch", "Conv2d",
     ["x.to(next(model.parameters()).device)"]),
    ("device_gpu_checkpoint_on_cpu", "missing_batch_key", DEVICE_LOAD, "device_mismatch", None,
     ["map_location='cpu'"]),
    ("cuda_oom", "attention_scores_too_long", OOM_NEW, "out_of_memory", None,
     ["2 GiB", "1.05 GiB free", "79.2 GiB", "autocast", "checkpoint(block, x, use_reentrant=False)",
      "7.05 GiB is reserved but unallocated", "expandable_segments:True"]),
    ("cuda_oom_old_format", "pairwise_outer_difference", OOM_OLD, "out_of_memory", None,
     ["20 MiB", "3.44 MiB free", "15.8 GiB", "batch size"]),
    ("mps_oom", "pairwise_outer_difference", OOM_MPS, "out_of_memory", None, ["MPS memory", "batch size"]),
    ("cuda_assert_nll_target", "cross_entropy_target_out_of_range", ASSERT_NLL + "Traceback", "other", None,
     ["class index", "[0, num_classes)", "CUDA_LAUNCH_BLOCKING=1"]),
    ("cuda_assert_embedding_index", "embedding_index_too_large", ASSERT_EMB + "Traceback", "other", None,
     ["num_embeddings", "CUDA_LAUNCH_BLOCKING=1"]),
]


@pytest.mark.parametrize("cid, sid, last, cause, module_type, words", CASES, ids=[c[0] for c in CASES])
def test_torch_messages_in_real_tracebacks(cid, sid, last, cause, module_type, words):
    if last.endswith("Traceback"):  # the kernel's assertion lines print before the traceback
        text = last[: -len("Traceback")] + traceback_with(sid, ASSERT_TAIL)
    else:
        text = traceback_with(sid, last)
    f = diagnose_text(text)
    assert f.kind == "runtime_error" and f.evidence["cause"] == cause, f.message
    if module_type:
        assert f.evidence["module_type"] == module_type
    out = _text(f)
    missing = [w for w in words if w not in out]
    assert not missing, f"{missing} not in: {out}"
    assert "cannot know" in f.message


BARE = [
    ("linear_message_only", "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x2048 and 512x10)",
     "shape_mismatch", ["nn.Linear(2048, 10)"]),
    ("message_without_type", "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!",
     "device_mismatch", ["cuda:0"]),
    ("cuda_oom_line", OOM_NEW, "out_of_memory", ["2 GiB"]),
    ("inplace_line", "RuntimeError: one of the variables needed for gradient computation has been modified by an "
     "inplace operation: [torch.cuda.FloatTensor [64, 128]], which is output 0 of ReluBackward0, is at version 2; "
     "expected version 1 instead.", "inplace_autograd", ["[64, 128]", "Relu", "version 2"]),
    ("parameter_version_line", "RuntimeError: one of the variables needed for gradient computation has been "
     "modified by an inplace operation: [torch.FloatTensor [256, 32]] is at version 2; expected version 1 instead.",
     "inplace_autograd", ["[256, 32]", "no grad_fn (a parameter)", "optimizer.step()", "h.detach()"]),
    ("anomaly_line", "RuntimeError: Function 'LogBackward0' returned nan values in its 0th output.", "nan_detected",
     ["torch.log(x.clamp_min(1e-8))"]),
    ("unknown_error", "ZeroDivisionError: division by zero", "other", ["ZeroDivisionError"]),
]


@pytest.mark.parametrize("cid, text, cause, words", BARE, ids=[b[0] for b in BARE])
def test_bare_messages(cid, text, cause, words):
    f = explain(text)
    assert f.evidence["cause"] == cause
    out = _text(f)
    assert all(w in out for w in words), out


def test_explain_dispatches_on_exceptions_and_bytes():
    try:
        nn.Linear(512, 10)(torch.randn(64, 2048))
    except RuntimeError as exc:
        f = explain(exc)
    assert f.evidence["cause"] == "shape_mismatch" and f.evidence["from_text"] is False
    assert explain(b"RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x2048 and 512x10)").evidence["cause"] == "shape_mismatch"
    with pytest.raises(TypeError, match="Expected an exception"):
        explain(42)


def test_chained_traceback_uses_the_last_exception():
    text = traceback_with("linear_after_flatten", "RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x2048 and 512x10)")
    text += "\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n" \
            '  File "train.py", line 3, in <module>\n    raise KeyError("x")\nKeyError: \'x\'\n'
    f = diagnose_text(text)
    assert f.evidence["error_type"] == "KeyError" and f.evidence["cause"] == "other"


def test_top_level_explain():
    import modeldebug as md

    assert "explain" in md.__all__
    f = md.explain("RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x2048 and 512x10)")
    assert f.kind == "runtime_error"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_real_cuda_device_mismatch():
    model = nn.Sequential(nn.Linear(4, 2)).cuda()
    try:
        model(torch.randn(3, 4))
    except RuntimeError as exc:
        f = diagnose_exception(exc, module_names=module_names_of(model))
    assert f.evidence["cause"] == "device_mismatch" and f.evidence["module"] == "0"
    assert "cuda" in f.message and "cpu" in f.message


@needs_cuda
def test_real_cuda_out_of_memory():
    class Outer(nn.Module):
        def forward(self, x):
            return x.unsqueeze(2) * x.unsqueeze(1)

    model = nn.Sequential(Outer())
    x = torch.randn(1, 1, 64, device="cuda").expand(64, 2**15, 64)
    try:
        model(x)
    except torch.OutOfMemoryError as exc:
        f = diagnose_exception(exc, module_names=module_names_of(model))
    assert f.evidence["cause"] == "out_of_memory" and f.evidence["module"] == "0"
    assert "now 64" in _text(f) and "autocast" in _text(f)
