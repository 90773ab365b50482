"""What the collector writes to the run store: step records, a sampled step's layer and parameter
records from its summaries on the host, validation, events, and the run's meta."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from modeldebug.collect.loss_calls import PER_ITEM, LossCalls, per_item, reduction_of
from modeldebug.collect.sharding import local
from modeldebug.collect.stats import summarize_many
from modeldebug.events import BatchClasses, Event
from modeldebug.records import LayerRecord, ParamRecord, StepRecord, ValidationRecord

if TYPE_CHECKING:
    from modeldebug.collect.steps import Step
    from modeldebug.collect.watched import Watched

_CLASS_TARGET_LOSSES = {"cross_entropy", "nll_loss", "multi_margin_loss"}
COMPUTED = "computed"  # ValidationRecord.loss_fn of a loss the script computed from the output itself
META_EVERY_S = 10.0  # while the run goes on, its meta is written again at most this often (on sampled steps)
META_CHANGES = 8  # models and optimizers found that write it at once (a script making one a step: no more)

log = logging.getLogger(__name__)


class Writer:
    def __init__(self, store: Any, run_id: str, steps_done: Callable[[], int], bins: int):
        self.store = store
        self.run_id = run_id
        self._steps_done = steps_done
        self.bins = bins
        self.class_counts: dict[int, int] = {}
        self.label_mix = LabelMix()
        self._recent: deque[StepRecord | tuple] = deque(maxlen=256)  # records and rows, for metrics (bounded)
        self.latest_layers: dict[str, LayerRecord] = {}
        self._last_norms: dict[str, float] = {}
        self.loss_calls = LossCalls(self)
        self._told_nonfinite = False
        self._meta_at = -math.inf  # when the meta was last written while the run went on
        self._meta_seen: tuple = ()  # the models and optimizers it had then
        self._meta_changes = 0  # writes made because one was found

    def event(self, event: Event) -> None:
        self.store.add(self.run_id, event.record(self._steps_done()))

    def step(self, rec: StepRecord) -> None:
        self.store.add(self.run_id, rec)
        self._recent.append(rec)
        self._stepped(rec.loss_nonfinite or rec.grad_nonfinite)

    def step_row(self, row: tuple, nonfinite: bool) -> None:
        """A step as its row (``records.row_maker``): the hot path writes no StepRecord."""
        self.store.add_row(StepRecord, row)
        self._recent.append(row)
        self._stepped(nonfinite)

    def _stepped(self, nonfinite: bool) -> None:
        if nonfinite and not self._told_nonfinite:
            # Written at once, not within the second: a live diagnosis (--stop-on) acts on it now.
            self._told_nonfinite = True
            self.store.flush()

    @property
    def recent(self) -> list[StepRecord]:
        """The last 256 steps' records."""
        return [r if r.__class__ is StepRecord else StepRecord(*r[1:]) for r in self._recent]

    def meta(self, watched: "Watched", final: bool = True) -> None:
        """The run's layers, parameters, optimizers and class counts (at stop; ``final=False``: so far,
        for a look while the run goes on)."""
        if final:
            self.loss_calls.finish()
            mix = self.label_mix.finish()
            if mix is not None:
                self.event(mix)
        params, optimizers = watched.infos()
        self.store.set_meta(self.run_id, layers=watched.layer_info, params=params, optimizers=optimizers,
                            class_counts=self.class_counts)

    def sampled(self, st: "Step", step_rec: StepRecord, host: list, extra_host: list, watched: "Watched") -> None:
        """Records of a sampled step from its parts on the host (``Step.sampled_parts``, then a ``Transfer``)."""
        layer_names = list(st.layer_vecs)
        grad_names = list(st.grad_vecs)
        pre, post = st.param_pre, st.param_post
        if st.class_counts is not None:
            counts = extra_host.pop(0)
            for cls in np.flatnonzero(counts).tolist():
                self.class_counts[cls] = self.class_counts.get(cls, 0) + int(counts[cls])
        probe = self.loss_calls.arrived(st, extra_host)
        if probe is not None:
            (step_rec.loss_fn_value, step_rec.loss_input_min, step_rec.loss_input_max,
             step_rec.loss_input_sum_err) = (float(v) for v in probe)
        n_layers = len(layer_names)
        outs = summarize_many(host[:n_layers], self.bins, [watched.bounds.get(n) for n in layer_names])
        plain = summarize_many(host[n_layers:])
        rows: dict[str, LayerRecord] = {}
        for name, s in zip(layer_names, outs):
            reduced, fwd = st.layer_vecs[name]
            rec = LayerRecord(
                step=st.index, layer=name, numel=reduced.numel, fwd_time_s=fwd, mean=s["mean"], std=s["std"],
                min=s["min"], max=s["max"], zero_frac=s["zero_frac"], dead_frac=s["dead_frac"],
                sat_frac=s["sat_frac"], nonfinite=s["nonfinite"],
            )
            if s["hist"] is not None:
                rec.hist, rec.hist_lo, rec.hist_hi = s["hist"].tobytes(), s["hist_lo"], s["hist_hi"]
            rows[name] = rec
        if st.input_vec is not None:
            s = plain.pop()
            step_rec.input_mean, step_rec.input_std, step_rec.input_min, step_rec.input_max = (
                s["mean"], s["std"], s["min"], s["max"])
            step_rec.input_nonfinite = step_rec.input_nonfinite or s["nonfinite"] > 0
        for name, s in zip(grad_names, plain):
            rec = rows.get(name) or LayerRecord(step=st.index, layer=name, numel=st.grad_vecs[name].numel)
            rec.grad_mean, rec.grad_std, rec.grad_norm = s["mean"], s["std"], s["norm"]
            rec.grad_max_abs, rec.grad_zero_frac, rec.grad_nonfinite = s["max_abs"], s["zero_frac"], s["nonfinite"]
            rows[name] = rec
        self.store.add_many(self.run_id, rows.values())
        for rec in rows.values():
            self.latest_layers[rec.layer] = rec
        if pre is not None:
            self._params(st.index, watched.params, pre, post is not None, extra_host)
        self.meta_so_far(watched)

    def meta_so_far(self, watched: "Watched", changed: bool = False) -> None:
        """The meta so far, for those who read the run while it goes on (the live diagnosis: a
        rule that reads the optimizers or the parameters must not judge a run without them; a run
        killed before it stops): when a model or optimizer is found (the first META_CHANGES times;
        later ones at the next sampled step), and on sampled steps at most every META_EVERY_S, so
        its cost stays within the sampled steps' budget."""
        seen = (len(watched.models), len(watched.optimizers))
        now = time.monotonic()
        if changed:
            if self._meta_changes >= META_CHANGES:
                return  # (a script that makes an optimizer a step: the sampled steps catch up)
        elif seen == self._meta_seen and now - self._meta_at < META_EVERY_S:
            return
        try:
            self.meta(watched, final=False)
        except Exception:  # noqa: BLE001 - the meta at stop is the one that counts (and no run row yet: at start)
            log.debug("modeldebug could not write the run's meta so far", exc_info=True)
            return
        self._meta_at, self._meta_seen = now, seen
        self._meta_changes += changed

    def _params(self, step: int, params: list, pre, updated: bool, extra_host: list) -> None:
        params = params[: len(pre.has_grad)]  # a model found during the step is not in its snapshot
        n_params = len(params)
        norms = extra_host[0]
        graded = sum(pre.has_grad)
        grad_norms = grad_sums = ()
        if graded:
            grad_norms, grad_sums = extra_host[1][:graded], extra_host[1][graded:]
        if updated:
            stats = extra_host[-1]
            post_norms, deltas, subset_norms = stats[:n_params], stats[n_params : 2 * n_params], stats[2 * n_params :]
        grad_at = {}  # parameter index -> its row in grad_norms / grad_sums
        for i, has in enumerate(pre.has_grad):
            if has:
                grad_at[i] = len(grad_at)
        records = []
        for i, (pname, p) in enumerate(params):
            n = local(p).numel()  # (a DTensor's statistics are its local shard's)
            if not n:
                continue  # an empty shard (FSDP): nothing measured on this rank
            rec = ParamRecord(step=step, param=pname, norm=float(norms[i]))
            j = grad_at.get(i)
            if j is not None:
                rec.has_grad = True
                rec.grad_norm = float(grad_norms[j])
                rec.grad_mean = float(grad_sums[j]) / n
                rec.grad_std = math.sqrt(max(rec.grad_norm**2 / n - rec.grad_mean**2, 0.0))
            if updated:
                base = float(subset_norms[i])
                rec.update_ratio = float(deltas[i]) / base if base > 0 else (0.0 if deltas[i] == 0 else math.inf)
                rec.changed = bool(deltas[i] > 0 or post_norms[i] != norms[i])
            else:  # no optimizer step to measure: did it change since the last look?
                rec.changed = pname in self._last_norms and self._last_norms[pname] != rec.norm
            self._last_norms[pname] = float(post_norms[i]) if updated else rec.norm
            records.append(rec)
        self.store.add_many(self.run_id, records)


class _Sums:
    """Evaluation losses and top-1 hits summed on the device."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.count = 0
        self.hits: torch.Tensor | None = None  # correct class predictions
        self.seen = 0
        self.train_mode = 0  # batches evaluated with the root module in training mode

    def add(self, loss: torch.Tensor | None, hits: torch.Tensor | None, seen: int, train_mode: int,
            count: int = 1) -> None:
        if loss is not None:
            self.loss = loss if self.loss is None else self.loss + loss
        if hits is not None:
            self.hits = hits if self.hits is None else self.hits + hits
        self.count += count
        self.seen += seen
        self.train_mode += train_mode

    def merge(self, other: "_Sums") -> None:
        self.add(other.loss, other.hits, other.seen, other.train_mode, other.count)


class Validation:
    """Evaluation losses (and top-1 hits) summed on the device, written as one record per evaluation.
    A loss that has a graph (grad on, after an eval-mode forward) is tentative until the step ends:
    a backward through it makes it a training loss (``discard_tentative``)."""

    def __init__(self) -> None:
        self._sums = _Sums()
        self._tentative = _Sums()
        self._fn: str | None = None  # the loss function of this evaluation ("" when several)
        self._given: float | None = None  # the framework's own loss for it (set_loss)
        self.pending: Callable[[], None] | None = None  # gives this evaluation's computed losses (eval_losses.py)

    def set_loss(self, loss: float) -> None:
        """The training framework's own loss for the evaluation just run (the HF Trainer's eval_loss):
        the record says it instead of the loss calls' mean (a model's own loss may call none)."""
        self._given = float(loss)

    def add(self, name: str, input, target, output: torch.Tensor, train_mode: bool = False,
            tentative: bool = False, options: dict | None = None) -> None:
        if output.numel() != 1:
            return
        reduction = reduction_of(options)
        value = per_item(name, input, target, output, options)  # a summed loss per item: the script's units
        fn = name if reduction == "mean" or (reduction == "sum" and name in PER_ITEM) else f"{name}:{reduction}"
        self._fn = fn if self._fn in (None, fn) else ""
        hits, seen = None, 0
        if name in _CLASS_TARGET_LOSSES and class_scores(input, target):
            hits, seen = (input.detach().argmax(1) == target).sum(), target.numel()
        (self._tentative if tentative else self._sums).add(value, hits, seen, train_mode)

    def add_computed(self, value: torch.Tensor, train_mode: bool) -> None:
        """A loss the script computed itself from the model's output (collect/eval_losses.py)."""
        self._fn = COMPUTED if self._fn in (None, COMPUTED) else ""
        self._sums.add(value.float().reshape(()), None, 0, train_mode)

    def discard_tentative(self) -> None:
        self._tentative = _Sums()

    @property
    def batches(self) -> int:
        """Evaluation losses recorded since the last evaluation was written."""
        return self._sums.count + self._tentative.count

    def flush(self, writer: Writer, step: int) -> None:
        if self.pending is not None:
            self.pending()
        given, self._given = self._given, None
        if not self._sums.count and not self._tentative.count and given is None:
            self._fn = None
            return  # (every step begins here: no objects made when there was no evaluation)
        sums = self._sums
        sums.merge(self._tentative)
        self._tentative = _Sums()
        if sums.count or given is not None:
            loss = given if given is not None else float(sums.loss.item()) / sums.count
            acc = float(sums.hits.item()) / sums.seen if sums.seen else math.nan
            writer.store.add(writer.run_id, ValidationRecord(step=step, loss=loss, batches=sums.count or 1, accuracy=acc,
                                                             train_mode_batches=sums.train_mode,
                                                             loss_fn=self._fn or ""))
            self._sums = _Sums()
        self._fn = None


def class_scores(input, target) -> bool:
    """Class scores [N, C, ...] with integer class targets [N, ...] (accuracy can be measured)."""
    return (
        isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and not target.is_floating_point()
        and input.dim() == target.dim() + 1
        and input.shape[0] == target.shape[0]
    )


class LabelMix:
    """Whether training batches of a class-index loss hold one class only, probed every ``EVERY``-th
    training call on any step (the sampled steps alone are too few: a short run's adaptive schedule
    samples a handful): one aminmax of the targets and a comparison, added up on their device,
    read once at stop."""

    EVERY = 16
    MAX_PROBES = 10_000

    def __init__(self) -> None:
        self._calls = 0
        self._off = False
        self._single: torch.Tensor | None = None
        self._lows: list[torch.Tensor] = []  # each probed batch's smallest label (its class, if it has one)
        self._sizes: list[int] = []

    def training_call(self, name: str, input, target) -> None:
        self._calls += 1
        if self._calls % self.EVERY or len(self._sizes) >= self.MAX_PROBES:
            return
        if self._off or name not in _CLASS_TARGET_LOSSES or not class_scores(input, target) or target.numel() < 2:
            return
        try:
            lo, hi = torch.aminmax(target.detach().reshape(-1))
            one = (lo == hi).to(torch.int64)
        except Exception:  # (a dtype or device aminmax lacks): this probe stops, the monitor goes on
            self._off = True
            return
        self._single = one if self._single is None else self._single + one
        self._lows.append(lo)
        self._sizes.append(int(target.numel()))

    def finish(self) -> "BatchClasses | None":
        if self._single is None:
            return None
        lows, counts = np.unique(torch.stack(self._lows).cpu().numpy(), return_counts=True)
        mix = BatchClasses(batches=len(self._sizes), single_class=int(self._single),
                           median_size=float(np.median(self._sizes)),
                           lowest_labels={int(k): int(c) for k, c in zip(lows, counts)})
        self._single, self._lows, self._sizes = None, [], []  # (written once)
        return mix


def class_counts(name: str, input, target, counts: torch.Tensor | None) -> torch.Tensor | None:
    """Targets per class of a training batch, on the device without a sync (``bincount`` and boolean
    indexing both wait for the device to know their output's size); ``ignore_index`` targets
    (negative) are left out."""
    if name not in _CLASS_TARGET_LOSSES or not class_scores(input, target):
        return counts
    n = input.shape[1]
    labels = target.detach().reshape(-1)
    valid = ((labels >= 0) & (labels < n)).float()
    batch = torch.zeros(n, device=labels.device).index_add_(0, labels.clamp(0, n - 1), valid)
    return batch if counts is None else counts + batch
