"""Real crashes (torch raises for real on CPU) -> the runtime_error finding: cause, module, fix."""

from __future__ import annotations

import collections
import traceback
import warnings

import pytest

from diagnose_scenarios import SCENARIOS, Scenario, raise_scenario
from modeldebug.diagnose import CAUSES, diagnose_exception, diagnose_text
from modeldebug.types import Report, RunInfo


def _text(f) -> str:
    return " ".join([f.message] + [r.description + " " + (r.implementation or "") for r in f.recommendations])


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anomaly mode warns with the forward trace
        yield


def test_every_cause_is_covered_at_least_twice():
    counts = collections.Counter(s.cause for s in SCENARIOS)
    assert len(SCENARIOS) >= 20
    # device mismatches between cuda and cpu cannot happen here: test_text.py covers them from torch's messages
    assert all(counts[c] >= 2 for c in CAUSES), counts


@pytest.mark.parametrize("s", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(s: Scenario):
    exc, names = raise_scenario(s)
    f = diagnose_exception(exc, module_names=names, step=7)

    assert f.kind == "runtime_error" and f.severity == "high" and f.step == 7
    assert f.evidence["cause"] == s.cause, f.message
    assert f.evidence["error_type"] == type(exc).__name__
    assert f.evidence["error_message"] == str(exc)
    if s.module is not None:
        assert f.evidence["module"] == s.module
        assert f.location == s.module
        assert f.evidence["module_type"]
    else:  # raised in backward or in a bare function call: no module frame to name
        assert f.evidence["module"] is None
    if s.near_module:
        assert f.evidence["near_module"] == s.near_module
    text = _text(f)
    missing = [w for w in s.words if w not in text]
    assert not missing, f"{missing} not in: {text}"
    assert f.recommendations and all(r.type in ("fix", "optimization", "best_practice") for r in f.recommendations)
    for c in s.contract_causes:
        assert c in f.causes
    # the finding is plain JSON and fits the report contract
    Report(run=RunInfo(id="t", status="crashed"), findings=[f]).to_json()


@pytest.mark.parametrize("s", [s for s in SCENARIOS if s.module], ids=[s.id for s in SCENARIOS if s.module])
def test_module_inputs_and_parameters_are_described(s: Scenario):
    exc, names = raise_scenario(s)
    f = diagnose_exception(exc, module_names=names)
    ev = f.evidence
    for t in ev["inputs"] + ev["parameters"]:
        assert set(t) >= {"name", "shape", "dtype", "device"}
        assert isinstance(t["shape"], list)


def test_without_module_names_the_traceback_names_the_module():
    """The outermost module on the traceback is the model: it names the failing layer (the class
    names it when no module holds it, tests/diagnose/test_crash_places.py)."""
    s = next(s for s in SCENARIOS if s.id == "linear_after_flatten")
    exc, _ = raise_scenario(s)
    f = diagnose_exception(exc)
    assert f.evidence["module"] == "classifier.0" and f.evidence["module_type"] == "Linear"
    assert "nn.Linear(2048, 10)" in _text(f)
    params = {p["name"]: p for p in f.evidence["parameters"]}
    assert params["weight"]["shape"] == [10, 512] and params["weight"]["dtype"] == "torch.float32"
    assert f.evidence["inputs"][0]["shape"] == [4, 2048]


def test_the_model_itself_can_be_passed_for_names():
    from diagnose_scenarios import TextModel
    import torch

    model = TextModel(lstm_in=32)
    try:
        model(torch.randint(0, 100, (4, 10)))
    except RuntimeError as exc:
        f = diagnose_exception(exc, module_names=model)
    assert f.evidence["module"] == "rnn"


def test_the_finding_keeps_no_tensor_alive():
    import gc
    import weakref

    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(512, 10))
    x = torch.randn(4, 2048)
    alive = weakref.ref(x)
    try:
        model(x)
    except RuntimeError as exc:
        f = diagnose_exception(exc, module_names=model)
    del x
    gc.collect()
    assert alive() is None  # only shapes, dtypes and devices were kept
    assert f.evidence["inputs"][0]["shape"] == [4, 2048]


# Saved tracebacks of the same crashes: the text alone gives the cause and the sizes.
TEXT_CASES = {
    "linear_after_flatten": ("Linear", ["nn.Linear(2048, 10)"]),
    "conv_grayscale_input": ("Conv2d", ["nn.Conv2d(1, 16, kernel_size=3)"]),
    "lstm_input_size": ("RNN", ["input_size=16"]),  # rnn.py holds LSTM, GRU and RNN
    "linear_float64_from_numpy": ("Linear", ["torch.float64", ".float()"]),
    "cross_entropy_float_target": ("CrossEntropyLoss", ["target.long()"]),
    "relu_inplace_after_sigmoid": (None, ["Sigmoid", "[3, 8]", "nn.ReLU()"]),
    "rnn_hidden_kept_across_batches": (None, [".detach()"]),
    "pairwise_outer_difference": (None, ["16 TiB"]),
    "anomaly_sqrt_of_zero_distance": (None, ["PowBackward0"]),
    "embedding_index_too_large": ("Embedding", ["index", "num_embeddings"]),
    "cross_entropy_target_out_of_range": ("CrossEntropyLoss", ["[0, num_classes)", "found 12"]),
    "missing_batch_key": (None, ["KeyError", "pixel_values"]),
}


@pytest.mark.parametrize("sid", list(TEXT_CASES))
def test_saved_traceback_text(sid):
    s = next(s for s in SCENARIOS if s.id == sid)
    exc, _ = raise_scenario(s)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    f = diagnose_text(text)
    module_type, words = TEXT_CASES[sid]
    assert f.evidence["cause"] == s.cause
    assert f.evidence["from_text"] is True
    assert f.evidence["error_type"] == type(exc).__name__
    if module_type:
        assert f.evidence["module_type"] == module_type
    text_out = _text(f)
    assert all(w in text_out for w in words), text_out
    assert "cannot know" in f.message  # says what the text alone could not tell
    assert f.evidence["raised_at"] and "diagnose_scenarios.py" in f.evidence["raised_at"]
