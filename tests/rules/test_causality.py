"""Root cause over symptoms (rules/causality.py): findings linked to the finding they follow from by
the pair table and the evidence, causes that agree with the root, and one learning-rate direction."""

from __future__ import annotations

from typing import get_args

import numpy as np
from builders import build, healthy_columns

from modeldebug.analysis import find
from modeldebug.findings import fix, make_finding
from modeldebug.rules.causality import LINKS, link_findings
from modeldebug.runner import RunResult
from modeldebug.types import FindingKind, Report, RunInfo


def _f(kind, step=None, severity="high", causes=(), location=None, evidence=None, recs=(), confidence=0.8):
    return make_finding(kind, severity=severity, message=f"{kind} seen.", step=step, causes=causes,
                        location=location, evidence=evidence, recommendations=recs, confidence=confidence)


def _ev():
    return build(healthy_columns(n_steps=60))


def _by_id(findings):
    return {f.id: f for f in findings}


def _missing_zero_grad_columns():
    """A run whose gradients are never zeroed: every step starts with the sum of the earlier ones,
    the gradient norm grows step after step and the loss, after a short fall, climbs and swings."""
    c = healthy_columns()
    s = c["steps"]
    n = len(s["step"])
    gn = 1.0 + 0.5 * np.arange(n)
    s["grad_norm"], s["stale_grad_norm"] = gn, np.where(np.arange(n) > 0, gn - 1.0, 0.0)
    rng = np.random.default_rng(1)
    base = np.where(np.arange(n) < 30, 2.3 - 0.03 * np.arange(n), 1.4 + 0.01 * np.arange(n))
    s["loss"] = base * (1 + 0.4 * rng.standard_normal(n)).clip(0.2)
    return c


def test_every_pair_names_known_kinds():
    kinds = set(get_args(FindingKind))
    for link in LINKS:
        assert link.root in kinds and link.consequence in kinds, link
        assert link.why and not link.why.endswith(".")
    # A pair may have several mechanisms (each with its own check), never the same one twice.
    assert len({(link.root, link.consequence, link.why) for link in LINKS}) == len(LINKS)


def test_missing_zero_grad_is_the_root_of_what_it_causes():
    findings = find(build(_missing_zero_grad_columns()))
    kinds = {f.kind for f in findings}
    assert "gradient_accumulation" in kinds and len(findings) >= 2, [f.kind for f in findings]
    report = Report(run=RunInfo(id="r"), findings=findings)
    (story,) = [s for s in report.stories() if s.root.kind == "gradient_accumulation"]
    serious = [f for f in findings if f.severity != "low"]
    assert {f.id for f in serious} <= {f.id for f in story.findings}
    for f in story.findings:
        assert f.causes[0] == "missing_zero_grad", (f.kind, f.causes)
    for c in story.consequences:
        assert f"Follows from {c.finding.caused_by}" in c.finding.message


def test_a_healthy_run_has_no_links():
    findings = find(build(healthy_columns()))
    assert all(f.caused_by is None for f in findings)
    assert len({f.id for f in findings}) == len(findings)


def test_a_consequence_starts_at_or_after_its_root():
    before = link_findings([_f("gradient_accumulation", 40, causes=["missing_zero_grad"]),
                            _f("oscillating_loss", 10, causes=["learning_rate_too_high"])], _ev())
    assert [f.caused_by for f in before] == [None, None]
    after = link_findings([_f("gradient_accumulation", 1, causes=["missing_zero_grad"]),
                           _f("oscillating_loss", 10, causes=["learning_rate_too_high"])], _ev())
    assert after[1].caused_by == "gradient_accumulation"
    assert after[1].causes == ["missing_zero_grad"]  # the summed gradients, not the lr of 0.01, make the swings
    assert after[0].caused_by is None and after[0].severity == "high"


def test_a_verdict_over_the_whole_run_follows_a_root_from_its_first_half():
    """loss_not_decreasing names the start of its first window (step 5 here) but judges the run: a
    schedule that collapsed the lr at step 8 of 60 precedes it; one at step 50 does not."""
    def linked(collapse_step):
        return link_findings([_f("lr_schedule_misuse", collapse_step, causes=["scheduler_misuse"]),
                              _f("loss_not_decreasing", 5, causes=["learning_rate_too_low"])], _ev())[1]

    assert linked(8).caused_by == "lr_schedule_misuse" and linked(8).causes[0] == "scheduler_misuse"
    assert linked(50).caused_by is None


def test_an_output_relu_dead_under_unreachable_targets_follows_from_the_head():
    def dead(at):
        return link_findings([_f("wrong_loss_input", 0, causes=["wrong_loss_function"], location="head.act"),
                              _f("dead_relu", 200, causes=["learning_rate_too_high", "bad_weight_init"],
                                 location=at)], _ev())[1]

    assert dead("head.act").caused_by == "wrong_loss_input"
    assert dead("head.act").causes[0] == "wrong_loss_function"
    assert dead("body.1").caused_by is None  # a ReLU elsewhere died of something else


def test_a_pair_with_two_mechanisms_links_by_the_one_whose_check_holds():
    def oscillating(cause):
        return link_findings([_f("data_issue", None, causes=[cause]),
                              _f("oscillating_loss", 30, causes=["learning_rate_too_high", "unnormalized_inputs"])],
                             _ev())[1]

    unshuffled = oscillating("unshuffled_data")
    assert "batches of one class" in unshuffled.message and unshuffled.causes[0] == "unshuffled_data"
    assert "learning_rate_too_high" not in unshuffled.causes  # explained: the swings are the data's order
    assert "ill-conditioned" in oscillating("unnormalized_inputs").message
    assert oscillating("label_problem").caused_by is None


def test_a_link_chosen_stays_while_the_chain_above_it_changes_causes():
    """oscillating_loss follows exploding_gradient because both name the lr; once the chain's root
    (gradient accumulation) has made exploding_gradient name missing_zero_grad, that pair's check
    no longer holds, and the story must still be told (not fall back to unlinked findings)."""
    out = link_findings([_f("gradient_accumulation", 1, causes=["missing_zero_grad"]),
                         _f("exploding_gradient", 10, causes=["learning_rate_too_high"]),
                         _f("oscillating_loss", 20, causes=["learning_rate_too_high"])], _ev())
    assert [f.caused_by for f in out] == [None, "gradient_accumulation", "exploding_gradient"]
    assert out[2].causes[0] == "missing_zero_grad"


def test_a_root_explains_causes_away_unless_the_evidence_shows_them():
    lower = fix("Lower the learning rate about 10x: lr is 0.01; try 0.001.")
    stable = fix("Use numerically stable ops: log_softmax/CrossEntropyLoss instead of log(softmax).")
    clip = fix("Clip the gradient norm between backward() and step().")
    findings = [_f("gradient_accumulation", 1, causes=["missing_zero_grad"]),
                _f("nan_or_inf", 59, causes=["learning_rate_too_high", "numerically_unstable_op", "bad_weight_init"],
                   recs=[lower, clip, stable])]
    nan = link_findings(findings, _ev())[1]
    assert nan.causes == ["missing_zero_grad", "bad_weight_init"]
    assert [r.description for r in nan.recommendations] == [clip.description]
    cols = healthy_columns(n_steps=60)
    cols["optimizers"][0].param_groups[0]["lr"] = 5.0  # far above SGD's usual range: the lr is at fault too
    nan = link_findings(findings, build(cols))[1]
    assert nan.causes[:2] == ["missing_zero_grad", "learning_rate_too_high"] and lower in nan.recommendations
    # an op the NaN's own rule names first (its replay found it) is never explained away
    found_op = _f("nan_or_inf", 59, causes=["numerically_unstable_op", "learning_rate_too_high"], recs=[stable])
    nan = link_findings([findings[0], found_op], _ev())[1]
    assert nan.causes == ["missing_zero_grad", "numerically_unstable_op"] and nan.recommendations == [stable]


def test_the_pair_needs_its_evidence():
    ev = _ev()
    root = _f("exploding_gradient", 5, causes=["learning_rate_too_high"])
    died = _f("dead_relu", 20, causes=["learning_rate_too_high"], location="net.1", evidence={"dead_at_start": False})
    born_dead = _f("dead_relu", 20, causes=["bad_weight_init"], location="net.1", evidence={"dead_at_start": True})
    assert link_findings([root, died], ev)[1].caused_by == "exploding_gradient"
    assert link_findings([root, born_dead], ev)[1].caused_by is None
    # unnormalized inputs give saturation only where the saturation rule saw the inputs off too
    data = _f("data_issue", None, causes=["unnormalized_inputs"])
    sat = _f("saturated_activation", 3, causes=["unnormalized_inputs", "bad_weight_init"], location="net.1")
    other = _f("saturated_activation", 3, causes=["bad_weight_init"], location="net.1")
    assert link_findings([data, sat], ev)[1].caused_by == "data_issue"
    assert link_findings([data, other], ev)[1].caused_by is None


def test_a_chain_is_followed_to_its_root():
    out = link_findings([
        _f("gradient_accumulation", 1, causes=["missing_zero_grad"]),
        _f("exploding_gradient", 40, causes=["learning_rate_too_high", "bad_weight_init"]),
        _f("nan_or_inf", 59, causes=["learning_rate_too_high", "numerically_unstable_op"]),
    ], _ev())
    ids = _by_id(out)
    assert ids["exploding_gradient"].caused_by == "gradient_accumulation"
    assert ids["nan_or_inf"].caused_by == "exploding_gradient"  # its own rule ranks the lr cause first
    assert ids["nan_or_inf"].causes[0] == "missing_zero_grad"  # the root's cause leads the story
    (story,) = Report(run=RunInfo(id="r"), findings=out).stories()
    assert story.root.kind == "gradient_accumulation"
    assert [(c.finding.kind, c.depth) for c in story.consequences] == [("exploding_gradient", 1), ("nan_or_inf", 2)]


def test_causes_and_recommendations_that_contradict_the_root_go():
    lr_low = fix("Raise the learning rate: lr is 0.001; try 0.01.")
    remove = fix("Remove the final Softmax.")
    out = link_findings([
        _f("exploding_gradient", 2, causes=["learning_rate_too_high"], recs=[fix("Lower the learning rate about 10x.")]),
        _f("loss_not_decreasing", 5, causes=["bad_weight_init", "learning_rate_too_low"], recs=[remove, lr_low],
           evidence={"rel_change": 0.5}),
    ], _ev())
    cons = out[1]
    assert cons.caused_by == "exploding_gradient"
    assert cons.causes == ["learning_rate_too_high", "bad_weight_init"]
    assert [r.description for r in cons.recommendations] == [remove.description]


def test_one_learning_rate_direction_per_report():
    out = link_findings([
        _f("exploding_gradient", 2, causes=["learning_rate_too_high", "bad_weight_init"]),
        _f("vanishing_gradient", 1, severity="medium", causes=["saturating_activation_choice", "learning_rate_too_low"],
           recs=[fix("Raise the learning rate (about 0.05 is typical for this optimizer).")]),
        _f("unchanged_weights", 1, severity="medium", causes=["learning_rate_too_low"]),
    ], _ev())
    ids = _by_id(out)
    assert ids["vanishing_gradient"].causes == ["saturating_activation_choice"]
    assert ids["vanishing_gradient"].recommendations == []
    assert ids["unchanged_weights"].causes == ["learning_rate_too_low"]  # never a finding's only cause


def test_ids_are_unique_and_name_the_location_when_a_kind_repeats():
    out = link_findings([_f("saturated_activation", 3, location="net.1"), _f("saturated_activation", 3, location="net.3"),
                         _f("saturated_activation", 3, location="net.3"), _f("nan_or_inf", 4)], _ev())
    assert [f.id for f in out] == ["saturated_activation@net.1", "saturated_activation@net.3",
                                   "saturated_activation@net.3#2", "nan_or_inf"]


def test_links_change_no_severity_and_fail_on_counts_every_finding():
    findings = [_f("gradient_accumulation", 1, severity="medium", causes=["missing_zero_grad"]),
                _f("loss_not_decreasing", 5, severity="high", causes=["missing_zero_grad"])]
    out = link_findings(findings, _ev())
    assert [f.severity for f in out] == ["medium", "high"] and out[1].caused_by == "gradient_accumulation"
    result = RunResult(report=Report(run=RunInfo(id="r"), findings=out), exit_code=0)
    assert result.cli_exit_code("high") == 1  # the consequence is HIGH: it still fails the job
    # the story is ranked by its most severe finding
    story = Report(run=RunInfo(id="r"), findings=out + [_f("memory_growth", 3, severity="medium")]).stories()[0]
    assert story.root.kind == "gradient_accumulation"


def test_stories_survive_a_loop_in_caused_by():
    a = _f("exploding_gradient", 1).model_copy(update={"id": "a", "caused_by": "b"})
    b = _f("nan_or_inf", 2).model_copy(update={"id": "b", "caused_by": "a"})
    stories = Report(run=RunInfo(id="r"), findings=[a, b]).stories()
    assert sorted(f.id for s in stories for f in s.findings) == ["a", "b"]


def test_a_check_that_raises_links_nothing(monkeypatch):
    import modeldebug.rules.causality as causality

    def broken(root, cons, ev):
        raise KeyError("missing")

    link = causality.Link("gradient_accumulation", "oscillating_loss", "why", broken)
    monkeypatch.setitem(causality._BY_PAIR, ("gradient_accumulation", "oscillating_loss"), link)
    monkeypatch.setattr(causality, "LINKS", causality.LINKS + (link,))
    out = link_findings([_f("gradient_accumulation", 1), _f("oscillating_loss", 5)], _ev())
    assert out[1].caused_by is None


def test_opposite_lr_guesses_both_go_unless_the_lr_itself_decides():
    lower, higher = fix("Lower the learning rate about 10x."), fix("Raise the learning rate: lr is 0.01; try 0.1.")
    findings = [_f("exploding_gradient", 0, severity="medium", causes=["unnormalized_inputs", "learning_rate_too_high"],
                   recs=[lower]),
                _f("loss_not_decreasing", 5, causes=["unnormalized_inputs", "learning_rate_too_low"], recs=[higher])]
    out = link_findings(findings, _ev())
    assert [f.causes for f in out] == [["unnormalized_inputs"], ["unnormalized_inputs"]]
    assert [f.recommendations for f in out] == [[], []]
    cols = healthy_columns(n_steps=60)
    cols["optimizers"][0].param_groups[0]["lr"] = 1e-7  # below SGD's usual range: the lr is too low
    out = link_findings(findings, build(cols))
    assert [f.causes for f in out] == [["unnormalized_inputs"], ["unnormalized_inputs", "learning_rate_too_low"]]


def test_a_setup_fault_is_the_root_whatever_step_its_finding_names():
    # the input statistics are judged at step 1, the gradients blew up at step 0: the data came first
    out = link_findings([_f("data_issue", 1, severity="medium", causes=["unnormalized_inputs"]),
                         _f("exploding_gradient", 0, causes=["unnormalized_inputs", "learning_rate_too_high"])], _ev())
    assert out[1].caused_by == "data_issue"
    # a dynamics finding gets no such head start
    out = link_findings([_f("exploding_gradient", 9, causes=["learning_rate_too_high"]),
                         _f("nan_or_inf", 3, causes=["learning_rate_too_high"])], _ev())
    assert out[1].caused_by is None


def test_linking_twice_changes_nothing():
    once = link_findings([_f("gradient_accumulation", 1, causes=["missing_zero_grad"]),
                          _f("oscillating_loss", 10, causes=["learning_rate_too_high"])], _ev())
    assert link_findings(once, _ev()) == once
