"""Sharded parameters (FSDP): which watched parameters are one rank's shard of a larger tensor, their
local values, and the true global gradient norm over them.

* FSDP2 (``fully_shard``): parameters and gradients are DTensors; statistics are taken on the local
  shard (``local``), since foreach ops on DTensors fail or reduce behind our back.
* FSDP1 (``FullyShardedDataParallel``): a ``FlatParameter`` per unit, or with ``use_orig_params``
  the original parameters as views of this rank's flat shard (empty where another rank holds them).

Each rank's shard differs by design: only the replicated parameters are compared across ranks
(``collect/distributed.py``). The global gradient norm sums the shards' squared norms with one
all-reduce per process group the parameters are sharded over (the FSDP unit's own group, or the
mesh dimensions of a ``Shard`` placement), at the optimizer step of every rank, where
``clip_grad_norm_`` does the same.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn


def dtensor_class() -> type | None:
    """DTensor, if ``torch.distributed.tensor`` is loaded (else no DTensor exists in the process)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor; any other tensor as it is."""
    dt = dtensor_class()
    return t._local_tensor if dt is not None and isinstance(t, dt) else t  # type: ignore[attr-defined]


def local_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``local`` for a list; the list itself when no DTensor can exist (the common, hot case)."""
    dt = dtensor_class()
    # (the scan runs in C: the hot path's gradient norm makes no Python call per tensor)
    if dt is None or not any(map(dt.__instancecheck__, tensors)):
        return tensors
    return [t._local_tensor if isinstance(t, dt) else t for t in tensors]  # type: ignore[attr-defined]


def _fsdp1_groups(roots: list["nn.Module"]) -> dict[int, Any]:
    """id(parameter) -> process group, for every parameter an FSDP1 unit shards (its flat parameter
    and, with ``use_orig_params``, the original parameters viewing it)."""
    fsdp = sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel")
    cls = getattr(fsdp, "FullyShardedDataParallel", None)
    if cls is None:
        return {}
    out: dict[int, Any] = {}
    for root in roots:
        for module in root.modules():
            handle = getattr(module, "_handle", None) if isinstance(module, cls) else None
            if handle is None or not handle.uses_sharded_strategy or _size(module.process_group) < 2:
                continue
            flat = handle.flat_param
            for p in [flat, *(getattr(flat, "_params", None) or []), *(getattr(flat, "_shared_params", None) or [])]:
                out[id(p)] = module.process_group
    return out


def _mesh_groups(p: torch.Tensor, dt: type | None) -> tuple | None:
    """The process groups of the mesh dimensions a DTensor is sharded over; None if it is not."""
    if dt is None or not isinstance(p, dt):
        return None
    mesh = p.device_mesh
    # (a mesh dimension of one rank holds the whole tensor: HSDP's replicas with shards of one)
    dims = [i for i, placement in enumerate(p.placements) if placement.is_shard() and mesh.size(i) > 1]
    return tuple(mesh.get_group(i) for i in dims) or None


class Shards:
    """The sharded parameters among a list of watched ones, grouped by the process groups their
    shards are spread over."""

    def __init__(self, params: list[torch.Tensor], roots: list["nn.Module"]):
        dt = dtensor_class()
        flat_groups = _fsdp1_groups(roots)
        self.sharded = [False] * len(params)
        by_groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups = _mesh_groups(p, dt)
            if groups is None and id(p) in flat_groups:
                groups = (flat_groups[id(p)],)
            if groups is not None:
                self.sharded[i] = True
                by_groups.setdefault(tuple(groups), []).append(i)
        # Sorted by the groups' ranks so that every rank issues its all-reduces in the same order.
        self.groups = sorted(by_groups.items(), key=lambda kv: [_ranks(g) for g in kv[0]])
        self.replicated = [i for i, s in enumerate(self.sharded) if not s]

    def __bool__(self) -> bool:
        return bool(self.groups)

    def grad_norm(self, params: list[torch.Tensor]) -> torch.Tensor | None:
        """The norm of the full gradient: the replicated parameters' gradients once, plus every
        rank's shards (one all-reduce of a squared norm per group; a rank without gradients adds 0).
        Every rank must call it at the same point of every step, as with any collective."""
        import torch.distributed as dist

        from modeldebug.collect.params import total_norm

        device = next((local(p).device for p in params), torch.device("cpu"))
        squares = []
        replicated = [g for i in self.replicated if (g := params[i].grad) is not None and not g.is_sparse]
        if replicated:
            squares.append(total_norm(local_all(replicated)) ** 2)
        for groups, members in self.groups:
            target = _group_device(groups[0], device)
            try:
                grads = [local(g) for i in members if (g := params[i].grad) is not None]
                part = total_norm(grads) ** 2 if grads else torch.zeros((), device=device)
                part = part.to(device=target, dtype=torch.float32)
            except Exception:  # this rank must still join the all-reduce, or the others would wait
                part = torch.full((), float("nan"), device=target)
            for group in groups:
                dist.all_reduce(part, group=group)
            squares.append(part.to(device))
        return torch.stack(squares).sum().sqrt()


def _size(group: Any) -> int:
    try:
        import torch.distributed as dist

        return dist.get_world_size(group)
    except Exception:  # not a group torch can describe: taken as sharded
        return 2


def _ranks(group: Any) -> list[int]:
    try:
        import torch.distributed as dist

        return dist.get_process_group_ranks(group)
    except Exception:  # not a group torch can describe: keep the order found
        return []


def _group_device(group: Any, device: torch.device) -> torch.device:
    """Where a group's collectives take their tensors: the CPU for gloo, the device otherwise."""
    try:
        import torch.distributed as dist

        backend = str(dist.get_backend(group)).lower()
    except Exception:
        return device
    return torch.device("cpu") if backend == "gloo" else device
