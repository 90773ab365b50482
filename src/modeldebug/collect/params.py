"""Parameter statistics of a sampled step: foreach snapshots before the optimizer step and the
update ratio |Δw|/|w| after it. Pure functions of the parameters (device tensors out, no sync):
a sampled step pays per op dispatched, not per value."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Parameters larger than this are compared on a subset for |Δw|/|w| (bounded memory and time):
# UPDATE_CHUNKS contiguous runs of UPDATE_SAMPLE / UPDATE_CHUNKS values spread over the tensor.
UPDATE_SAMPLE = 65536
UPDATE_CHUNKS = 16


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
    values = [p.detach() for p in params]
    with torch.no_grad():
        norms = torch._foreach_norm(values)
        # _foreach_mul copies the strided views in one op (the values must outlive the step).
        copies = torch._foreach_mul([subset(p) for p in values], 1.0) if subsets else []
        has_grad, grads, sparse = [], [], []
        for p in params:
            g = p.grad  # of the parameter itself (a detached view has none)
            has_grad.append(g is not None)
            if g is not None:
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
    with torch.no_grad():
        post_norms = torch._foreach_norm([p.detach() for p in params])
        deltas = torch._foreach_sub([subset(p) for p in params], pre.subsets)
        delta_norms = torch._foreach_norm(deltas)
        subset_norms = torch._foreach_norm(pre.subsets)
        stats = torch.stack([*post_norms, *delta_norms, *subset_norms]).float()
    pre.subsets = None
    return stats


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm([t.detach() for t in tensors])
    return torch.linalg.vector_norm(torch.stack(same_device(norms)).float())


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The global norm of the dense gradients present; None when there are none."""
    grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
    return total_norm(grads) if grads else None


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
