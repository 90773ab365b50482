"""Parameter statistics of a sampled step: foreach snapshots before the optimizer step and the
update ratio |Δw|/|w| after it. Pure functions of the parameters (device tensors out, no sync):
a sampled step pays per op dispatched, not per value."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch
from torch._utils import _flatten_dense_tensors

from modeldebug.collect.sharding import local, local_all

# torch._utils' function is a Python frame around this one (the hot path calls it every step).
_flatten = getattr(getattr(torch._C, "_nn", None), "flatten_dense_tensors", _flatten_dense_tensors)

# Parameters larger than this are compared on a subset for |Δw|/|w| (bounded memory and time):
# UPDATE_CHUNKS contiguous runs of UPDATE_SAMPLE / UPDATE_CHUNKS values spread over the tensor.
UPDATE_SAMPLE = 65536
UPDATE_CHUNKS = 16
# Below this many values per tensor on average, one copy of every gradient into a flat buffer and
# one norm beat a norm per tensor on the CPU (~2.4 us a tensor against ~0.5 ns a value copied).
FLATTEN_BELOW = 4096


@dataclass
class Snapshot:
    """Parameters before the optimizer step: norms, gradient moments, subsets to measure the update."""

    norms: list[torch.Tensor]
    subsets: list[torch.Tensor] | None  # copies (None once the update was measured)
    has_grad: list[bool]
    grad_stats: torch.Tensor | None  # gradient norms, then gradient sums, of the parameters with one
    dense_grad_norms: list[torch.Tensor]
    held: int  # bytes the subsets hold


def snapshot(params: list[torch.Tensor], subsets: bool = True) -> Snapshot:
    """Norms and gradient moments of every parameter; with ``subsets``, a copy of a bounded subset
    of each parameter's values to measure the coming update against."""
    values = [p.detach() for p in local_all(params)]  # a DTensor's (FSDP2) own shard
    with torch.no_grad():
        norms = torch._foreach_norm(values)
        # _foreach_mul copies the strided views in one op (the values must outlive the step).
        copies = torch._foreach_mul([subset(p) for p in values], 1.0) if subsets else []
        has_grad, grads, sparse = [], [], []
        for p in params:
            g = p.grad  # of the parameter itself (a detached view has none)
            has_grad.append(g is not None)
            if g is not None:
                g = local(g)
                sparse.append(g.is_sparse)
                if g.is_sparse:
                    g = g.coalesce().values()
                grads.append(g.detach().float())
        grad_stats, dense_norms = None, []
        if grads:
            grad_norms = torch._foreach_norm(grads)
            dense_norms = [n for n, sp in zip(grad_norms, sparse) if not sp]
            grad_stats = torch.cat([torch.stack(same_device(grad_norms)),
                                    torch.stack(same_device([g.sum() for g in grads]))])
    held = sum(c.numel() * c.element_size() for c in copies)
    return Snapshot(norms, copies, has_grad, grad_stats, dense_norms, held)


def update_stats(params: list[torch.Tensor], pre: Snapshot) -> torch.Tensor:
    """One row each: norms after the optimizer step, |update| and |values before| of the subsets.
    Frees the snapshot's subsets."""
    params = local_all(params)
    with torch.no_grad():
        post_norms = torch._foreach_norm([p.detach() for p in params])
        deltas = torch._foreach_sub([subset(p) for p in params], pre.subsets)
        delta_norms = torch._foreach_norm(deltas)
        subset_norms = torch._foreach_norm(pre.subsets)
        stats = torch.stack([*post_norms, *delta_norms, *subset_norms]).float()
    pre.subsets = None
    return stats


def total_norm(tensors: list[torch.Tensor], flatten: bool = False) -> torch.Tensor:
    """One fused norm, with grad mode off (not a detach per tensor: the cost stays per step, not
    per parameter; a gradient made with ``create_graph`` keeps no graph through it). With
    ``flatten`` (many small tensors), the norm of one flat copy of them all."""
    tensors = local_all(tensors)  # DTensors (FSDP2): this rank's shards
    enabled = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        if flatten:
            try:
                return torch.linalg.vector_norm(_flatten(tensors), dtype=torch.float32)
            except RuntimeError:  # several devices: one fused norm per device
                pass
        norms = torch._foreach_norm(tensors)
        try:
            stacked = torch.stack(norms)
        except RuntimeError:  # model parallel: norms on several devices
            stacked = torch.stack(same_device(norms))
        # (float32 norms as they are: even a no-op .float() is a dispatch, on every step)
        return torch.linalg.vector_norm(stacked if stacked.dtype == torch.float32 else stacked.float())
    finally:
        torch._C._set_grad_enabled(enabled)


def grad_norm(params: list[torch.Tensor], flatten: bool = False) -> torch.Tensor | None:
    """The global norm of the dense gradients present; None when there are none."""
    # Gathered in C (map, filter, attrgetter): every step, no Python bytecode per parameter.
    grads = list(filter(_is_present, map(_grad_of, params)))
    if any(map(_is_sparse, grads)):
        grads = [g for g in grads if not g.is_sparse]
    return total_norm(grads, flatten) if grads else None


_grad_of = operator.attrgetter("grad")
_is_sparse = operator.attrgetter("is_sparse")
_is_present = functools.partial(operator.is_not, None)


def same_device(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Model parallel: norms from several devices are brought to the host to be combined."""
    return [t.cpu() for t in tensors] if len({t.device for t in tensors}) > 1 else tensors


def subset(p: torch.Tensor) -> torch.Tensor:
    """A view of at most UPDATE_SAMPLE values of a parameter: all of a small one, else
    UPDATE_CHUNKS contiguous runs spread evenly over it (a strided subset would touch every cache
    line of the tensor, as costly as the whole; contiguous runs read only what they keep)."""
    flat = p.detach().reshape(-1)
    n = flat.numel()
    if n <= UPDATE_SAMPLE:
        return flat
    size = UPDATE_SAMPLE // UPDATE_CHUNKS
    return flat.unfold(0, size, (n - size) // (UPDATE_CHUNKS - 1))[:UPDATE_CHUNKS]
