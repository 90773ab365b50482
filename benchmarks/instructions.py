"""Instructions an unsampled step costs, counted by valgrind's callgrind (the same on a loaded machine).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instructions.py            # stack13 and mlp3, ~10 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instructions.py --models stack13 --steps 40

Each model runs twice under callgrind, plain and watched (``every=10**9``: only step 0 is sampled),
300 warm-up steps, then collection is switched on around ``--steps`` steady steps only (the client
requests of valgrind/callgrind.h, through a small C library built here with gcc). Prints the
instructions per step of each and what watching adds. Needs valgrind and gcc.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT = """#include <valgrind/callgrind.h>
void start(void) { CALLGRIND_START_INSTRUMENTATION; }
void toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def inner(model_name: str, watched: bool, steps: int, lib: str) -> None:
    """The measured process: warm up, then ``steps`` steps with collection on."""
    import torch
    from torch import nn

    sys.path.insert(0, str(Path(__file__).parent))
    from overhead import MODELS

    import modeldebug as md

    torch.manual_seed(0)
    model, x, y = MODELS[model_name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    dbg = None
    if watched:
        store = md.RunStore(None)  # in memory: the batched writes are counted, not the disk
        dbg = md.watch(model, opt, config=md.DebuggingConfig(every=10**9, warmup_steps=0), store=store).start()
    for _ in range(300):
        step()
    cg = ctypes.CDLL(lib)
    cg.start()
    step()  # (instrumented, not counted: the first step after the switch runs retranslated code)
    cg.toggle()
    for _ in range(steps):
        step()
    cg.toggle()
    if dbg is not None:
        assert dbg.monitor_overhead().sampled_steps == 1, "a counted step was sampled"  # (step 0 only)
        dbg.stop()


def measure(model_name: str, watched: bool, steps: int, lib: str, tmp: Path) -> float:
    out = tmp / f"{model_name}-{int(watched)}.out"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
           f"--callgrind-out-file={out}", sys.executable, __file__, "--inner", model_name,
           "--watched" if watched else "--plain", "--steps", str(steps), "--lib", lib]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    total = int(re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(), re.M).group(1))
    return total / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="stack13,mlp3")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--plain-ir", type=float, help="instructions of a plain step, measured before: watched only")
    ap.add_argument("--inner", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--watched", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        inner(args.inner, args.watched, args.steps, args.lib)
        return 0
    with tempfile.TemporaryDirectory(prefix="md-instr-") as name:
        tmp = Path(name)
        (tmp / "client.c").write_text(CLIENT)
        lib = str(tmp / "libclient.so")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", lib, str(tmp / "client.c")], check=True)
        print(f"{'model':<10}{'plain Ir/step':>15}{'watched Ir/step':>17}{'added':>12}{'added %':>9}")
        for m in [m for m in args.models.split(",") if m]:
            plain = args.plain_ir or measure(m, False, args.steps, lib, tmp)
            watched = measure(m, True, args.steps, lib, tmp)
            print(f"{m:<10}{plain:>15,.0f}{watched:>17,.0f}{watched - plain:>12,.0f}{100 * (watched - plain) / plain:>8.1f}%",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
