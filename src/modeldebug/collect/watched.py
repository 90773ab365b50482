"""What the Debugger watches: its models (with qualified names), their parameters and layers, the
device, and the optimizers (given, or adopted when they update a watched model)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from modeldebug.collect.compiled import is_compiled, wrapper_of
from modeldebug.collect.params import FLATTEN_BELOW
from modeldebug.collect.sharding import clean_name, local, named_parameters, parameters_by_module
from modeldebug.collect.stats import family, saturation_bounds
from modeldebug.events import NewParameters
from modeldebug.findings import jsonable
from modeldebug.records import LayerInfo, OptimizerInfo, ParamInfo
from modeldebug.types import ModelInfo

log = logging.getLogger(__name__)

NEW_PARAMETER_REPORTS = 5


@dataclass
class Model:
    module: nn.Module
    name: str
    prefix: str  # "" for a single model; "Name." when several are watched
    compiled: bool = False  # torch.compile'd: no hook inside its graph; sampled steps run eagerly (collect/compiled.py)

    @property
    def inner(self) -> nn.Module:
        return getattr(self.module, "_orig_mod", self.module)


@dataclass
class Layer:
    """A module that gets per-layer hooks on sampled steps."""

    name: str  # qualified
    module: nn.Module


class Watched:
    """Models, parameters, layers, device and optimizers of one Debugger."""

    def __init__(self) -> None:
        self.models: list[Model] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.primary: torch.optim.Optimizer | None = None  # the first to step: its lr is recorded
        self.newest_adopted: torch.optim.Optimizer | None = None
        self.params: list[tuple[str, nn.Parameter]] = []
        self.param_ids: set[int] = set()
        self._tensors_of: list | None = None  # the ``params`` list that ``_tensors`` was built from
        self._tensors: list[nn.Parameter] = []
        self.small_tensors = False  # many small parameters: their gradients' norm is taken flat
        self.new_parameter_reports = self.new_parameter_looks = 0
        self.layers: list[Layer] = []
        self.layer_info: dict[str, LayerInfo] = {}
        self.bounds: dict[str, tuple[float, float] | None] = {}  # bounded activations' output ranges
        self.device: torch.device | None = None
        self.on_device: Callable[[torch.device], None] | None = None  # told when the device is found
        self.on_change: Callable[[], None] | None = None  # told when a model or optimizer is added
        # Extension point: called before an unknown optimizer is judged (and at every backward while
        # no model is watched) to find the models by itself (zero-code runs: collect/autopatch.py).
        self.finder: Callable[[Any], None] | None = None

    # ------------------------------------------------------------------ models

    def add(self, module: nn.Module, name: str | None = None, keep_names: bool = False) -> Model | None:
        """Watch a root module; None when it is watched already. With ``keep_names`` (records were
        written already under the watched models' names) only the new model's names are qualified."""
        if any(m.module is module for m in self.models):
            return None
        inner = module._orig_mod if wrapper_of(module) else module
        # (a part compiled on its own, model.encoder = torch.compile(model.encoder), counts too)
        compiled = is_compiled(module) or any(wrapper_of(m) for m in inner.modules())
        name = name or type(inner).__name__
        taken_names = {m.name for m in self.models}
        unique, n = name, 1
        while unique in taken_names:  # two instances of one class (a model and its copy) stay apart
            n += 1
            unique = f"{name}{n}"
        model = Model(module, unique, "", compiled)
        self.models.append(model)
        self._changed()
        if compiled:
            log.info("%s is torch.compile'd: its sampled steps run eagerly for per-layer statistics", model.name)
        if len(self.models) == 1:
            self._register(model)
        elif keep_names:
            model.prefix = model.name + "."
            self._register(model)
        else:  # several models: qualify every name by its model's
            taken: set[str] = set()
            for m in self.models:
                m.prefix, n = m.name + ".", 1
                while m.prefix in taken:
                    n += 1
                    m.prefix = f"{m.name}{n}."
                taken.add(m.prefix)
            self.params, self.param_ids, self.layers, self.layer_info, self.bounds = [], set(), [], {}, {}
            for m in self.models:
                self._register(m)
        return model

    def _register(self, model: Model) -> None:
        for pname, p in named_parameters(model.inner):  # (FSDP2's sharded ones, never its transient full ones)
            if id(p) not in self.param_ids:
                self.param_ids.add(id(p))
                self.params.append((model.prefix + pname, p))
            if self.device is None:
                self.device = p.device
                if self.on_device is not None:
                    self.on_device(p.device)
        for mname, module in model.inner.named_modules():
            # Leaf modules, and modules holding parameters of their own (nn.MultiheadAttention).
            has_children = next(iter(module.children()), None) is not None
            mname = clean_name(mname)  # (the user's path under FSDP1's wrappers)
            if not mname or (has_children and not module._parameters) or model.prefix + mname in self.layer_info:
                continue
            qual = model.prefix + mname
            self.bounds[qual] = saturation_bounds(type(module))
            self.layers.append(Layer(qual, module))
            self.layer_info[qual] = LayerInfo(
                name=qual,
                type=type(module).__name__,
                order=-1,
                parameters=sum(p.numel() for p in module.parameters(recurse=False)),
                description=_describe(module),
                model=model.name,
                family=family(type(module)),
            )

    def new_parameters(self) -> NewParameters | None:
        """Parameters the watched models hold now that were not theirs when watching began (a
        module created, or a parameter assigned, inside ``forward`` is new at every step): looked
        for on the first 16 sampled steps, then on every 16th (a walk over every module: ~1 ms for 150),
        reported for the first ``NEW_PARAMETER_REPORTS`` steps that have some."""
        self.new_parameter_looks += 1
        looks = self.new_parameter_looks
        if self.new_parameter_reports >= NEW_PARAMETER_REPORTS or (looks > 16 and looks % 16):
            return None
        new = [(m.prefix + name, p) for m in self.models for name, p in named_parameters(m.inner)
               if id(p) not in self.param_ids]
        if not new:
            return None
        self.new_parameter_reports += 1
        held = {id(p) for o in self.optimizers for g in o.param_groups for p in g["params"]}
        return NewParameters(params=[n for n, _ in new[:20]], count=len(new), numel=sum(p.numel() for _, p in new),
                             in_optimizer=sum(p.numel() for _, p in new if id(p) in held))

    def tensors(self) -> list[nn.Parameter]:
        """The watched parameters without their names, kept between steps (the hot path builds no list)."""
        params = self.params
        if self._tensors_of is not params or len(self._tensors) != len(params):
            self._tensors_of, self._tensors = params, [p for _, p in params]
            # (on the CPU: CUDA's fused norm is one kernel over every tensor, a copy would cost more)
            self.small_tensors = (all(p.device.type == "cpu" for p in self._tensors)
                                  and sum(p.numel() for p in self._tensors) < FLATTEN_BELOW * len(self._tensors))
        return self._tensors

    def find(self, optimizer=None) -> None:
        if self.finder is not None:
            self.finder(optimizer)

    @property
    def compiled(self) -> bool:
        """A watched model is torch.compile'd."""
        return any(m.compiled for m in self.models)

    def model_of(self, root: nn.Module) -> Model | None:
        return next((m for m in self.models if m.module is root), None)

    def module_names(self) -> list[tuple[str, nn.Module]]:
        """(prefix, inner module) of every model: qualified module names for the diagnosis."""
        return [(m.prefix, m.inner) for m in self.models]

    # ------------------------------------------------------------------ optimizers

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if all(o is not optimizer for o in self.optimizers):
            self.optimizers.append(optimizer)
            self._changed()

    def owns(self, optimizer) -> bool:
        """Optimizers not given to the debugger are watched when they update a watched model.

        A step closes once every watched optimizer has stepped in it (a GAN's discriminator and
        generator steps make one step). An optimizer adopted later is taken to be the last one
        of the cycle, so that from the second iteration on a step is one whole iteration.
        """
        if self.finder is not None:
            self.finder(optimizer)
        for o in self.optimizers:  # (a loop, not any(): three calls a step)
            if o is optimizer:
                return True
        for group in optimizer.param_groups:
            if any(id(p) in self.param_ids for p in group["params"]):
                self.optimizers.append(optimizer)
                self.newest_adopted = optimizer
                self._changed()
                return True
        return False

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def lr(self) -> float:
        opt = self.primary or (self.optimizers[0] if self.optimizers else None)
        if opt is None or not opt.param_groups:
            return math.nan
        lr = opt.param_groups[0].get("lr", math.nan)
        return float(lr.item() if isinstance(lr, torch.Tensor) else lr)

    def learning_rates(self) -> list[float]:
        return [float(g["lr"]) for o in self.optimizers[:1] for g in o.param_groups if "lr" in g]

    # ------------------------------------------------------------------ what the run knows of them

    def infos(self) -> tuple[dict[str, ParamInfo], list[OptimizerInfo]]:
        """Parameter and optimizer infos for the run's meta."""
        in_opt: dict[int, float | None] = {}
        decay: dict[int, float] = {}
        optimizers = []
        for opt in self.optimizers:
            groups = []
            for g in opt.param_groups:
                lr = g.get("lr")
                lr = float(lr.item() if isinstance(lr, torch.Tensor) else lr) if lr is not None else None
                for p in g["params"]:
                    in_opt[id(p)] = lr
                    if isinstance(g.get("weight_decay"), (int, float)):
                        decay[id(p)] = float(g["weight_decay"])
                groups.append({k: jsonable(v, nonfinite="keep") for k, v in g.items() if k != "params"} | {"params": len(g["params"])})
            optimizers.append(OptimizerInfo(type=type(opt).__name__, param_groups=groups))
        owner = {}
        for m in self.models:
            for pname, _, mname in parameters_by_module(m.inner):
                owner[m.prefix + pname] = (m.prefix + mname).rstrip(".")
        params = {
            name: ParamInfo(
                name=name,
                module=owner.get(name, ""),
                shape=list(p.shape),
                numel=p.numel(),
                requires_grad=p.requires_grad,
                in_optimizer=id(p) in in_opt,
                lr=in_opt.get(id(p)),
                weight_decay=decay.get(id(p)),
                model=next((m.name for m in self.models if name.startswith(m.prefix)), ""),
                shard_numel=local(p).numel() if local(p) is not p else None,
            )
            for name, p in self.params
        }
        return params, optimizers

    def model_infos(self) -> list[ModelInfo]:
        out = []
        for m in self.models:
            ps = list(m.module.parameters())
            out.append(ModelInfo(name=m.name, parameters=sum(p.numel() for p in ps),
                                 trainable=sum(p.numel() for p in ps if p.requires_grad)))
        return out


def _describe(module: nn.Module) -> str:
    extra = module.extra_repr()
    return f"{type(module).__name__}({extra})" if "\n" not in extra else type(module).__name__
