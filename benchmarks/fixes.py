"""`modeldebug fix` over the fault suite: for each script, was its planted kind found, was a
candidate fix tried for it, was one verified, and was a wrong one verified.

    OMP_NUM_THREADS=1 python benchmarks/fixes.py [--only REGEX] [--steps N]

A fix is right for a planted cause when it changes what the cause names (RIGHT below); on a
healthy script every verified fix is wrong. Scripts run one at a time (each is 2 + candidates
windows), so select with --only on a busy machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from detection import available, cases, launcher  # noqa: E402

from modeldebug.fixes import DEFAULT_STEPS  # noqa: E402
from modeldebug.fixes.verify import run_fix  # noqa: E402

# The candidate kinds (fixes/candidates.py) that act on a planted cause; clipping also answers the
# symptom of an exploding gradient or a spike, whatever made it.
RIGHT = {
    "learning_rate_too_high": {"lr_scale"},
    "missing_zero_grad": {"zero_grad"},
    "frozen_parameters": {"train_params"},
    "parameters_not_in_optimizer": {"train_params"},
}
RIGHT_FOR_KIND = {"exploding_gradient": {"clip_grad_norm"}, "loss_spike": {"clip_grad_norm"}}


def spec_kind(change: str) -> str:
    """The candidate kind of a fix, from the start of its `change` text (candidates.py's wording)."""
    for prefix, kind in (("learning rate x", "lr_scale"), ("optimizer.zero_grad()", "zero_grad"),
                         ("torch.nn.utils.clip_grad_norm_", "clip_grad_norm"), ("train ", "train_params")):
        if change.startswith(prefix):
            return kind
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="regex on the script name")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    args = parser.parse_args()
    rows, totals = [], dict(scripts=0, found=0, fixable=0, verified=0, wrong=0)
    started = time.time()
    for case in [c for c in cases(args.only) if available(c) and c.processes == 1]:
        t = time.time()
        session = run_fix([*launcher(case), str(case.path)], steps=args.steps)
        kinds = {f.kind for f in (session.report.findings if session.report else []) if f.severity in ("medium", "high")}
        tried = [f for f in session.fixes if case.kind in f.addresses]
        verified = [f for f in tried if f.verified]
        right = RIGHT.get(case.cause, set()) | RIGHT_FOR_KIND.get(case.kind, set())
        wrong = [f for f in session.fixes if f.verified and (case.healthy or spec_kind(f.change) not in right)]
        totals["scripts"] += 1
        totals["found"] += case.kind in kinds
        totals["fixable"] += bool(tried)
        totals["verified"] += bool(verified)
        totals["wrong"] += bool(wrong)
        names = ", ".join(f"{spec_kind(f.change)}{'+' if f.verified else '-'}" for f in session.fixes) or "-"
        rows.append(f"{case.name:60} {time.time() - t:6.1f} s  {session.verdict}  [{names}]")
        print(rows[-1], flush=True)
    print(f"\n{totals['scripts']} scripts: planted kind found {totals['found']}, a fix tried for it "
          f"{totals['fixable']}, verified {totals['verified']}, a wrong fix verified {totals['wrong']} "
          f"({time.time() - started:.0f} s, --steps {args.steps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
