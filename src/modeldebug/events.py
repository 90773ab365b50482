"""Typed events: what happened once in a run (the device, an exception, a rank's exit, ...).

One dataclass per event type, tagged by the string the store keeps (``tag``). The stored form is
unchanged, ``EventRecord(step, type=<tag>, data=<dict>)`` (``Evidence.events`` holds those rows as
dicts, so old stores load and unknown types are kept as they are); ``Evidence.events_of(Cls)`` reads
the events of one type as ``Cls`` instances. Fields are the data's keys; a key missing from an old
store takes the field's default, a key a newer version wrote is left out. Standard library only:
the store, the rules and the parent ``modeldebug run`` read these without importing torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterable, TypeVar

from modeldebug.records import EventRecord

E = TypeVar("E", bound="Event")

# A field with this metadata is left out of the stored data while it is None (written only when known).
OPTIONAL = {"optional": True}


@dataclass
class Event:
    tag: ClassVar[str] = ""
    # The step count when the event was written (the record's step, not part of its data).
    at_step: int | None = field(default=None, kw_only=True, compare=False)

    def to_data(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "at_step" and not (f.metadata.get("optional") and getattr(self, f.name) is None)}

    @classmethod
    def from_data(cls: type[E], data: dict[str, Any], at_step: int | None = None) -> E:
        known = {f.name for f in fields(cls)} - {"at_step"}
        return cls(**{k: v for k, v in data.items() if k in known}, at_step=at_step)

    def record(self, step: int | None) -> EventRecord:
        """The row the store keeps, written at ``step`` (the record's step)."""
        return EventRecord(step=step, type=self.tag, data=self.to_data())


def decoded(data: Any) -> dict[str, Any]:
    """An event's data as a dict: some stores keep it as JSON text; text that is not JSON is ``{"text": ...}``."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return {"text": data}
    return data if isinstance(data, dict) else {}


def events_of(rows: Iterable[dict[str, Any]], cls: type[E]) -> list[E]:
    """The events of type ``cls`` among stored event rows (dicts with step, type, data), in order."""
    return [cls.from_data(decoded(r.get("data")), at_step=r.get("step")) for r in rows if r.get("type") == cls.tag]


# ---------------------------------------------------------------------- the collector's events


@dataclass
class Device(Event):
    """The CUDA device the run trained on, once: memory_pressure measures against its memory."""

    tag: ClassVar[str] = "device"
    type: str = ""
    name: str = ""
    total_memory: int | None = None
    host_total_memory: int | None = field(default=None, metadata=OPTIONAL)

    @classmethod
    def from_data(cls, data, at_step=None):
        if "total_memory" not in data and "cuda_total_memory" in data:  # an older spelling
            data = {**data, "total_memory": data["cuda_total_memory"]}
        return super().from_data(data, at_step)


@dataclass
class MemoryAtStop(Event):
    """The CUDA allocator's counters as the run stopped (an out-of-memory step never closes)."""

    tag: ClassVar[str] = "memory_at_stop"
    cuda_allocated: float | None = None
    cuda_reserved: float | None = None
    cuda_peak: float | None = None


@dataclass
class ScriptException(Event):
    """The exception that ended the run: type and message only."""

    tag: ClassVar[str] = "exception"
    type: str = ""
    message: str = ""


@dataclass
class RuntimeErrorDiagnosis(Event):
    """The exception diagnosed in-process (a Finding, as JSON): the stored data is the finding itself."""

    tag: ClassVar[str] = "runtime_error"
    finding: dict[str, Any] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        return dict(self.finding)

    @classmethod
    def from_data(cls, data, at_step=None):
        return cls(finding=dict(data), at_step=at_step)


@dataclass
class Traceback(Event):
    """The formatted traceback of the exception that ended a zero-code run."""

    tag: ClassVar[str] = "traceback"
    text: str = ""


@dataclass
class ProcessActivity(Event):
    """What a zero-code run's process saw of training outside its watched models, written at stop
    (collect/children.py): backward() calls made while no model was watched, and the processes the
    script started (``children``: one dict per kind and target, with ``kind`` multiprocessing, fork,
    subprocess or system, ``target`` the function or command, ``count``; data loader workers apart)."""

    tag: ClassVar[str] = "process_activity"
    unwatched_backward_calls: int = 0
    children: list[dict[str, Any]] = field(default_factory=list)
    children_total: int = 0
    loader_workers: int = 0


@dataclass
class NonfiniteOrigin(Event):
    """Where the first NaN/Inf of a step came from, found by replaying the step (collect/nan_origin.py)."""

    tag: ClassVar[str] = "nonfinite_origin"
    step: int | None = None  # the replayed step
    phase: str = "unknown"  # input | weights | forward | backward | loss | unknown
    module: str | None = None
    module_type: str | None = None
    op: str | None = None
    cause: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("phase", "module", "module_type", "op", "cause")}


@dataclass
class LrScheduler(Event):
    """A learning-rate scheduler's first ``step()`` call: its class and simple settings (step_size, gamma, T_max...)."""

    tag: ClassVar[str] = "lr_scheduler"
    type: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class GradientClip(Event):
    """The first gradient-clipping call made before any backward of its step (and the first after one)."""

    tag: ClassVar[str] = "gradient_clip"
    function: str = ""
    max_value: float | None = None  # max_norm, or clip_value
    before_backward: bool = False


@dataclass
class ScaledOptimizerSteps(Event):
    """Optimizer steps taken on gradients a GradScaler had scaled and nobody unscaled (``optimizer.step()``
    called directly after ``scaler.scale(loss).backward()``, not through ``scaler.step``): written at stop."""

    tag: ClassVar[str] = "scaled_optimizer_steps"
    steps: int = 0  # optimizer steps taken so
    optimizer_steps: int = 0  # optimizer steps of the watched optimizers in all
    first_step: int = 0
    scale: float | None = None  # the scale the gradients carried at the first one
    optimizer: str = ""  # its class
    grad_norm: float | None = None  # the first one's gradient norm, unscaled (the applied one is x scale)


@dataclass
class StepsOnClearedGradients(Event):
    """Optimizer steps taken after that optimizer's ``zero_grad()`` ran between the step's backward
    and the step itself (``loss.backward(); opt.zero_grad(); opt.step()``): the step found the
    gradients it should apply cleared. Written at stop."""

    tag: ClassVar[str] = "steps_on_cleared_gradients"
    steps: int = 0  # optimizer steps taken so
    optimizer_steps: int = 0  # steps of the run in all
    first_step: int = 0
    optimizer: str = ""  # its class


@dataclass
class BatchClasses(Event):
    """Whether training batches of a class-index loss held one class only (every 16th loss call
    probed, ``collect.writer.LabelMix``): batches of one class where the labels have several are
    data that arrives ordered by label. Written at stop."""

    tag: ClassVar[str] = "batch_classes"
    batches: int = 0  # batches probed (two targets or more)
    single_class: int = 0  # of them, those whose targets were all one class
    median_size: float = 0.0  # targets per probed batch
    # probed batches by their smallest label: a one-class batch's class; shuffled data puts the
    # smallest class in almost every batch, data ordered by label each class in turn
    lowest_labels: dict[int, int] = field(default_factory=dict)


# torch.nn.functional's losses by their module's name, as messages name them
LOSS_FUNCS = {"cross_entropy": "CrossEntropyLoss", "nll_loss": "NLLLoss", "mse_loss": "MSELoss",
              "l1_loss": "L1Loss", "binary_cross_entropy": "BCELoss", "smooth_l1_loss": "SmoothL1Loss",
              "binary_cross_entropy_with_logits": "BCEWithLogitsLoss", "huber_loss": "HuberLoss"}
CLASS_LOSSES = frozenset({"cross_entropy", "nll_loss"})  # losses of class ids (or class probabilities)


@dataclass
class LossCall(Event):
    """A training call of a torch loss function with shapes not seen before (host-side, once each;
    collect/loss_calls.py): what the loss compares, and how it reduces."""

    tag: ClassVar[str] = "loss_call"
    name: str = ""  # the torch.nn.functional name: "cross_entropy", "mse_loss", ...
    input_shape: list[int] | None = None
    target_shape: list[int] | None = None
    # The shape input and target broadcast to, when it holds more elements than either ([N,1] vs [N]).
    broadcast_shape: list[int] | None = None
    reduction: str = "mean"
    options: dict[str, Any] = field(default_factory=dict)  # label_smoothing, beta, delta; weighted: True


@dataclass
class LossTargets(Event):
    """Regression-style targets sampled at the loss call, and the loss a constant prediction gets on
    them (the trivial predictor's, per output: the mean for MSE, the median for L1 and Huber-like
    losses, the positive rate for binary cross-entropy). Written once, when the run stops."""

    tag: ClassVar[str] = "loss_targets"
    name: str = ""
    rows: int = 0
    features: int = 0
    baseline: float | None = None
    predictor: str = ""  # "the mean", "the median", "the positive rate"
    # shares of the sampled target values below 0, below -1 and above 1 (what a bounded output can't reach)
    below_zero: float | None = None
    below_minus_one: float | None = None
    above_one: float | None = None
    rms: float | None = None  # root mean square of the sampled target values: their scale


@dataclass
class NewParameters(Event):
    """Parameters a watched model held at a sampled step that were not its own when watching began
    (a module created inside ``forward``): the first few such steps, each once."""

    tag: ClassVar[str] = "new_parameters"
    params: list[str] = field(default_factory=list)  # qualified names (the first 20)
    count: int = 0
    numel: int = 0
    in_optimizer: int = 0  # values of them some watched optimizer holds


@dataclass
class EvalOverlap(Event):
    """Evaluation inputs whose samples are training samples, by content fingerprint
    (collect/fingerprints.py), per evaluation source (a DataLoader's dataset, or a tensor's storage):
    written once, when the run stops."""

    tag: ClassVar[str] = "eval_overlap"
    sources: list[dict[str, Any]] = field(default_factory=list)  # source, kind, samples, distinct, in_train
    train_samples: int = 0  # training samples fingerprinted
    train_distinct: int = 0
    train_size: int | None = None  # the training DataLoader's dataset size, when known


@dataclass
class ReturnedOutputs(Event):
    """Modules whose output an enclosing module returns among two tensors or more (collect/flow.py,
    one sampled step): what a caller may use in part, such as a backbone's pooled output."""

    tag: ClassVar[str] = "returned_outputs"
    modules: list[str] = field(default_factory=list)


@dataclass
class BatchIdentity(Event):
    """The batch of a step whose loss jumped far above its running level (collect/spikes.py): where it
    sits in its epoch and a hash of its content, so the user can find it and skip it."""

    tag: ClassVar[str] = "batch_identity"
    step: int = 0
    loss: float | None = None
    level: float | None = None  # the running level the loss jumped above (an EMA)
    epoch: int | None = None  # 0-based: which pass over the DataLoader (None: batches not from one)
    position: int | None = None  # 0-based index of the batch in its epoch
    content_hash: str | None = None  # blake2b of the first input tensor's bytes (None: not on the host)
    shape: list[int] | None = None


@dataclass
class MonitorError(Event):
    """The monitor switched itself off after an error in one of its own hooks (the script went on)."""

    tag: ClassVar[str] = "monitor_error"
    hook: str = ""
    type: str = ""
    message: str = ""


# ---------------------------------------------------------------------- distributed runs


@dataclass
class Rank(Event):
    """This process is one rank of several (written by every rank into its own run)."""

    tag: ClassVar[str] = "rank"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    host: str = ""
    pid: int = 0
    every: int = 0


@dataclass
class RankGatherError(Event):
    tag: ClassVar[str] = "rank_gather_error"
    type: str = ""
    message: str = ""


@dataclass
class RankExit(Event):
    """A rank's own record of how it stopped (no collective at stop: ranks stop at different points)."""

    tag: ClassVar[str] = "rank_exit"
    rank: int = 0
    world_size: int = 1
    status: str = ""
    time: float | None = None
    steps: int = 0
    gathers: int = 0
    gather_s_median: float | None = None
    error_type: str | None = field(default=None, metadata=OPTIONAL)
    message: str | None = field(default=None, metadata=OPTIONAL)
    comm_error: bool | None = field(default=None, metadata=OPTIONAL)
    parallel: str | None = field(default=None, metadata=OPTIONAL)  # "DDP", "FSDP", "FSDP2"; "" for none


@dataclass
class RankKilled(Event):
    """torchrun ended this rank with a signal (after another rank failed)."""

    tag: ClassVar[str] = "rank_killed"
    rank: int = 0
    signal: int | None = None
    time: float | None = None
    steps: int | None = None


@dataclass
class Ranks(Event):
    """Every rank's outcome, gathered from their runs by the ``modeldebug run`` parent when the job
    ended (collect/distributed.summarize_ranks): one dict per rank with rank, run_id, status,
    steps, and where known time, error_type, message, comm_error, killed_by_signal, lost."""

    tag: ClassVar[str] = "ranks"
    ranks: list[dict[str, Any]] = field(default_factory=list)

    def first_failed(self) -> dict[str, Any] | None:
        """The rank where the failure began: a rank that raised an error of its own (not a lost
        connection to another rank) earliest; else a rank that died without a word; else the
        earliest crash."""
        failed = [r for r in self.ranks
                  if r.get("status") in ("crashed", "interrupted") and not r.get("killed_by_signal")]
        if not failed:
            return None
        own = [r for r in failed if r.get("error_type") and not r.get("comm_error")]
        if own:
            return min(own, key=lambda r: r.get("time") or math.inf)
        lost = [r for r in failed if r.get("lost")]
        if lost:
            return lost[0]
        return min(failed, key=lambda r: r.get("time") or math.inf)
