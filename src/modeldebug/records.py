"""The shared vocabulary: rows the collector writes (one per step, per (sampled step, layer), per
(sampled step, parameter), ...) and what a run knows of its layers, parameters and optimizers.

Plain slotted dataclasses: made thousands of times a run, never validated. Field names are the
run store's column names and the Evidence table's column names: one vocabulary end to end.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Sequence

NAN = math.nan


@dataclass(slots=True)
class StepRecord:
    step: int
    loss: float = NAN
    grad_norm: float = NAN
    lr: float = NAN
    data_s: float = NAN  # in DataLoader.__next__; without one, from the last step's end to the forward
    forward_s: float = NAN
    backward_s: float = NAN
    optimizer_s: float = NAN
    step_s: float = NAN
    rss_bytes: float = NAN
    cuda_allocated: float = NAN
    cuda_reserved: float = NAN
    cuda_peak: float = NAN
    loss_nonfinite: bool = False
    grad_nonfinite: bool = False
    input_nonfinite: bool = False
    input_mean: float = NAN
    input_std: float = NAN
    input_min: float = NAN
    input_max: float = NAN
    # .grad already present before a backward, over the parameters an optimizer holds: the smallest of
    # the step's backward calls, the largest over the optimizers that stepped
    stale_grad_norm: float = NAN
    optimizer_stepped: bool = True
    backward_calls: int = 0
    forward_calls: int = 0
    sampled: bool = False
    eval_mode: bool = False  # a watched root module was in eval mode at this step's training forward
    scheduler_steps: int = 0  # lr_scheduler.step() calls since the previous step closed
    clip_calls: int = 0  # clip_grad_norm_/clip_grad_value_ calls since the previous step closed
    clips_before_backward: int = 0  # of those, made with no backward since the last zero_grad/step
    loss_calls: int = 0  # training calls of a torch loss function in this step
    # Sampled steps: the (first) loss function's output and the range of its input (the model's output).
    loss_fn_value: float = NAN
    loss_input_min: float = NAN
    loss_input_max: float = NAN
    loss_input_sum_err: float = NAN  # class losses: the largest |sum over classes - 1| of an input row
    # Mixed precision (collect/amp.py): the GradScaler's scale for this step's loss, and whether it
    # skipped optimizer.step() (inf/NaN in the scaled gradients; the scale is then halved).
    loss_scale: float = NAN
    scaler_skipped: bool = False
    clips_scaled: int = 0  # of clip_calls, made on gradients still multiplied by the loss scale


@dataclass(slots=True)
class LayerRecord:
    step: int
    layer: str
    numel: int = 0
    mean: float = NAN
    std: float = NAN
    min: float = NAN
    max: float = NAN
    zero_frac: float = NAN
    dead_frac: float = NAN  # units (channels/features) never positive over the batch
    sat_frac: float = NAN  # bounded activations only: fraction within 1% of a bound
    nonfinite: int = 0
    fwd_time_s: float = NAN
    hist_lo: float = NAN
    hist_hi: float = NAN
    hist: bytes | None = None  # counts as little-endian int64
    grad_mean: float = NAN
    grad_std: float = NAN
    grad_norm: float = NAN
    grad_max_abs: float = NAN
    grad_zero_frac: float = NAN
    grad_nonfinite: int = 0


@dataclass(slots=True)
class ParamRecord:
    step: int
    param: str
    norm: float = NAN
    grad_norm: float = NAN
    grad_mean: float = NAN
    grad_std: float = NAN
    update_ratio: float = NAN  # |w_after - w_before| / |w_before| over the optimizer step
    has_grad: bool = False
    changed: bool = False


@dataclass(slots=True)
class ValidationRecord:
    step: int  # training steps completed when the evaluation ran
    loss: float
    batches: int = 1
    accuracy: float = NAN  # top-1, when the loss gets class scores and integer targets
    train_mode_batches: int = 0  # batches evaluated with the root module in training mode
    # the loss function that gave it ("mse_loss"; "ctc_loss:sum" for another reduction; "" when mixed):
    # a summed cross-entropy or elementwise loss is recorded per item under its plain name
    loss_fn: str = ""


@dataclass(slots=True)
class RankRecord:
    """One rank's summary of the steps since the previous cross-rank gather, as rank 0 stored it
    (collect/distributed.py). Times are means over the window; loss and grad_norm the last step's."""

    step: int  # the step at whose close the ranks gathered
    rank: int
    world_size: int = 1
    steps_done: int = 0
    window: int = 0  # steps the means cover
    step_s: float = NAN
    data_s: float = NAN
    forward_s: float = NAN
    backward_s: float = NAN  # in DDP this includes waiting for the other ranks in the gradient all-reduce
    optimizer_s: float = NAN
    loss: float = NAN
    grad_norm: float = NAN
    first_nonfinite_loss: int = -1  # first step (on this rank) with a non-finite loss; -1: none yet
    first_nonfinite_grad: int = -1
    first_nonfinite_input: int = -1
    checksum: float = NAN  # sum over parameters of sum(p) + |p|, float64
    checksum_rel_diff: float = NAN  # |checksum - reference rank's| / sum of the reference's parameter norms
    desync: bool = False  # parameters differ from the reference rank's (the majority; rank 0 on a tie)
    desync_param: str = ""  # the parameter that differs most
    desync_param_diff: float = NAN  # its relative checksum difference
    gather_s: float = NAN  # seconds this rank spent in the previous gather (checksum and collective)


@dataclass(slots=True)
class EventRecord:
    step: int | None
    type: str
    data: dict = field(default_factory=dict)


# --- what the run knows of its models and optimizers (written once, as run meta) ---


@dataclass
class LayerInfo:
    name: str
    type: str
    order: int  # position in the forward pass (first sampled step); -1 when never seen running
    parameters: int = 0
    description: str = ""  # e.g. "Linear(in_features=512, out_features=10, bias=True)"
    model: str = ""
    # The first built-in torch.nn class in the module's MRO ("Tanh" for a subclass of nn.Tanh; the
    # type itself for a built-in; "" for a plain custom module): tables keyed by layer type match on it.
    family: str = ""


@dataclass
class ParamInfo:
    name: str  # qualified, prefixed by the model's name when several models are watched
    module: str
    shape: list[int]
    numel: int
    requires_grad: bool
    in_optimizer: bool
    lr: float | None = None
    model: str = ""
    weight_decay: float | None = None  # its param group's, when in an optimizer
    shard_numel: int | None = None  # values this rank holds of a sharded (FSDP2 DTensor) parameter

    @property
    def measured_numel(self) -> int:
        """The values its per-parameter statistics (norms, gradient moments) are taken over."""
        return self.numel if self.shard_numel is None else self.shard_numel


@dataclass
class OptimizerInfo:
    type: str
    param_groups: list[dict[str, Any]] = field(default_factory=list)  # lr, momentum, weight_decay, params


def column_names(record_type) -> list[str]:
    return [f.name for f in fields(record_type)]


def row_maker(record_type, names: Sequence[str]) -> Callable[..., tuple]:
    """``make(run_id, *values)`` (the values of ``names``, in that order) -> the record's row as the
    store writes it: run_id, then every field in order, those not named at their defaults;
    ``record_type(*row[1:])`` is the record. A row without the record object: an unsampled step's."""
    all_fields = fields(record_type)
    unknown = set(names) - {f.name for f in all_fields}
    if unknown:
        raise ValueError(f"{record_type.__name__} has no fields {sorted(unknown)}")
    defaults = {f"_{f.name}": f.default for f in all_fields if f.name not in names}
    if MISSING in defaults.values():
        raise ValueError(f"every field of {record_type.__name__} that is not named needs a plain default")
    values = ", ".join(f.name if f.name in names else f"_{f.name}" for f in all_fields)
    # (callgrind: ~6 K instructions a step row; the record and its row from it ~20 K)
    source = f"lambda run_id, {', '.join(names)}: (run_id, {values})"
    return eval(compile(source, __file__, "eval"), defaults)  # noqa: S307  (made of field names only)
