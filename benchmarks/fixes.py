"""`modeldebug fix` over the fault suite: for each script, was its planted kind found, was a
candidate fix that is right for its planted cause tried, was one verified, and was a wrong one
verified (on a healthy script, any verified fix is wrong).

    OMP_NUM_THREADS=1 python benchmarks/fixes.py [--only REGEX] [--steps N]

A fix is right for a planted cause when it changes what the cause names (RIGHT below); on a
healthy script every verified fix is wrong. Scripts run one at a time (each is 2 + candidates
windows), so select with --only on a busy machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from detection import available, cases, launcher  # noqa: E402

from modeldebug.fixes import DEFAULT_STEPS  # noqa: E402
from modeldebug.fixes.verify import run_fix  # noqa: E402

# The candidate kinds (fixes/candidates.py; the learning rate split by direction) that act on a
# planted cause; clipping also answers the symptom of an exploding gradient or a spike, and
# LeakyReLU that of dead ReLUs, whatever made them.
RIGHT = {
    "learning_rate_too_high": {"lr_lower"},
    "learning_rate_too_low": {"lr_raise"},
    "missing_zero_grad": {"zero_grad"},
    "zero_grad_misplaced": {"move_zero_grad"},
    "frozen_parameters": {"train_params"},
    "parameters_not_in_optimizer": {"train_params", "keep_module"},
    "unnormalized_inputs": {"standardize_inputs"},
    "bad_weight_init": {"reinit"},
    "wrong_loss_function": {"loss_input"},
    "numerically_unstable_op": {"stable_op"},
    "wrong_module_mode": {"module_mode"},
    "scheduler_misuse": {"scheduler_per_epoch"},
    "weight_decay_too_high": {"weight_decay_scale"},
    "clipping_misplaced": {"clip_after_backward", "unscale_before_clip"},
}
RIGHT_FOR_KIND = {"exploding_gradient": {"clip_grad_norm"}, "loss_spike": {"clip_grad_norm"},
                  "dead_relu": {"leaky_relu"}}


def spec_kind(spec: dict) -> str:
    kind = str(spec.get("kind", "other"))
    if kind == "lr_scale":
        return "lr_lower" if float(spec.get("factor", 1)) < 1 else "lr_raise"
    return kind


def judge(case, steps: int) -> tuple[str, dict[str, int]]:
    """One script fixed: its table row, and what it adds to the totals."""
    t = time.time()
    session = run_fix([*launcher(case), str(case.path)], steps=steps)
    kinds = {f.kind for f in (session.report.findings if session.report else []) if f.severity in ("medium", "high")}
    right = RIGHT.get(case.cause, set()) | RIGHT_FOR_KIND.get(case.kind, set())
    kind_of = {f.change: spec_kind(session.specs.get(f.change, {})) for f in session.fixes}
    # right for the planted cause, whichever finding it addressed (a root before the planted symptom)
    tried = [f for f in session.fixes if not case.healthy and kind_of[f.change] in right]
    wrong = [f for f in session.fixes if f.verified and (case.healthy or kind_of[f.change] not in right)]
    counts = dict(scripts=1, found=int(case.kind in kinds), fixable=int(bool(tried)),
                  verified=int(any(f.verified for f in tried)), wrong=int(bool(wrong)),
                  best_wrong=int(bool(wrong) and session.fixes[0] in wrong),  # (the best verified is listed first)
                  healthy=int(case.healthy), healthy_verified=int(case.healthy and bool(wrong)))
    names = ", ".join(f"{kind_of[f.change]}{'+' if f.verified else '-'}" for f in session.fixes) or "-"
    return f"{case.name:60} {time.time() - t:6.1f} s  {session.verdict}  [{names}]", counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="regex on the script name")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--jobs", type=int, default=1, help="scripts fixed at the same time (each runs its windows in turn)")
    args = parser.parse_args()
    totals = dict(scripts=0, found=0, fixable=0, verified=0, wrong=0)
    started = time.time()
    chosen = [c for c in cases(args.only) if available(c) and c.processes == 1]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # (run_fix's windows are subprocesses)
        fixed = map if args.jobs <= 1 else pool.map  # one at a time in the main thread (its signals)
        for row, counts in fixed(lambda case: judge(case, args.steps), chosen):
            print(row, flush=True)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
    print(f"\n{totals['scripts']} scripts: planted kind found {totals['found']}, a right fix tried for its cause "
          f"{totals['fixable']}, verified {totals['verified']}, a wrong fix verified {totals['wrong']} (the best "
          f"verified one wrong: {totals.get('best_wrong', 0)}; "
          f"healthy scripts with a fix verified: {totals.get('healthy_verified', 0)} of {totals.get('healthy', 0)}) "
          f"({time.time() - started:.0f} s, --steps {args.steps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
