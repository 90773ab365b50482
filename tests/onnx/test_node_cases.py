"""The ONNX project's own node test cases (built in memory by onnx.backend.test.loader).

Every case must go through ``analyze_model`` without crashing; the cases onnxruntime can run are
profiled, and the outputs ``find_nonfinite``'s session returns are checked against the expected
outputs the cases carry (so the all-values-as-outputs rewrite changes nothing).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from modeldebug.onnx import analyze_model, profile_execution  # noqa: E402
from modeldebug.onnx._common import make_session, with_all_outputs  # noqa: E402


@pytest.fixture(scope="module")
def node_cases():
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators divide by zero on purpose
        return load_model_tests(kind="node")


def _plain(case) -> bool:
    """Cases whose inputs and outputs are plain arrays (not sequences, optionals or maps)."""
    return bool(case.data_sets) and all(
        all(isinstance(a, np.ndarray) for a in ins) and all(isinstance(b, np.ndarray) for b in outs)
        for ins, outs in case.data_sets
    )


def _close(got, expected, rtol, atol) -> bool:
    if expected.dtype.kind in "fc":
        return got.shape == expected.shape and np.allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
    return got.shape == expected.shape and np.array_equal(got, expected)


def test_every_node_case(node_cases):
    assert len(node_cases) > 1000
    started = time.perf_counter()
    crashed, runnable, ran, wrong = [], 0, 0, []
    for case in node_cases:
        try:
            report = analyze_model(case.model)
        except Exception as exc:  # noqa: BLE001 - the point is to list every crash
            crashed.append(f"{case.name}: {exc!r}")
            continue
        if any(f.severity == "high" for f in report.findings) or not _plain(case):
            continue
        runnable += 1
        inputs, expected = case.data_sets[0]
        names = [i.name for i in case.model.graph.input][: len(inputs)]
        try:
            session = make_session(with_all_outputs(case.model, [o for n in case.model.graph.node for o in n.output]), optimization_level="disable")
            got = session.run([o.name for o in case.model.graph.output], dict(zip(names, inputs)))
        except Exception as exc:  # noqa: BLE001 - some cases are meant to fail at run time
            wrong.append(f"{case.name}: run failed: {str(exc)[:100]}")
            continue
        ran += 1
        if not all(_close(g, e, max(case.rtol, 1e-3), max(case.atol, 1e-5)) for g, e in zip(got, expected)):
            wrong.append(f"{case.name}: output differs")
    elapsed = time.perf_counter() - started
    assert not crashed, crashed[:20]
    assert ran > 900, (runnable, ran, wrong[:20])
    # onnxruntime itself disagrees with a few reference outputs; more than a handful means we broke something
    assert len(wrong) <= 0.03 * runnable, wrong[:40]
    print(f"{len(node_cases)} cases analyzed, {ran} run in {elapsed:.1f}s; {len(wrong)} differ: {wrong[:10]}")


def test_profile_runnable_node_cases(node_cases):
    profiled = 0
    for case in node_cases:
        if not _plain(case) or case.name.startswith(("test_bernoulli", "test_random")):
            continue
        if any(f.severity == "high" for f in analyze_model(case.model, check_shapes=False).findings):
            continue
        inputs, _ = case.data_sets[0]
        names = [i.name for i in case.model.graph.input][: len(inputs)]
        try:
            make_session(case.model)
        except Exception:  # noqa: BLE001 - what the session refuses is check's business
            continue
        try:
            report = profile_execution(case.model, inputs=dict(zip(names, inputs)), warmup=0, iterations=1)
        except Exception as exc:  # noqa: BLE001
            if "fails to run" in str(exc):
                continue
            raise
        assert report.metrics.profiled_runs == 1
        assert report.metrics.latency_ms.median >= 0
        profiled += 1
    assert profiled > 900
