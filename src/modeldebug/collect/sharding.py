"""Sharded parameters (FSDP): which watched parameters are one rank's shard of a larger tensor, their
local values, and the true global gradient norm over them.

* FSDP2 (``fully_shard``): parameters and gradients are DTensors; statistics are taken on the local
  shard (``local``), since foreach ops on DTensors fail or reduce behind our back.
* FSDP1 (``FullyShardedDataParallel``): a ``FlatParameter`` per unit, or with ``use_orig_params``
  the original parameters as views of this rank's flat shard (empty where another rank holds them).

Each rank's shard differs by design: only the replicated parameters are compared across ranks
(``collect/distributed.py``). The global gradient norm sums the squared norms of the shards held by
a parameter's peers (the ranks of its FSDP unit's group, or of the mesh dimensions it is ``Shard``ed
over) with one small all-reduce at the optimizer step of every rank (``clip_grad_norm_`` does the
same), on the monitor's own group: a rank whose monitor stopped can never pair our collective with
one of the user's.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

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


def _fsdp1_peers(roots: list["nn.Module"]) -> dict[int, tuple[int, ...]]:
    """id(parameter) -> the ranks holding its shards, for every parameter an FSDP1 unit shards (its
    flat parameter and, with ``use_orig_params``, the original parameters viewing it)."""
    import torch.distributed as dist

    fsdp = sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel")
    cls = getattr(fsdp, "FullyShardedDataParallel", None)
    if cls is None:
        return {}
    out: dict[int, tuple[int, ...]] = {}
    for root in roots:
        for module in root.modules():
            handle = getattr(module, "_handle", None) if isinstance(module, cls) else None
            if handle is None or not handle.uses_sharded_strategy:
                continue
            peers = tuple(dist.get_process_group_ranks(module.process_group))
            if len(peers) < 2:
                continue
            flat = handle.flat_param
            for p in [flat, *(getattr(flat, "_params", None) or []), *(getattr(flat, "_shared_params", None) or [])]:
                out[id(p)] = peers
    return out


def _mesh_peers(p: torch.Tensor, dt: type | None) -> tuple[int, ...] | None:
    """The ranks holding the shards of a DTensor (along its mesh dimensions placed ``Shard``, of more
    than one rank: HSDP's replicas with shards of one rank hold the whole tensor); None if it is whole."""
    if dt is None or not isinstance(p, dt):
        return None
    mesh = p.device_mesh
    dims = {i for i, placement in enumerate(p.placements) if placement.is_shard() and mesh.size(i) > 1}
    coordinate = mesh.get_coordinate()
    if not dims or coordinate is None:
        return None
    index = tuple(slice(None) if i in dims else c for i, c in enumerate(coordinate))
    return tuple(sorted(mesh.mesh[index].reshape(-1).tolist()))


class Shards:
    """The sharded parameters among a list of watched ones, grouped by the ranks holding their shards."""

    def __init__(self, params: list[torch.Tensor], roots: list["nn.Module"]):
        dt = dtensor_class()
        flat_peers = _fsdp1_peers(roots)
        self.sharded = [False] * len(params)
        by_peers: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            peers = _mesh_peers(p, dt) or flat_peers.get(id(p))
            if peers:
                self.sharded[i] = True
                by_peers.setdefault(peers, []).append(i)
        # In the order of the parameters (the same on every rank, whatever ranks each one's peers are).
        self.groups = sorted(by_peers.items(), key=lambda kv: kv[1][0])
        self.replicated = [i for i, s in enumerate(self.sharded) if not s]

    def __bool__(self) -> bool:
        return bool(self.groups)

    def grad_norm(self, params: list[torch.Tensor], sum_over_ranks: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """The norm of the full gradient: the replicated parameters' gradients once, plus every
        shard's. ``sum_over_ranks`` sums a [groups, world] tensor over all ranks in place (one
        collective, on a group of the monitor's own): each rank writes its shards' squared norm in
        its column, then adds up its peers' columns. Every rank must call it at the same point of
        every step, as with any collective; a rank without gradients adds 0."""
        import torch.distributed as dist

        from modeldebug.collect.params import total_norm

        device = next((local(p).device for p in params), torch.device("cpu"))
        squares = torch.zeros(len(self.groups), dist.get_world_size(), device=device)
        try:
            for k, (_, members) in enumerate(self.groups):
                grads = [g for i in members if (g := params[i].grad) is not None]
                if grads:
                    squares[k, dist.get_rank()] = total_norm(grads) ** 2
        except Exception:  # this rank must still join the collective, or the others would wait
            squares.fill_(float("nan"))
        sum_over_ranks(squares)
        total = sum(squares[k, list(peers)].sum() for k, (peers, _) in enumerate(self.groups))
        replicated = [g for i in self.replicated if (g := params[i].grad) is not None and not g.is_sparse]
        if replicated:
            total = total + total_norm(replicated).to(device) ** 2
        return total.sqrt()


def _fsdp2_sharded(root: "nn.Module") -> dict[tuple[int, str], torch.Tensor]:
    """(id(module), parameter name) -> the sharded parameter FSDP2 keeps for it, for the modules
    under ``root`` that ``fully_shard`` manages."""
    loaded = sys.modules.get("torch.distributed.fsdp._fully_shard._fully_shard")
    cls = getattr(loaded, "FSDPModule", None)
    if cls is None:
        return {}
    out: dict[tuple[int, str], torch.Tensor] = {}
    for module in root.modules():
        if not isinstance(module, cls):
            continue
        try:
            groups = module._get_fsdp_state()._fsdp_param_groups
        except Exception:  # another version's internals: the registered parameters are used as they are
            continue
        for group in groups:
            for param in group.fsdp_params:
                info = param._module_info
                for owner, name in [(info.module, info.param_name), *zip(info.shared_modules, info.shared_param_names)]:
                    out[(id(owner), name)] = param.sharded_param
    return out


def data_parallel(roots: list["nn.Module"]) -> str:
    """What the watched models train under: "FSDP2" (``fully_shard``), "FSDP" (FSDP1), "DDP", or ""."""
    fsdp2 = getattr(sys.modules.get("torch.distributed.fsdp._fully_shard._fully_shard"), "FSDPModule", None)
    fsdp1 = getattr(sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel"),
                    "FullyShardedDataParallel", None)
    ddp = getattr(sys.modules.get("torch.nn.parallel.distributed"), "DistributedDataParallel", None)
    kinds = [(fsdp2, "FSDP2"), (fsdp1, "FSDP"), (ddp, "DDP")]
    for root in roots:
        for module in root.modules():
            for cls, name in kinds:
                if cls is not None and isinstance(module, cls):
                    return name
    return ""


FSDP1_PREFIX = "_fsdp_wrapped_module"  # the module FSDP1 wraps, under its wrapper (left out of names)
FLAT_NAMES_SHOWN = 3


def clean_name(name: str) -> str:
    """A module or parameter path without FSDP1's wrapper levels: the user's own path."""
    if FSDP1_PREFIX not in name:
        return name
    return ".".join(part for part in name.split(".") if part != FSDP1_PREFIX)


def _flat_name(prefix: str, p: torch.Tensor) -> str | None:
    """An FSDP1 flat parameter named by the parameters it holds (``fc1.weight+fc1.bias+fc3.weight+…4``)."""
    fqns = getattr(p, "_fqns", None)
    if not fqns:
        return None
    names = [f"{prefix}.{q}" if prefix else q for q in fqns]
    shown = "+".join(names[:FLAT_NAMES_SHOWN])
    return shown if len(names) <= FLAT_NAMES_SHOWN else f"{shown}+…{len(names)}"


def parameters_by_module(root: "nn.Module") -> list[tuple[str, torch.Tensor, str]]:
    """(name, parameter, name of the module holding it) for each parameter of ``root`` once, named by
    the user's module paths: FSDP1's wrapper levels left out, a flat parameter named by the
    parameters it holds, and FSDP2's sharded parameter in place of a full one it has registered for
    the moment (between the all-gather and the reshard of a forward or backward: its storage is
    freed afterwards, and reading it then would read freed memory)."""
    sharded = _fsdp2_sharded(root)
    out, seen = [], set()
    for prefix, module in root.named_modules():
        owner = clean_name(prefix)
        for name, p in module._parameters.items():
            p = sharded.get((id(module), name), p)
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            full = (name == "_flat_param" and _flat_name(owner, p)) or (f"{owner}.{name}" if owner else name)
            out.append((full, p, owner))
    return out


def named_parameters(root: "nn.Module") -> list[tuple[str, torch.Tensor]]:
    """``root.named_parameters()`` as ``parameters_by_module`` names them (the same list, and the same
    call, when no FSDP module is loaded)."""
    if "torch.distributed.fsdp" not in sys.modules:
        return list(root.named_parameters())
    return [(name, p) for name, p, _ in parameters_by_module(root)]
