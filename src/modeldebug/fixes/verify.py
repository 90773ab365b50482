"""`modeldebug fix`: probe the script, re-run it once per candidate fix and once unfixed, compare.

Every run is the same command watched as `modeldebug run` watches it, from the same seeds, ended
cleanly once ``steps`` optimizer steps have closed (``fixes/child.py``). The probe's root findings
(``Report.stories()``: roots, not their consequences) give the candidates (``fixes/candidates.py``).
A candidate is verified when, in its re-run, the findings it addresses are gone, no new medium or
high finding appears, and the training loss at the end of the window is lower than the unfixed
runs' by more than noise (the two unfixed runs' difference, or the end segments' standard error
when the runs repeat exactly); a validation loss, when the script evaluates, must not get worse.
A probe's loss_not_decreasing in a window cut from a longer run is confirmed on a window 4x
longer first (a slow start is no fault).
A candidate rejected only because its loss is not lower yet (the finding gone, nothing new) is
judged again over a window 4x longer when the script had more to run: a fix that starts slower
(standardised inputs, gradients no longer summed across steps) overtakes later. Such a fix, when
still rejected (not for a crash or its finding still there), is tried once more with the learning
rate retuned for it (x10: the script's rate was tuned on the summed gradients or the raw input
scale). A mitigation (clipping, LeakyReLU: the symptom treated) is rejected when a fix for the
finding's cause is verified beside it, and a verified fix is rejected when another verified one
also removes its findings and leaves strictly fewer behind (they followed from the other's root).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from modeldebug.fixes import DEFAULT_CANDIDATES, DEFAULT_STEPS
from modeldebug.fixes.candidates import Candidate, build, retuned
from modeldebug.fixes.child import ENV_FIX, ENV_SEED, ENV_STOP
from modeldebug.fixes.patch import Sites
from modeldebug.fixes.patch import make as make_patch
from modeldebug.fixes.sites import ENV_SITES
from modeldebug.types import Fix, Report

END_FRACTION = 0.2  # the end of the window: its last fifth of the loss points
MIN_END_POINTS = 3
VAL_FLOOR = 0.01
LONGER_WINDOW = 4  # a probe that finds nothing in its window looks again in one this many times longer
SHOWN = ("medium", "high")
NOT_LOWER = "the training loss is not lower"  # (the one rejection a longer window may overturn)
CRASHED, STILL_FOUND = "the script crashed", "still found"
# Findings a window cut from a longer run can make up (the loss has not fallen yet): confirmed on
# a window LONGER_WINDOW times longer before candidates are tried for them
CONFIRM_LONGER = frozenset({"loss_not_decreasing"})


@dataclass
class Window:
    """One run of the window: its report, its end losses, how it ended."""

    report: Report | None
    exit_code: int
    seconds: float
    log: str = ""
    sites: Sites | None = None  # the probe's: where the script builds its optimizer, calls backward()

    @property
    def loss(self) -> tuple[float, float] | None:
        """The training loss at the end of the window (median, standard error), None when not seen."""
        training = self.report.training if self.report is not None else None
        series = training.series if training is not None else None
        return _end(series.loss if series is not None else [])

    @property
    def val_loss(self) -> float | None:
        training = self.report.training if self.report is not None else None
        validation = training.validation if training is not None else None
        values = [v for v in (validation.loss if validation is not None else []) if v is not None]
        return values[-1] if values else None

    def kinds(self) -> list[str]:
        if self.report is None:
            return []
        found = [f.kind for f in self.report.shown_findings() if f.source == "rules" and f.severity in SHOWN]
        return sorted(set(found))

    def crash_line(self) -> str:
        lines = [ln.strip() for ln in self.log.splitlines() if ln.strip()]
        return lines[-1][:200] if lines else f"exit code {self.exit_code}"


@dataclass
class FixSession:
    """What `modeldebug fix` found: the probe, the fixes tried, and the verdict in one sentence."""

    probe: Window | None
    fixes: list[Fix] = field(default_factory=list)
    verdict: str = ""
    seconds: float = 0.0
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # each fix's candidate spec, by its change

    @property
    def report(self) -> Report | None:
        return self.probe.report if self.probe is not None else None


def _end(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Median and its standard error (from the median absolute deviation: a spike or two in the
    segment moves neither) of the last fifth of the loss points; NaN when any is non-finite there
    (the run diverged), None when no loss was recorded."""
    points = [math.nan if v is None else float(v) for v in values]
    if not points:
        return None
    n = max(MIN_END_POINTS, math.ceil(len(points) * END_FRACTION))
    tail = points[-n:]
    if not all(math.isfinite(v) for v in tail):
        return (math.nan, 0.0)
    middle = statistics.median(tail)
    mad = statistics.median(abs(v - middle) for v in tail)
    # 1.4826 MAD estimates a normal sigma; the median's standard error is 1.2533 sigma / sqrt(n)
    return (middle, 1.4826 * 1.2533 * mad / math.sqrt(len(tail)))


def _window(command: Sequence[str], steps: int, spec: dict[str, Any] | None, store: Path, config,
            sites: Path | None = None) -> Window:
    from modeldebug.runner import run_script

    env = {ENV_STOP: str(steps), ENV_SEED: "0", ENV_FIX: json.dumps(spec or {"kind": "none"})}
    if sites is not None:  # where the script's lines are (fixes/sites.py), for the diffs
        env[ENV_SITES] = str(sites)
    started = time.time()
    with tempfile.TemporaryFile("w+") as log:
        try:
            result = run_script(command, config=config, store_path=store, show_status=False,
                                extra_env=env, output=log)
        except ValueError as exc:  # the command could not start
            return Window(None, 127, time.time() - started, str(exc))
        log.seek(0)
        text = log.read()[-20000:]
    return Window(result.report, result.exit_code, time.time() - started, text)


def run_fix(
    command: Sequence[str],
    *,
    steps: int = DEFAULT_STEPS,
    max_candidates: int = DEFAULT_CANDIDATES,
    config=None,
    store_path: str | os.PathLike | None = None,
    on_window: Callable[[str], None] | None = None,
) -> FixSession:
    """Probe ``command`` for ``steps`` steps, then try the candidates for its root findings.

    ``store_path``: keep every run in this run store (default: a temporary one, removed after);
    ``on_window(text)``: told before each run starts (the CLI's progress line)."""
    started = time.time()
    tell = on_window or (lambda text: None)
    with tempfile.TemporaryDirectory(prefix="modeldebug-fix-") as tmp:
        store = Path(store_path) if store_path else Path(tmp) / "runs.db"
        run = lambda spec: _window(command, steps, spec, store, config)  # noqa: E731
        tell("probe: the script unfixed")
        probe = _window(command, steps, None, store, config, sites=Path(tmp) / "sites.json")
        if not _nothing_to_verify(probe) and not _roots(probe) and _cut_by_window(probe, steps):
            # Nothing yet, and the script had more to run: a symptom that comes later (a warm-up
            # past the stable rate) is looked for in a longer window, used for every run after.
            steps *= LONGER_WINDOW
            tell(f"probe: nothing found; the script unfixed for {steps} steps")
            probe = _window(command, steps, None, store, config, sites=Path(tmp) / "sites.json")
        probe.sites = Sites.load(Path(tmp) / "sites.json")
        session = FixSession(probe)
        unverifiable = _nothing_to_verify(probe)
        if unverifiable:
            session.verdict = f"nothing to verify: {unverifiable}"
        else:
            roots, longer, gone = _roots(probe), None, []
            if _cut_by_window(probe, steps) and any(r.kind in CONFIRM_LONGER for r in roots):
                # A loss that has not fallen yet in a window cut from a longer run may fall later
                # (a slow start): such a finding is kept only if a window 4x longer still has it.
                tell(f"probe: the script unfixed for {steps * LONGER_WINDOW} steps, to confirm")
                longer = _window(command, steps * LONGER_WINDOW, None, store, config)
                if longer.report is not None and longer.exit_code == 0:
                    gone = sorted({r.kind for r in roots if r.kind in CONFIRM_LONGER} - set(longer.kinds()))
                    roots = [r for r in roots if r.kind not in gone]
            candidates = build(roots, max_candidates, _probe_facts(store, probe.report))
            if not roots and gone:
                session.verdict = (f"no fix needed: the {', '.join(gone)} of the first {steps} steps is gone over "
                                   f"{steps * LONGER_WINDOW} (the loss falls later)")
            elif not roots:
                session.verdict = (f"no fix needed: no medium or high finding in the first {steps} steps "
                                   f"(a symptom that comes later needs a longer --steps)"
                                   if _cut_by_window(probe, steps) else
                                   f"no fix needed: no medium or high finding in the whole run "
                                   f"({probe.report.run.steps} steps)")
            elif not candidates:
                kinds = ", ".join(sorted({f.kind for f in roots}))
                session.verdict = f"no candidate fix for the root findings ({kinds}) yet"
            else:
                tell("noise: the script unfixed, again")
                trials = _Trials(command, steps, store, config, probe, run(None), tell, longer)
                judged: list[Candidate] = []
                for candidate in candidates:
                    tried = trials.judge(candidate)
                    pending = [retuned(candidate)] if not tried.verified and _may_retune(tried) else []
                    session.fixes.append(tried)
                    judged.append(candidate)
                    for again in filter(None, pending):
                        session.fixes.append(trials.judge(again))
                        judged.append(again)
                session.specs = {c.change: c.spec for c in judged}
                _mitigations_second(session.fixes, judged)
                _dominated_second(session.fixes)
                session.fixes.sort(key=_rank)
                verified = sum(f.verified for f in session.fixes)
                session.verdict = (f"{verified} of {len(session.fixes)} candidate fixes verified" if verified
                                   else f"no candidate fix verified ({len(session.fixes)} tried)")
    session.seconds = time.time() - started
    if session.report is not None and session.fixes:
        session.report.fixes = session.fixes
    return session


def fix(command: Sequence[str], *, steps: int = DEFAULT_STEPS, max_candidates: int = DEFAULT_CANDIDATES,
        config=None, store_path: str | os.PathLike | None = None) -> list[Fix]:
    """The Python API of `modeldebug fix`: the candidate fixes tried, the best verified first
    (empty when nothing needed or could be verified; :func:`run_fix` says which)."""
    return run_fix(command, steps=steps, max_candidates=max_candidates, config=config,
                   store_path=store_path).fixes


def _roots(probe: Window) -> list:
    """The probe's root findings (not their consequences) of medium or high severity."""
    if probe.report is None:
        return []
    return [s.root for s in probe.report.stories() if s.root.source == "rules" and s.root.severity in SHOWN]


def _cut_by_window(probe: Window, steps: int) -> bool:
    """The window, not the script, ended the probe (it had more steps to run)."""
    return probe.report is not None and probe.report.run.steps >= steps


def _probe_facts(store: Path, report: Report) -> dict[str, Any]:
    """What the candidates need to know of the probe run (its layers, its lr), from its run store."""
    from modeldebug.fixes.candidates import probe_facts
    from modeldebug.store import RunStore

    try:
        with RunStore(store) as runs:
            return probe_facts(runs.load_evidence(report.run.id))
    except Exception:  # (the candidates then take their defaults)
        return {}


def _nothing_to_verify(probe: Window) -> str | None:
    if probe.report is None:
        return f"the command did not start ({probe.log})"
    if probe.exit_code != 0:
        return f"the script fails before the end of the window ({probe.crash_line()}); fix the crash first"
    end = probe.loss
    if end is None:
        return "the collector saw no training loss in the window"
    return None


def _judge(candidate: Candidate, probe: Window, again: Window, after: Window) -> Fix:
    before_kinds = set(probe.kinds()) | set(again.kinds())
    loss_before = _mean_loss(probe, again)
    end_after = after.loss
    tried = Fix(addresses=candidate.addresses, change=candidate.change, verified=False, reason="",
                loss_before=_finite(loss_before), loss_after=_finite(end_after[0]) if end_after else None,
                val_loss_before=probe.val_loss, val_loss_after=after.val_loss,
                findings_after=after.kinds(), seconds=round(after.seconds, 2))
    if after.exit_code != 0 or after.report is None:
        tried.reason = f"{CRASHED} with this change: {after.crash_line()}"
        return tried
    left = [k for k in candidate.addresses if k in tried.findings_after]
    if left:
        tried.reason = f"{STILL_FOUND}: {', '.join(left)}"
        return tried
    new = sorted(set(tried.findings_after) - before_kinds)
    if new:
        tried.reason = f"new finding with this change: {', '.join(new)}"
        return tried
    if end_after is None or not math.isfinite(end_after[0]):
        tried.reason = "the training loss is not finite at the end of the window"
        return tried
    if candidate.by_validation:
        return _judge_on_validation(candidate, tried, probe, again)
    noise = _noise(probe, again, end_after)
    if math.isfinite(loss_before) and end_after[0] >= loss_before - noise:
        tried.reason = (f"{NOT_LOWER} by more than noise ({end_after[0]:.4g} vs {loss_before:.4g}, "
                        f"noise {noise:.2g})")
        return tried
    val_before, val_after = tried.val_loss_before, tried.val_loss_after
    if val_before is not None and val_after is not None and val_after > val_before + noise:
        tried.reason = f"the validation loss got worse ({val_after:.4g} vs {val_before:.4g})"
        return tried
    tried.verified = True
    gone = ", ".join(candidate.addresses)
    tried.reason = (f"{gone} gone, no new finding, training loss {_text(loss_before)} -> {end_after[0]:.4g} "
                    f"(noise {noise:.2g})")
    return tried


@dataclass
class _Trials:
    """The candidates' windows, judged against the probe and its unfixed twin; the unfixed run of
    a window LONGER_WINDOW times longer is made once, when a candidate needs it."""

    command: Sequence[str]
    steps: int
    store: Path
    config: Any
    probe: Window
    again: Window
    tell: Callable[[str], None]
    _longer: Window | None = None

    @property
    def long_steps(self) -> int:
        return self.steps * LONGER_WINDOW

    def longer(self) -> Window:
        if self._longer is None:
            self.tell(f"noise: the script unfixed for {self.long_steps} steps")
            self._longer = _window(self.command, self.long_steps, None, self.store, self.config)
        return self._longer

    def _runs_longer(self) -> bool:
        """The script has more than the window to run (its longer unfixed run went further)."""
        if not _cut_by_window(self.probe, self.steps):
            return False
        report = self.longer().report
        return report is not None and report.run.steps > self.steps

    def judge(self, candidate: Candidate) -> Fix:
        self.tell(f"candidate: {candidate.change}")
        if candidate.by_validation and _cut_by_window(self.probe, self.steps):
            # judged on the validation loss, where a wrong mode's harm (overfitting without
            # dropout, stale batch statistics) shows over more epochs
            after = _window(self.command, self.long_steps, candidate.spec, self.store, self.config)
            tried = _judge(candidate, self.longer(), self.longer(), after)
        else:
            after = _window(self.command, self.steps, candidate.spec, self.store, self.config)
            tried = _judge(candidate, self.probe, self.again, after)
            if tried.reason.startswith(NOT_LOWER) and self._runs_longer():
                # The finding is gone, nothing new, but the loss not lower yet: a slower start
                # (standardised inputs, gradients no longer summed) is judged where it has had
                # time to catch up.
                self.tell(f"candidate: {candidate.change}, for {self.long_steps} steps")
                after = _window(self.command, self.long_steps, candidate.spec, self.store, self.config)
                short = tried.reason
                tried = _judge(candidate, self.longer(), self.longer(), after)
                tried.reason = f"over {self.long_steps} steps: {tried.reason} (over {self.steps}: {short})"
        tried.loss_curve = _loss_curve(after)
        tried.patch, no_patch = make_patch(candidate.spec, self.probe.sites)
        tried.reason += f"; no diff: {no_patch}" if no_patch else ""
        return tried


def _may_retune(tried: Fix) -> bool:
    """Rejected for what a rate retuned for the change may mend: not a crash, not the finding it
    addresses still there."""
    return not (tried.reason.startswith(CRASHED) or tried.reason.startswith(STILL_FOUND))


def _mitigations_second(fixes: list[Fix], candidates: list[Candidate]) -> None:
    """A verified mitigation (clipping, LeakyReLU) is not the fix where a verified candidate for a
    cause the rules name addresses the same finding: the cause would stay behind the treated symptom
    (clipping hides a learning rate 100x too high; the user would keep the bad rate)."""
    mitigation = {c.change: c.mitigation for c in candidates}
    for m in fixes:
        if not (m.verified and mitigation.get(m.change)):
            continue
        cure = next((f for f in fixes if f.verified and not mitigation.get(f.change)
                     and set(f.addresses) & set(m.addresses)), None)
        if cure is not None:
            m.verified = False
            m.reason = (f"it helps ({m.reason}) but treats the symptom: the cause has a verified fix, "
                        f"{cure.change}")


def _dominated_second(fixes: list[Fix]) -> None:
    """A verified fix is not the fix where another verified one leaves strictly fewer findings
    behind (a subset of its own, so the other removes what it addresses too): those findings
    followed from the other's root (a weight decay 100x too high made the loss spike; lowering the
    rate hides the spike and leaves the decay, lowering the decay removes both)."""
    verified = sorted((f for f in fixes if f.verified), key=lambda f: len(f.findings_after))
    found = []
    for f in verified:
        left = set(f.findings_after)
        better = next((g for g in verified if g is not f and set(g.findings_after) < left), None)
        found += [(f, left, better)] if better is not None else []
    for f, left, better in found:
        f.verified = False
        f.reason = (f"it helps ({f.reason}) but another fix also removes {', '.join(f.addresses)} and leaves "
                    f"fewer findings ({', '.join(sorted(left - set(better.findings_after)))} stay with this "
                    f"one): {better.change}")


def _loss_curve(window: Window):
    """The window's training loss (its report's downsampled series), for the before/after plot."""
    from modeldebug.metrics import Series

    series = window.report.training.series if window.report is not None and window.report.training else None
    return Series(step=series.step, loss=series.loss) if series is not None and series.step else None


def _judge_on_validation(candidate: Candidate, tried: Fix, probe: Window, again: Window) -> Fix:
    """A change to what the training loss measures (dropout and batch statistics on or off) is
    judged on the validation loss: lower than the unfixed runs' by more than their difference, and
    by at least VAL_FLOOR of it (one evaluation's loss: no spread of its own to measure)."""
    before, after = tried.val_loss_before, tried.val_loss_after
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        tried.reason = "this change alters what the training loss measures, and no validation loss was seen to judge it by"
        return tried
    spread = abs(before - again.val_loss) if again.val_loss is not None and math.isfinite(again.val_loss) else 0.0
    noise = max(spread, VAL_FLOOR * abs(before))
    if after >= before - noise:
        tried.reason = f"the validation loss is not lower by more than noise ({after:.4g} vs {before:.4g}, noise {noise:.2g})"
        return tried
    tried.verified = True
    tried.reason = (f"{', '.join(candidate.addresses)} gone, no new finding, validation loss {before:.4g} -> "
                    f"{after:.4g} (noise {noise:.2g}; the training loss is measured differently with this change)")
    return tried


def _mean_loss(*windows: Window) -> float:
    """The unfixed runs' end loss, averaged (NaN when either diverged)."""
    ends = [w.loss for w in windows]
    if any(e is None for e in ends):
        ends = [e for e in ends if e is not None]
    if not ends:
        return math.nan
    return sum(e[0] for e in ends) / len(ends)


def _noise(probe: Window, again: Window, after: tuple[float, float]) -> float:
    """Run-to-run difference of the unfixed end loss; at least twice the standard error of the
    difference of the two end medians (a script that repeats exactly still has a noisy end)."""
    a, b = probe.loss, again.loss
    spread = abs(a[0] - b[0]) if a and b and math.isfinite(a[0]) and math.isfinite(b[0]) else 0.0
    base_se = a[1] if a and math.isfinite(a[0]) else 0.0
    return max(spread, 2.0 * math.hypot(base_se, after[1]))


def _rank(fix: Fix) -> tuple:
    return (not fix.verified, fix.loss_after if fix.loss_after is not None else math.inf)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _text(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "non-finite"
