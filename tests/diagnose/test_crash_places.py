"""A crash at step 0, before any model is watched, is placed by the module's qualified name: the
models the traceback's frames reach name it (crash_scripts/: ordinary training scripts that crash
in their first forward pass)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.diagnose import diagnose_exception
from modeldebug.types import Report

SCRIPTS = Path(__file__).parent / "crash_scripts"

# script -> (qualified module, its class, cause, words of the fix)
PLACES = {
    "conv_stages": ("stages.2.conv1", "Conv2d", "shape_mismatch", ["nn.Conv2d(32, 64, kernel_size=3)"]),  # loop at module level
    "lstm_encoder": ("encoder.rnn", "LSTM", "shape_mismatch", ["nn.LSTM(32, 64, batch_first=True)"]),  # inside main()
    "linear_head_trainer": ("head.1", "Linear", "shape_mismatch", ["nn.Linear(32, 3)"]),  # a Trainer calls model.head
    "attention_layers": ("layers.0.attn", "SelfAttention", "shape_mismatch", ["Batched matrix multiply", "v.transpose(1, 2)"]),
    "decoder_cat": ("decoder.1", "DecoderBlock", "shape_mismatch", ["`skip` [8, 16, 16, 16]", "F.interpolate"]),  # torch.cat
}


def _text(f) -> str:
    return " ".join([f.message] + [r.description + " " + (r.implementation or "") for r in f.recommendations])


def _crash(name: str) -> BaseException:
    torch.manual_seed(0)
    try:
        runpy.run_path(str(SCRIPTS / f"{name}.py"), run_name="__main__")
    except Exception as exc:  # noqa: BLE001 - the script's crash is the point
        return exc
    raise AssertionError(f"{name} did not crash")


@pytest.mark.parametrize("name", sorted(PLACES))
def test_explain_names_the_qualified_module(name):
    module, module_type, cause, words = PLACES[name]
    f = md.explain(_crash(name), step=0)
    assert f.location == module and f.evidence["module"] == module, f.message
    assert f.evidence["module_type"] == module_type and f.evidence["cause"] == cause
    assert f"`{module}`" in f.message
    missing = [w for w in words if w not in _text(f)]
    assert not missing, f"{missing} not in: {_text(f)}"


def test_given_names_still_win():
    exc = _crash("conv_stages")
    tb, conv = exc.__traceback__, None
    while tb is not None:
        conv = tb.tb_frame.f_locals.get("self") if isinstance(tb.tb_frame.f_locals.get("self"), nn.Conv2d) else conv
        tb = tb.tb_next
    f = diagnose_exception(exc, module_names={id(conv): "backbone.conv_c"})
    assert f.location == "backbone.conv_c"


def test_a_bare_module_is_named_by_its_class():
    layer = nn.Linear(512, 10)
    try:
        layer(torch.randn(4, 2048))
    except RuntimeError as exc:
        f = diagnose_exception(exc)
    assert f.location == "Linear" and f.evidence["module_type"] == "Linear"


def test_backward_error_without_names_is_placed_after_a_named_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid())
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            h = self.enc(x)
            h += 1  # in place on the sigmoid's output, which its backward needs
            return self.head(h)

    def train_step(model, x):  # the model is a local of a frame the traceback passes through
        model(x).sum().backward()

    try:
        train_step(Net(), torch.randn(3, 4))
    except RuntimeError as exc:
        f = diagnose_exception(exc)
    assert f.evidence["cause"] == "inplace_autograd" and f.evidence["near_module"] == "enc.0"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLACES))
def test_modeldebug_run_names_the_qualified_module(tmp_path, name):
    module, module_type, cause, _ = PLACES[name]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--", sys.executable,
                           str(SCRIPTS / f"{name}.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rep = Report.from_json((tmp_path / "r.json").read_text())
    (f,) = [f for f in rep.findings if f.kind == "runtime_error"]
    assert f.location == module and f.step == 0, f.message
    assert f.evidence["module_type"] == module_type and f.evidence["cause"] == cause


def test_saved_traceback_of_a_product_is_read_as_one():
    import traceback

    from modeldebug.diagnose import diagnose_text

    exc = _crash("attention_layers")
    f = diagnose_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    assert f.evidence["cause"] == "shape_mismatch" and "Batched matrix multiply" in f.message
    assert f.evidence["module_hint"] == "attn"
