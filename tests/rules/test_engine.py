"""The engine: registry, presets, run_rules' robustness, a healthy run, and speed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
from builders import build, healthy_columns

from modeldebug.config import DebuggingConfig
from modeldebug.evidence import Evidence
from modeldebug.rules import LEVELS, Rule, preset, register, registry, run_rules, unregister
from modeldebug.types import Finding, Report, RunInfo

ALL_KINDS = {
    "exploding_gradient", "vanishing_gradient", "nan_or_inf", "dead_relu", "saturated_activation",
    "poor_weight_init", "unchanged_weights", "loss_not_decreasing", "oscillating_loss", "gradient_accumulation",
    "overfitting", "data_issue", "memory_growth", "input_bottleneck", "slow_operation", "memory_pressure",
}


def test_every_training_and_resource_kind_has_a_rule():
    assert {cls.kind for cls in registry().values()} >= ALL_KINDS


@pytest.mark.parametrize("rule_id", sorted(registry()))
def test_rule_is_declared(rule_id):
    cls = registry()[rule_id]
    assert cls.id == rule_id and cls.kind and cls.reads and cls.level in LEVELS
    doc = cls.__doc__ or ""
    for word in ("Reads", "Fires", "Recommends"):
        assert word in doc, f"{rule_id}'s docstring should say what it {word.lower()}"
    cls()  # default thresholds construct


def test_presets_grow_with_the_level():
    ids = [{r.id for r in preset(level)} for level in LEVELS]
    assert ids[0] < ids[1] <= ids[2]
    assert "nan_or_inf" in ids[0] and "dead_relu" in ids[1] - ids[0]
    with pytest.raises(ValueError, match="level"):
        preset("everything")


def test_run_rules_uses_the_config_level():
    cols = healthy_columns(n_steps=100)
    cols["layer_stats"]["dead_frac"] = np.where(np.isnan(cols["layer_stats"]["dead_frac"]), np.nan, 0.95)
    ev = build(cols, config=DebuggingConfig(analysis_level="basic"))
    assert not [f for f in run_rules(ev) if f.kind == "dead_relu"]
    ev = build(cols, config=DebuggingConfig(analysis_level="detailed"))
    assert [f for f in run_rules(ev) if f.kind == "dead_relu"]


def test_a_rule_that_raises_is_logged_and_skipped(caplog):
    @dataclass
    class Broken(Rule):
        id = "broken"
        kind = "data_issue"
        reads = ("steps.loss",)

        def check(self, ev):
            raise RuntimeError("boom")

    @dataclass
    class Fine(Rule):
        id = "fine"
        kind = "data_issue"
        reads = ("steps.loss",)

        def check(self, ev):
            return [self.finding(severity="low", message="ok")]

    with caplog.at_level(logging.ERROR, logger="modeldebug.rules"):
        findings = run_rules(Evidence.build(), rules=[Broken(), Fine])
    assert [f.message for f in findings] == ["ok"]
    assert "broken" in caplog.text and "boom" in caplog.text


def test_users_register_their_own_rule():
    @dataclass
    class TinyBatches(Rule):
        """Reads steps.input_std. Fires below ``min_std``. Recommends bigger batches."""

        id = "tiny_batches_test"
        kind = "data_issue"
        reads = ("steps.input_std",)
        level = "comprehensive"
        min_std: float = 0.5

        def check(self, ev):
            std = ev.steps.input_std
            if len(std) and np.nanmedian(std) < self.min_std:
                return [self.finding(severity="low", message=f"input std {np.nanmedian(std):.2g}")]
            return []

    register(TinyBatches)
    try:
        assert "tiny_batches_test" in {r.id for r in preset("comprehensive")}
        assert "tiny_batches_test" not in {r.id for r in preset("detailed")}
        ev = Evidence.build(steps=[{"step": i, "input_std": 0.1} for i in range(5)])
        assert [f.message for f in run_rules(ev, rules=[TinyBatches(min_std=0.2)])] == ["input std 0.1"]
    finally:
        unregister("tiny_batches_test")
    with pytest.raises(TypeError, match="Rule"):
        register(object)


def test_findings_come_most_severe_first():
    @dataclass
    class Two(Rule):
        id = "two"
        kind = "data_issue"
        reads = ("steps",)

        def check(self, ev):
            return [self.finding(severity="low", message="a", step=1),
                    self.finding(severity="high", message="b", step=9)]

    assert [f.severity for f in run_rules(Evidence.build(), rules=[Two()])] == ["high", "low"]


def _empty_like():
    return {
        "empty": Evidence.build(),
        "one_step": Evidence.build(steps=[{"step": 0, "loss": 2.3, "grad_norm": 1.0}]),
        "three_steps": Evidence.build(steps=[{"step": i, "loss": 2.3} for i in range(3)],
                                      layer_stats=[{"step": 0, "layer": "fc"}], param_stats=[{"step": 0, "param": "w"}]),
        "all_nan_columns": Evidence.build(steps=[{"step": i} for i in range(200)],
                                          layer_stats=[{"step": i, "layer": "fc"} for i in range(0, 200, 10)],
                                          param_stats=[{"step": i, "param": "fc.weight"} for i in range(0, 200, 10)],
                                          validation=[{"step": i, "loss": float("nan")} for i in range(0, 200, 50)]),
    }


@pytest.mark.parametrize("case", list(_empty_like()))
@pytest.mark.parametrize("rule_id", sorted(registry()))
def test_rules_survive_missing_data(rule_id, case):
    ev = _empty_like()[case]
    findings = registry()[rule_id]().check(ev)
    assert all(isinstance(f, Finding) for f in findings)
    assert not [f for f in findings if f.severity in ("high", "medium")], [f.message for f in findings]


def test_healthy_2000_step_run_has_no_medium_or_high_finding():
    ev = build(healthy_columns(n_steps=2000, every=10, seed=1))
    findings = run_rules(ev, rules=preset("comprehensive"))
    bad = [f"{f.kind}/{f.severity}: {f.message}" for f in findings if f.severity in ("high", "medium")]
    assert not bad, bad


def test_findings_fit_the_report_contract():
    cols = healthy_columns(n_steps=200)
    cols["steps"]["grad_norm"][100:] = 1e6
    cols["steps"]["loss"][100:] = 50.0
    findings = run_rules(build(cols))
    assert findings
    report = Report(run=RunInfo(id="x"), findings=findings)
    assert Report.from_json(report.to_json()) == report


def _big_evidence(n_steps=10_000, n_layers=100, every=100):
    """10,000 steps; 100 layers x 1,000 sampled steps = 100k layer rows (and 100k param rows)."""
    from modeldebug.evidence import LayerInfo, OptimizerInfo, ParamInfo

    rng = np.random.default_rng(0)
    st = np.arange(n_steps)
    names = [f"blocks.{i}.fc" if i % 2 == 0 else f"blocks.{i}.act" for i in range(n_layers)]
    layers = {n: LayerInfo(n, "Linear" if n.endswith("fc") else "ReLU", i, 4160,
                           "Linear(in_features=64, out_features=64, bias=True)" if n.endswith("fc") else "ReLU()")
              for i, n in enumerate(names)}
    pnames = [f"{n}.weight" for n in names if n.endswith("fc")] + [f"{n}.bias" for n in names if n.endswith("fc")]
    params = {p: ParamInfo(p, p.rsplit(".", 1)[0], [64, 64] if p.endswith("weight") else [64],
                           4096 if p.endswith("weight") else 64, True, True, 0.01) for p in pnames}
    sampled = st[:: n_steps // 1000]
    k = len(sampled)
    cols = {
        "steps": {"step": st, "loss": (2 * np.exp(-st / 2000) + 0.1) * (1 + 0.1 * rng.standard_normal(n_steps)),
                  "grad_norm": 1 + 0.1 * rng.random(n_steps), "data_s": np.full(n_steps, 0.001),
                  "step_s": np.full(n_steps, 0.01), "rss_bytes": 5e8 + 1e6 * rng.random(n_steps),
                  "input_mean": np.zeros(n_steps), "input_std": np.ones(n_steps), "stale_grad_norm": np.zeros(n_steps),
                  "lr": np.full(n_steps, 0.01)},
        "layer_stats": {"step": np.repeat(sampled, n_layers), "layer": np.tile(np.array(names), k),
                        "fwd_time_s": np.full(k * n_layers, 1e-4), "dead_frac": rng.random(k * n_layers) * 0.2,
                        "sat_frac": np.full(k * n_layers, np.nan), "grad_norm": np.full(k * n_layers, 0.1),
                        "grad_zero_frac": np.full(k * n_layers, 0.3)},
        "param_stats": {"step": np.repeat(sampled, len(pnames)), "param": np.tile(np.array(pnames), k),
                        "norm": np.full(k * len(pnames), 4.0), "grad_norm": np.full(k * len(pnames), 0.1),
                        "update_ratio": np.full(k * len(pnames), 1e-3), "has_grad": np.ones(k * len(pnames), bool),
                        "changed": np.ones(k * len(pnames), bool)},
        "validation": {"step": np.arange(1000, n_steps + 1, 1000), "loss": np.linspace(1, 0.3, 10)},
        "layers": layers, "params": params, "optimizers": [OptimizerInfo("SGD", [{"lr": 0.01}])],
    }
    return build(cols)


def test_all_rules_are_fast_on_10000_steps_by_100_layers(cpu_clock):
    ev = _big_evidence()
    assert len(ev.layer_stats) == 100_000
    start = cpu_clock()
    findings = run_rules(ev, rules=preset("comprehensive"))
    elapsed = cpu_clock() - start
    print(f"\nall {len(preset('comprehensive'))} rules on 10,000 steps x 100 layers "
          f"({len(ev.layer_stats)} layer rows, {len(ev.param_stats)} param rows): {elapsed * 1e3:.0f} ms")
    assert elapsed < 3.0  # CPU seconds: generous for a slow CI core; about 0.1-0.3 s here
    assert not [f for f in findings if f.severity in ("high", "medium")]


# --- reads: declared, validated, used to leave out rules with nothing to read ----------------------


def test_register_rejects_reads_that_evidence_does_not_have():
    for bad in ("steps.losss", "stepz", "events.no_such_event", "config.no_such_option"):
        @dataclass
        class Typo(Rule):
            id = "typo_test"
            kind = "data_issue"
            reads = (bad,)

        with pytest.raises(ValueError, match="reads"):
            register(Typo)
    assert "typo_test" not in registry()


@pytest.mark.parametrize("rule_id", sorted(registry()))
def test_a_rule_with_nothing_to_read_finds_nothing(rule_id):
    # what lets the preset leave out a rule whose declared evidence is absent
    assert registry()[rule_id]().check(Evidence.build()) == []


def test_preset_for_an_evidence_leaves_out_rules_with_nothing_to_read():
    single = build(healthy_columns(n_steps=50))
    ids = {r.id for r in preset("comprehensive", single)}
    assert {"distributed_desync", "straggler_rank", "rank_failure", "uneven_batches", "runtime_error"}.isdisjoint(ids)
    assert {"loss_not_decreasing", "dead_relu", "nan_or_inf"} <= ids
    ranks = Evidence.build(ranks=[{"step": 10, "rank": r} for r in range(2)],
                           events=[{"step": 3, "type": "traceback", "data": {"text": "ValueError: x"}}])
    ids = {r.id for r in preset("comprehensive", ranks)}
    assert {"distributed_desync", "straggler_rank", "runtime_error"} <= ids and "rank_failure" not in ids
    assert {r.id for r in preset("comprehensive")} == set(registry())
