"""Distributed training (torch.distributed, DDP through ``torchrun``): ranks, per-rank summaries, the gather.

``modeldebug run -- torchrun --nproc-per-node 2 train.py`` leaves the torchrun launcher alone and
starts one Debugger in every worker (``collect/autopatch``: the launcher passes ``MODELDEBUG_RUN``
on to its workers, which know their rank from torchrun's ``RANK``/``WORLD_SIZE``):

* Every rank collects locally into its own run: rank 0 into the run ``modeldebug run`` created,
  rank r > 0 into ``<run_id>.rank<r>`` in the same store (one SQLite file on one machine; WAL
  and the busy timeout let the ranks write at once). Every rank's evidence stays queryable
  (``modeldebug report <run_id>.rank1``).
* At steps fixed by the step count alone (at the close of the same step on every rank: in DDP
  all ranks close the same steps; see ``gather_gap``: every 10 steps at first, then a quarter of
  the steps done, at most 1000) each rank sums up the steps since the last gather into one small float64 vector
  (mean step/data/forward/backward/optimizer time, last loss and gradient norm, the first step
  with a non-finite loss, gradient or input batch, and a parameter checksum: the sum over
  parameters of sum(p) + |p| in float64), and the ranks ``all_gather`` it. Rank 0 stores one
  ``RankRecord`` per rank (table ``rank_stats``), which the cross-rank rules read. When the
  checksums differ, one more gather of the per-parameter checksums names the parameter.
* The gather runs on a gloo group of its own (``new_group(backend="gloo")``, made once, by all
  ranks, at the first gather), so it never interleaves with DDP's collectives on the default
  group and works the same whatever the script's backend (gloo or nccl: the vectors are copied to
  the CPU, one copy every ``every`` steps). Its timeout is COLLECTIVE_TIMEOUT_S: a rank whose
  monitor stopped does not stall the others' training for longer. Nothing is gathered at stop (ranks may legitimately
  stop at different points): each rank writes a ``rank_exit`` event to its own run instead, and
  the ``modeldebug run`` parent reads every rank's run when the job ends (which rank failed first).
* Sharded parameters (FSDP1, FSDP2; ``collect/sharding.py``): each rank's shard differs by design,
  so the checksum covers only what every rank holds whole; the step's gradient norm is the whole
  gradient's, from one small all-reduce per step on the monitor's own gloo group at the optimizer
  step, where ``clip_grad_norm_`` does its own.
* On several machines each node's ranks write to that node's store; rank 0's gathered summaries
  alone make the cross-rank findings, and the other ranks' runs stay on their nodes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from modeldebug.events import Rank, RankExit, RankGatherError, RankKilled, events_of
from modeldebug.records import RankRecord

if TYPE_CHECKING:
    import torch

    from modeldebug.collect.sharding import Shards

log = logging.getLogger(__name__)

# Steps between gathers, from the step count only (a gap set from measured gather and step times
# grew past the end of a short run on a loaded machine, and the desync after the last gather went
# unseen): MIN_EVERY at first, then GAP_FRACTION of the steps done (so a fault is seen at the
# latest a quarter of the run after it began, and a run of N steps gathers O(log N) times once
# N > 80), never more than MAX_EVERY; a fixed N with MODELDEBUG_DIST_EVERY=N.
MIN_EVERY, MAX_EVERY, GAP_FRACTION = 10, 1000, 0.25
# Relative checksum difference (over the sum of parameter norms) that counts as a desync. DDP
# replicas apply the same averaged gradients, so their parameters are bitwise equal: anything
# above float rounding on different hardware is a real difference.
DESYNC_RTOL = 1e-6
MAX_PARAM_GATHERS = 3  # per-parameter gathers (to name the parameter) per run
# The monitor's collectives run right after every rank's optimizer step (ranks have just met in
# the backward's gradient reduction), so a rank is late by no more than its step's skew. A rank
# whose monitor stopped (an internal error on one rank: shards differ, so can failures) never
# comes: the others give up after this long and gather no more, instead of stalling the training.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("MODELDEBUG_DIST_TIMEOUT", "120") or 120)
_COMM_ERRORS = ("gloo", "nccl", "connection", "processgroup", "timed out", "broken pipe", "peer", "socket",
                "distbackenderror", "collective", "rendezvous")

# Header layout of the gathered vector (float64).
FIELDS = ("rank", "world_size", "steps_done", "window", "step_s", "data_s", "forward_s", "backward_s",
          "optimizer_s", "loss", "grad_norm", "first_nonfinite_loss", "first_nonfinite_grad",
          "first_nonfinite_input", "n_params", "checksum", "scale", "gather_s")
_AT = {name: i for i, name in enumerate(FIELDS)}


def process_rank() -> tuple[int, int] | None:
    """(rank, world size) of this process when a launcher (torchrun) started it as one of several ranks."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 and 0 <= rank < world else None


def rank_run_id(run_id: str, rank: int) -> str:
    """Rank 0 writes the run itself; rank r > 0 writes ``<run_id>.rank<r>``."""
    return run_id if rank == 0 else f"{run_id}.rank{rank}"


def is_launcher(argv: list[str] | None = None) -> bool:
    """The torchrun launcher (``torchrun``, ``python -m torch.distributed.run`` or ``.launch``): it
    starts the workers and trains nothing itself."""
    argv = list(argv if argv is not None else getattr(sys, "orig_argv", sys.argv))
    if any(os.path.basename(a) == "torchrun" for a in argv[:3]):
        return True
    for i, a in enumerate(argv[:-1]):
        if a == "-m" and argv[i + 1] in ("torch.distributed.run", "torch.distributed.launch"):
            return True
    return False


def prepare_rank_run(settings: dict[str, Any], rank: int) -> str:
    """The run id this rank writes to; creates ``<run_id>.rank<r>`` for rank r > 0 (started just
    before rank 0's run, so that "latest" still names rank 0's)."""
    from modeldebug.config import DebuggingConfig
    from modeldebug.store import RunStore
    from modeldebug.types import RunInfo

    base = settings["run_id"]
    run_id = rank_run_id(base, rank)
    if rank == 0:
        return run_id
    with RunStore(settings["store"]) as store:
        main = next((r for r in store.list_runs(limit=200, prefix=base) if r.id == base), None)
        started = (main.started_at if main and main.started_at else time.time()) - 1e-3 * rank
        config = DebuggingConfig.model_validate(settings.get("config") or {})
        store.create_run(RunInfo(id=run_id, command=list(settings.get("command") or []), status="running",
                                 started_at=started), config)
    return run_id


def is_comm_error(error_type: str | None, message: str | None) -> bool:
    """An error that a rank gets because another rank went away (not where the failure began)."""
    text = f"{error_type or ''} {message or ''}".lower()
    return any(word in text for word in _COMM_ERRORS)


class RankWatch:
    """One rank's part of the cross-rank checks; the Debugger calls ``on_step`` and ``on_stop``."""

    def __init__(self, debugger, rank: int, world_size: int, every: int | None = None):
        self.dbg = debugger
        self.rank = rank
        self.world_size = world_size
        fixed = every or int(os.environ.get("MODELDEBUG_DIST_EVERY", "0") or 0)
        self.fixed = fixed > 0
        self.every = fixed if fixed > 0 else MIN_EVERY
        self._next = 0  # the step at whose close the next gather happens
        self._window: list[Any] = []  # StepRecords since the last gather (filled in when resolved)
        self._first = {"loss": -1, "grad": -1, "input": -1}
        self._group = None
        self._off = False  # gathering failed once: no more collectives from this rank
        self._param_gathers = 0
        self._last_gather_s = math.nan
        self.gather_times: list[float] = []  # seconds per gather on this rank (collective + checksum)
        self._previous_term = None
        self.setup_s = 0.0  # time spent making the gather's process group (once)
        self._shards: Shards | None = None
        self._shards_of: list | None = None  # the watched ``params`` list ``_shards`` was found in
        self._norm_off = False  # the global gradient norm failed once: local norms from then on

    @classmethod
    def for_process(cls, debugger) -> "RankWatch | None":
        found = process_rank()
        if found is None:
            return None
        watch = cls(debugger, *found)
        debugger.event(Rank(rank=watch.rank, world_size=watch.world_size,
                            local_rank=int(os.environ.get("LOCAL_RANK", watch.rank)),
                            host=os.uname().nodename, pid=os.getpid(), every=watch.every))
        watch._catch_sigterm()
        # No NaN-origin replay: re-running a DDP forward/backward on one rank would run DDP's
        # collectives there alone. The cross-rank summaries say which rank a NaN started on.
        debugger.disable_replay()
        return watch

    # ------------------------------------------------------------------ sharded parameters (FSDP)

    def shards(self) -> Shards:
        """The watched parameters that are this rank's shards (found again when the watched ones change)."""
        from modeldebug.collect.sharding import Shards

        watched = self.dbg.watched
        if self._shards is None or self._shards_of is not watched.params:
            self._shards_of = watched.params
            self._shards = Shards([p for _, p in watched.params], [m.module for m in watched.models])
        return self._shards

    def global_grad_norm(self, local_norm: "torch.Tensor | None") -> "torch.Tensor | None":
        """The norm of the whole gradient when parameters are sharded (one all-reduce on the shards'
        own group, every step, on every rank); ``local_norm`` (that of this rank's gradients) when
        every parameter is replicated, and once the all-reduce has failed."""
        if self._norm_off:
            return local_norm
        try:
            shards = self.shards()
            if not shards:
                return local_norm
            norm = shards.grad_norm(self.dbg.watched.tensors(), self._sum_over_ranks)
            self.setup_s = 0.0  # (a group made here is paid in this step's monitor time)
            return norm
        except Exception as exc:  # the collective failed or timed out: no more collectives from this rank
            self._norm_off = self._off = True
            log.warning("modeldebug: the global gradient norm over the shards failed (%s); norms are this rank's", exc)
            self.dbg.event(RankGatherError(type=type(exc).__name__, message=str(exc)[:500]))
            return local_norm

    # ------------------------------------------------------------------ steps

    def on_step(self, rec) -> None:
        self._window.append(rec)
        if rec.step < self._next or self._off:
            return
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != self.world_size:
            return  # the script has not made its process group yet (no rank gathers this step)
        t = time.perf_counter()
        try:
            self._gather(rec.step)
        except Exception as exc:  # a collective failed or timed out: no more collectives from this rank
            self._off = self._norm_off = True
            log.warning("modeldebug: cross-rank gather failed at step %d (%s); per-rank collection goes on",
                        rec.step, exc)
            self.dbg.event(RankGatherError(type=type(exc).__name__, message=str(exc)[:500]))
        if not self.fixed:
            self.every = gather_gap(rec.step)
        self._next = rec.step + self.every
        spent = time.perf_counter() - t
        self.dbg.add_monitor_time(spent)
        spent -= self.setup_s  # the group is made once: not part of the gather's cost per step
        self.setup_s = 0.0
        self._last_gather_s = spent
        self.gather_times.append(spent)

    def _header(self, step: int) -> "tuple[torch.Tensor, torch.Tensor | None]":
        import torch

        self.dbg.resolve_all()  # losses and flags of the window's steps (a sync on CUDA)
        window, self._window = self._window, []
        for rec in window:
            for key, bad in (("loss", rec.loss_nonfinite), ("grad", rec.grad_nonfinite),
                             ("input", rec.input_nonfinite)):
                if bad and self._first[key] < 0:
                    self._first[key] = rec.step

        def mean(name):
            vals = [getattr(r, name) for r in window if math.isfinite(getattr(r, name))]
            return sum(vals) / len(vals) if vals else math.nan

        last = window[-1] if window else None
        per_param = None
        checksum = scale = math.nan
        # Only what every rank holds whole is compared: each rank's shard differs by design (FSDP).
        from modeldebug.collect.sharding import local_all

        params = [p.detach() for p in local_all([self.dbg.watched.params[i][1] for i in self.shards().replicated])]
        if params:
            with torch.no_grad():
                norms = torch._foreach_norm(params)
                sums = [p.sum(dtype=torch.float64).cpu() for p in params]
                per_param = torch.stack(sums) + torch.stack([n.double().cpu() for n in norms])
                scale_t = torch.stack([n.double().cpu() for n in norms]).sum()
            checksum, scale = float(per_param.sum()), float(scale_t)
        values = {
            "rank": self.rank, "world_size": self.world_size, "steps_done": self.dbg.step_count,
            "window": len(window), "step_s": mean("step_s"), "data_s": mean("data_s"),
            "forward_s": mean("forward_s"), "backward_s": mean("backward_s"), "optimizer_s": mean("optimizer_s"),
            "loss": last.loss if last else math.nan, "grad_norm": last.grad_norm if last else math.nan,
            "first_nonfinite_loss": self._first["loss"], "first_nonfinite_grad": self._first["grad"],
            "first_nonfinite_input": self._first["input"], "n_params": len(params), "checksum": checksum,
            "scale": scale, "gather_s": self._last_gather_s,
        }
        return torch.tensor([float(values[f]) for f in FIELDS], dtype=torch.float64), per_param

    def _gloo_group(self):
        """The monitor's own gloo group over every rank, made by every rank at the same (first) gather
        or sharded gradient norm (see COLLECTIVE_TIMEOUT_S)."""
        if self._group is None:
            import datetime

            import torch.distributed as dist

            t = time.perf_counter()
            self._group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
            self.setup_s = time.perf_counter() - t
        return self._group

    def _all_gather(self, vec: "torch.Tensor") -> "torch.Tensor":
        import torch
        import torch.distributed as dist

        out = [torch.empty_like(vec) for _ in range(self.world_size)]
        dist.all_gather(out, vec, group=self._gloo_group())
        return torch.stack(out)

    def _sum_over_ranks(self, t: "torch.Tensor") -> None:
        """All-reduce (sum) on the monitor's gloo group, whose timeout ends a wait for a rank that
        never comes (an NCCL group's watchdog would abort the training instead): on CUDA that is one
        copy of a few floats to the host per step, which waits for the device."""
        import torch.distributed as dist

        host = t.cpu()
        dist.all_reduce(host, group=self._gloo_group())
        t.copy_(host)

    def _gather(self, step: int) -> None:
        import torch

        try:
            header, per_param = self._header(step)
        except Exception:  # this rank must still take part in the collective, or the others would wait
            log.exception("modeldebug: could not summarise rank %d at step %d", self.rank, step)
            header, per_param = torch.full((len(FIELDS),), math.nan, dtype=torch.float64), None
            header[_AT["rank"]], header[_AT["world_size"]] = self.rank, self.world_size
        rows = self._all_gather(header)  # [world, fields], the same on every rank
        col = {f: rows[:, i].tolist() for i, f in enumerate(FIELDS)}
        ref, differs = _reference(col["checksum"], col["scale"])
        names: dict[int, tuple[str, float]] = {}
        same_shape = len(set(col["n_params"])) == 1 and col["n_params"][0] > 0
        # Every rank takes the same decision from the same gathered rows: the extra gather is matched.
        if differs and same_shape and self._param_gathers < MAX_PARAM_GATHERS:
            self._param_gathers += 1
            vecs = self._all_gather(per_param if per_param is not None else torch.zeros(int(col["n_params"][0]),
                                                                                      dtype=torch.float64))
            names = self._differing_params(vecs, ref, differs)
        elif differs and not same_shape:
            names = {r: ("<a different set of parameters>", math.nan) for r in differs}
        if self.rank != 0:
            return
        for r in range(self.world_size):
            v = {f: col[f][r] for f in FIELDS}
            rel = abs(v["checksum"] - col["checksum"][ref]) / max(col["scale"][ref], 1e-30)
            name, diff = names.get(r, ("", math.nan))
            self.dbg.store.add(self.dbg.run_id, RankRecord(
                step=step, rank=r, world_size=int(v["world_size"]), steps_done=int(v["steps_done"]),
                window=int(v["window"]), step_s=v["step_s"], data_s=v["data_s"], forward_s=v["forward_s"],
                backward_s=v["backward_s"], optimizer_s=v["optimizer_s"], loss=v["loss"], grad_norm=v["grad_norm"],
                first_nonfinite_loss=int(v["first_nonfinite_loss"]),
                first_nonfinite_grad=int(v["first_nonfinite_grad"]),
                first_nonfinite_input=int(v["first_nonfinite_input"]),
                checksum=v["checksum"], checksum_rel_diff=rel if math.isfinite(rel) else math.nan,
                desync=r in differs, desync_param=name, desync_param_diff=diff, gather_s=v["gather_s"],
            ))

    def _differing_params(self, vecs: "torch.Tensor", ref: int, differs: list[int]) -> dict[int, tuple[str, float]]:
        """For each rank out of sync, the parameter whose checksum differs most from the reference rank's."""
        import torch

        watched = self.dbg.watched.params
        names = [watched[i][0] for i in self.shards().replicated]
        out = {}
        base = vecs[ref]
        for r in differs:
            diff = (vecs[r] - base).abs() / base.abs().clamp_min(1e-30)
            diff = torch.nan_to_num(diff, nan=math.inf)
            i = int(diff.argmax())
            out[r] = (names[i] if i < len(names) else f"#{i}", float(diff[i]))
        return out

    # ------------------------------------------------------------------ the end

    def on_stop(self, status: str, error: BaseException | None) -> None:
        """No collective here (ranks stop at different points): this rank's own exit record."""
        exit = RankExit(rank=self.rank, world_size=self.world_size, status=status, time=time.time(),
                        steps=self.dbg.step_count, gathers=len(self.gather_times),
                        gather_s_median=_median(self.gather_times))
        if error is not None:
            exit.error_type, exit.message = type(error).__name__, str(error)[:1000]
            exit.comm_error = is_comm_error(exit.error_type, exit.message)
        try:
            from modeldebug.collect.sharding import data_parallel

            exit.parallel = data_parallel([m.module for m in self.dbg.watched.models])
        except Exception:  # (the exit record matters more than this detail)
            pass
        self.dbg.event(exit)
        self._release_group()
        if self._previous_term is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_term)
            except (ValueError, OSError):
                pass
            self._previous_term = None

    def _release_group(self) -> None:
        """Free the gather's group now, not in interpreter teardown (where freeing a gloo group
        whose threads still run aborts the process: "terminate called without an active exception")."""
        group, self._group = self._group, None
        if group is None:
            return
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group(group)  # local: no collective
        except Exception:  # already destroyed with the script's destroy_process_group()
            pass
        del group

    def _catch_sigterm(self) -> None:
        """torchrun ends the other workers with SIGTERM when one fails: record it before dying."""
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return  # the script handles SIGTERM itself
            self._previous_term = signal.SIG_DFL
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):  # not the main thread
            self._previous_term = None

    def _on_sigterm(self, signum, frame) -> None:
        try:
            self.dbg.event(RankKilled(rank=self.rank, signal=int(signum), time=time.time(), steps=self.dbg.step_count))
            self.dbg.store.update_run(self.dbg.run_id, status="interrupted", steps=self.dbg.step_count)
        except Exception:
            pass
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def gather_gap(step: int) -> int:
    """Steps from the gather at ``step`` to the next one: a multiple of MIN_EVERY, the same on every
    rank and in every run of the same script, whatever the load of the machine."""
    gap = int(step * GAP_FRACTION) // MIN_EVERY * MIN_EVERY
    return min(MAX_EVERY, max(MIN_EVERY, gap))


def _reference(checksums: list[float], scales: list[float]) -> tuple[int, list[int]]:
    """The rank whose parameters most ranks share (rank 0's on a tie: DDP broadcasts rank 0's at
    construction), and the ranks whose checksum differs from it."""
    def same(a, b):
        x, y = checksums[a], checksums[b]
        if not (math.isfinite(x) and math.isfinite(y)):
            return (math.isnan(x) and math.isnan(y)) or x == y
        return abs(x - y) <= DESYNC_RTOL * max(scales[a], scales[b], 1e-30)

    n = len(checksums)
    groups = [[b for b in range(n) if same(a, b)] for a in range(n)]
    ref = max(range(n), key=lambda a: (len(groups[a]), -a))
    return ref, [r for r in range(n) if r not in groups[ref]]


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[len(v) // 2]


# ---------------------------------------------------------------------- after the job (parent side)


def summarize_ranks(store, run_id: str) -> list[dict[str, Any]]:
    """Each rank's outcome from the runs in ``store`` (rank 0's run and ``<run_id>.rank<r>``).

    Ranks whose run is still "running" were killed before they could write (SIGKILL, or a node
    lost): they are marked crashed here. Empty for a run that was not distributed.
    """
    runs = {r.id: r for r in store.list_runs(limit=1000, prefix=run_id)
            if r.id == run_id or r.id.startswith(run_id + ".rank")}
    if len(runs) < 2:
        return []
    out = []
    for rid, info in runs.items():
        events = store.load_events(rid)
        ranks, exits, killings = (events_of(events, cls) for cls in (Rank, RankExit, RankKilled))
        rank = ranks[0].rank if ranks else (0 if rid == run_id else int(rid.rsplit(".rank", 1)[1]))
        exit_ev = exits[-1] if exits else None
        killed = killings[0] if killings else None
        entry = {"rank": rank, "run_id": rid, "status": info.status, "steps": info.steps}
        if exit_ev:
            entry.update({k: getattr(exit_ev, k) for k in ("time", "error_type", "message", "comm_error",
                                                           "gather_s_median") if getattr(exit_ev, k) is not None})
            entry["exited"] = True
        elif killed:
            entry.update({"time": killed.time, "killed_by_signal": killed.signal,
                          "steps": killed.steps if killed.steps is not None else info.steps})
        if not exit_ev and rid != run_id and info.status == "running":
            store.update_run(rid, status="crashed")
            entry["status"] = "crashed"
        entry["lost"] = not exit_ev and not killed  # died without a word: SIGKILL (OOM killer) or a lost node
        out.append(entry)
    return sorted(out, key=lambda e: e["rank"])
