"""`modeldebug fix`'s diffs over the fault suite: for each faulty script, its probe window (with the
sites recorder), the candidates for its root findings, and for each candidate a diff or why not;
each diff is checked with `git apply --check` on a copy of the script in a scratch git repository.

    OMP_NUM_THREADS=1 python benchmarks/fix_patches.py [--only REGEX] [--steps N]

Only the probe runs (no candidate re-runs): this measures where diffs can be made, not which fixes
verify (benchmarks/fixes.py does that).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from detection import available, cases, launcher  # noqa: E402

from modeldebug.fixes import candidates, patch, verify  # noqa: E402
from modeldebug.fixes.patch import Sites  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="regex on the script name")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    tried = made = applies = 0
    for case in [c for c in cases(args.only) if available(c) and c.processes == 1 and not c.healthy]:
        with tempfile.TemporaryDirectory(prefix="fix-patches-") as tmp:
            work = Path(tmp)
            shutil.copy(case.path, work / case.path.name)
            subprocess.run(["git", "init", "-q"], cwd=work, check=True)
            os.chdir(work)
            probe = verify._window([*launcher(case), case.path.name], args.steps, None, work / "runs.db", None,
                                   sites=work / "sites.json")
            sites = Sites.load(work / "sites.json")
            facts = verify._probe_facts(work / "runs.db", probe.report) if probe.report is not None else {}
            for candidate in candidates.build(verify._roots(probe), 8, facts):
                diff, why = patch.make(candidate.spec, sites, work)
                tried += 1
                if diff is not None:
                    made += 1
                    (work / "fix.diff").write_text(diff)
                    check = subprocess.run(["git", "apply", "--check", "fix.diff"], cwd=work, capture_output=True)
                    applies += check.returncode == 0
                    why = "applies" if check.returncode == 0 else "DOES NOT APPLY"
                print(f"{case.name:60} {candidate.spec['kind']:20} {'diff' if diff else 'none':5} {why}", flush=True)
    print(f"\n{tried} candidates: a diff for {made}, of which {applies} apply with git apply --check")
    return 0 if made == applies else 1


if __name__ == "__main__":
    raise SystemExit(main())
