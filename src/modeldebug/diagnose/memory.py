"""The builder for out-of-memory errors (GPU, CPU, MPS), with the allocator's numbers parsed from the message."""

from __future__ import annotations

import re

from modeldebug.diagnose.context import Context, Diagnosis
from modeldebug.findings import best_practice, fix, optimization

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def _bytes(s: str | None) -> float | None:
    if not s:
        return None
    mm = re.match(r"([\d.]+)\s*([KMGT]i?B|B)", s)
    return float(mm.group(1)) * _UNITS.get(mm.group(2), 1) if mm else None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


_OOM_FIELDS = {
    "requested": r"Tried to allocate ([\d.]+ [KMGT]?i?B)",
    "total": r"total capacity of ([\d.]+ [KMGT]?i?B)|([\d.]+ [KMGT]?i?B) total capacity",
    "free": r"of which ([\d.]+ [KMGT]?i?B) is free|([\d.]+ [KMGT]?i?B) free",
    "allocated": r"([\d.]+ [KMGT]?i?B) is allocated by PyTorch|([\d.]+ [KMGT]?i?B) already allocated",
    "reserved_unallocated": r"([\d.]+ [KMGT]?i?B) is reserved by PyTorch but unallocated",
    "process_in_use": r"this process has ([\d.]+ [KMGT]?i?B) memory in use",
}


def oom(ctx: Context, m: re.Match) -> Diagnosis:
    text = m.string
    nums: dict[str, float] = {}
    for k, rx in _OOM_FIELDS.items():
        f = re.search(rx, text)
        if f:
            nums[k] = _bytes(next(g for g in f.groups() if g))
    cpu = re.search(r"you tried to allocate (\d+) bytes", text)
    if cpu:
        nums["requested"] = float(cpu.group(1))
    dev = "CPU memory" if cpu or "DefaultCPUAllocator" in text else ("MPS memory" if "MPS" in text else "GPU memory")
    msg = f"Out of {dev}"
    if "requested" in nums:
        msg += f": tried to allocate {_human(nums['requested'])}"
        if "free" in nums:
            msg += f" with {_human(nums['free'])} free"
        if "total" in nums:
            msg += f" of {_human(nums['total'])}"
    msg += f" in {ctx.name}." if (ctx.module or ctx.module_type or ctx.module_hint) else "."
    inp = ctx.first_input()
    batch = inp["shape"][0] if inp and inp.get("shape") else None
    recs = []
    if batch and batch > 1:
        new = max(1, batch // 2)
        if nums.get("requested") and nums.get("total") and nums["requested"] > nums["total"]:
            new = max(1, int(batch * nums["total"] / nums["requested"] / 2))
        recs.append(fix(f"Reduce the batch size (now {batch}; try {new}), and accumulate gradients over "
                         f"{max(2, batch // new)} steps to keep the effective batch.",
                         f"DataLoader(dataset, batch_size={new})"))
    elif nums.get("requested") and nums.get("total") and nums["requested"] > nums["total"]:
        recs.append(fix(f"One allocation ({_human(nums['requested'])}) is larger than the whole device "
                         f"({_human(nums['total'])}): check the shapes of this operation (an accidental broadcast "
                         f"or outer product), then reduce batch or sequence length."))
    else:
        recs.append(fix("Reduce the batch size (halve it) and accumulate gradients to keep the effective batch."))
    if dev == "GPU memory":
        recs.append(optimization("Train in mixed precision: activations take half the memory.",
                         "with torch.autocast(device_type='cuda', dtype=torch.bfloat16):\n    loss = criterion(model(x), y)"))
        recs.append(optimization("Recompute activations in backward instead of storing them (gradient checkpointing).",
                         "from torch.utils.checkpoint import checkpoint\nx = checkpoint(block, x, use_reentrant=False)"))
        ru, al = nums.get("reserved_unallocated"), nums.get("allocated")
        if ru and al and ru >= 0.1 * al:
            recs.append(optimization(f"{_human(ru)} is reserved but unallocated (fragmentation): let the allocator expand "
                             "segments.", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python train.py"))
        recs.append(best_practice("Keep no tensors that hold the graph across steps (accumulate loss.item()), and evaluate under "
                        "torch.no_grad().", "running_loss += loss.item()"))
    else:
        recs.append(best_practice("Look for an accidental broadcast or outer product in this operation: the requested size "
                        "is the product of the operands' shapes."))
    return Diagnosis(msg, recs, ["other"], 0.9, {"memory": nums, "memory_kind": dev})
