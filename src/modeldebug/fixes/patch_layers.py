"""The diffs of the candidates that change the model's layers, where the script builds them
(``fixes/patch.py`` holds the registry and the optimizer and loop candidates)."""

from __future__ import annotations

import ast
from typing import Any

from modeldebug.fixes.source import Edit, NoPatch, Sites, Source, last_name, number


def leaky_relu(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """Every ``nn.ReLU(...)`` the script's files build becomes ``nn.LeakyReLU(slope, ...)``."""
    slope = number(float(spec.get("negative_slope", 0.01)))
    edits = []
    for file in sites.files():
        src = sites.source(file)
        for call in ast.walk(src.tree):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "ReLU":
                func = src.segment(call.func)
                inner = src.segment(call)[len(func):].strip()[1:-1].strip()
                start, end = src.span(call)
                edits.append(Edit(file, start, end, f"{func[:-4]}LeakyReLU({slope}{', ' + inner if inner else ''})"))
    if not edits:
        raise NoPatch("no nn.ReLU(...) is built in the script's files")
    return edits


REINIT = """for layer in {model}.modules():  # re-initialised before training
    if isinstance(layer, ({nn}.Linear, {nn}.Bilinear, {nn}.modules.conv._ConvNd)):
        {nn}.init.{weights}(layer.weight{how})
        if layer.bias is not None:
            {nn}.init.zeros_(layer.bias)
    elif isinstance(layer, {nn}.RNNBase):
        for name, p in layer.named_parameters(recurse=False):
            if name.startswith("weight_hh"):
                {nn}.init.orthogonal_(p)
            elif name.startswith("weight"):
                {nn}.init.xavier_uniform_(p)
            elif name.startswith("bias"):
                {nn}.init.zeros_(p)
    elif isinstance(layer, ({nn}.modules.batchnorm._NormBase, {nn}.LayerNorm, {nn}.GroupNorm)) and layer.weight is not None:
        {nn}.init.ones_(layer.weight)
        {nn}.init.zeros_(layer.bias)"""


def reinit(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """The model's layers re-initialised just before the optimizer is built (as fixes/modules.reinit does)."""
    built = sites.optimizers()
    if len(built) != 1:
        raise NoPatch("the script builds several optimizers: it is not clear where its model is complete")
    optimizer = built[0]
    src = sites.source(optimizer["file"])
    kaiming = spec.get("scheme", "kaiming") == "kaiming"
    code = REINIT.format(model=sites.model_expr(), nn=src.torch_name("nn"),
                         weights="kaiming_normal_" if kaiming else "xavier_uniform_",
                         how=', nonlinearity="relu"' if kaiming else "")
    return [src.before(src.statement(optimizer["line"]), *code.splitlines())]


PROBABILITY_LAYERS = ("Softmax", "Sigmoid", "LogSoftmax")


def loss_input(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """The probability layer that feeds the loss becomes ``nn.Identity()`` (the loss takes the logits),
    or ``nn.LogSoftmax`` for an NLL loss, where the script builds it."""
    layer = str(spec.get("layer", ""))
    last = layer.rsplit(".", 1)[-1]
    found = []
    for file in sites.files():
        src = sites.source(file)
        for call in ast.walk(src.tree):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in PROBABILITY_LAYERS:
                found.append((src, call, _named_as(src, call)))
    if len(found) > 1:
        found = [f for f in found if f[2] == last]
    if len(found) != 1:
        raise NoPatch(f"it is not clear which line builds {layer}")
    src, call, _ = found[0]
    func = src.segment(call.func)
    prefix = func[:-len(call.func.attr)]
    start, end = src.span(call)
    if spec.get("loss") == "nll_loss" and call.func.attr == "Softmax":
        return [Edit(src.file, start, end, src.segment(call).replace(func, prefix + "LogSoftmax", 1))]
    return [Edit(src.file, start, end, f"{prefix}Identity()")]


def _named_as(src: Source, call: ast.Call) -> str | None:
    """The module name a layer gets where it is built: ``self.<name> = ...``, or its index in ``nn.Sequential(...)``."""
    parent = src.parents.get(id(call))
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Attribute):
        return parent.targets[0].attr
    if isinstance(parent, ast.Call) and last_name(parent.func) == "Sequential" and call in parent.args:
        return str(parent.args.index(call))
    return None
