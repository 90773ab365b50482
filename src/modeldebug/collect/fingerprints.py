"""Content fingerprints of training and evaluation samples: is the validation data training data?

A sample's fingerprint is one int64, a weighted sum (wrapping) of the bit patterns of at most
``COLUMNS`` of its values, computed on the batch's device without a sync: equal samples give equal
fingerprints, distinct ones almost never do. Per sample, not per batch: a validation set drawn
from the training data by a second ``random_split`` shares samples with it, never whole batches.

Training batches are fingerprinted on the first ``TRAIN_STEPS`` steps and on sampled steps, at most
``TRAIN_ROWS`` samples each; evaluation forwards up to ``EVAL_SAMPLES`` samples in all. Each
evaluation input is keyed by its source, the dataset of the DataLoader it came from or else the
storage of the tensor it is a view of, so that evaluating on the training data knowingly (the
training loader, the very batch just trained on) is told apart from a validation set that turns
out to hold training samples. The fingerprints come to the host once, when the run stops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from modeldebug.events import EvalOverlap

COLUMNS = 256  # values per sample that enter its fingerprint (evenly strided)
TRAIN_ROWS = 64
TRAIN_STEPS = 100
EVAL_ROWS = 1024
TRAIN_SAMPLES = 100_000  # bounds on what is kept (int64 each)
EVAL_SAMPLES = 50_000
MAX_SOURCES = 32


def dataset_size(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except Exception:  # an IterableDataset has no length
        return None


def source_of(x: torch.Tensor, loader_dataset: Any) -> tuple[str, int]:
    """What a batch comes from: the dataset of the DataLoader that produced it, else its tensor's storage."""
    if loader_dataset is not None:
        return "dataset", id(loader_dataset)
    try:
        return "tensor", x.untyped_storage().data_ptr()
    except Exception:  # tensor subclasses without a storage
        return "tensor", id(x)


class Fingerprints:
    def __init__(self) -> None:
        self._weights: dict[tuple[torch.device, int], torch.Tensor] = {}
        self.train: list[torch.Tensor] = []
        self.train_rows = 0
        self.train_sources: set[tuple[str, int]] = set()
        self.train_size: int | None = None
        self.eval: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.eval_rows = 0

    def add_train(self, x: torch.Tensor, source: tuple[str, int], size: int | None, dataset: Any = None) -> None:
        """A training batch (the caller asks on the first TRAIN_STEPS steps and on sampled ones)."""
        if self.train_rows >= TRAIN_SAMPLES:
            return
        f = self._fingerprint(x, TRAIN_ROWS)
        if f is None:
            return
        self.train.append(f)
        _compact(self.train)
        self.train_rows += f.numel()
        if source not in self.train_sources:
            self.train_sources.add(source)
            self.train_sources.update(_tensor_sources(dataset))
        if self.train_size is None and size:
            self.train_size = size

    def wants_eval(self) -> bool:
        return self.eval_rows < EVAL_SAMPLES

    def add_eval(self, x: torch.Tensor, source: tuple[str, int]) -> None:
        if source not in self.eval and len(self.eval) >= MAX_SOURCES:
            return
        f = self._fingerprint(x, EVAL_ROWS)
        if f is not None:
            parts = self.eval.setdefault(source, [])
            parts.append(f)
            _compact(parts)
            self.eval_rows += f.numel()

    def _fingerprint(self, x: torch.Tensor, rows: int) -> torch.Tensor | None:
        if x.dim() == 0 or x.shape[0] == 0 or x.is_sparse or x.is_complex():
            return None
        with torch.no_grad():
            flat = x.detach()[:rows].reshape(min(rows, x.shape[0]), -1)
            d = flat.shape[1]
            if d == 0:
                return None
            if d > COLUMNS:
                flat = flat[:, :: -(-d // COLUMNS)]
            if flat.is_floating_point():
                bits = flat.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
            else:
                bits = flat.to(torch.int64)
            return (bits * self._weights_for(bits.device, bits.shape[1])).sum(1)

    def _weights_for(self, device: torch.device, n: int) -> torch.Tensor:
        w = self._weights.get((device, n))
        if w is None:
            # Fixed odd weights from numpy's generator: the script's torch RNG is left alone.
            rng = np.random.default_rng(n)
            w = torch.from_numpy(rng.integers(1, 2**62, size=n, dtype=np.int64) | 1).to(device)
            self._weights[(device, n)] = w
        return w

    def summary(self) -> EvalOverlap | None:
        """Per evaluation source that is not a training source: samples, distinct ones, and how many
        of those are training samples. None when there was no evaluation or no training sample."""
        if not self.eval or not self.train:
            return None
        train = _host(self.train)
        train_set = set(train.tolist())
        sources = []
        for (kind, key), parts in self.eval.items():
            if (kind, key) in self.train_sources:
                continue  # the training data itself, evaluated on purpose
            values = _host(parts)
            distinct = np.unique(values)
            sources.append({"source": f"{kind}:{len(sources)}", "kind": kind, "samples": int(values.size),
                            "distinct": int(distinct.size),
                            "in_train": int(sum(1 for v in distinct.tolist() if v in train_set))})
        self.train, self.eval = [], {}
        return EvalOverlap(sources=sources, train_samples=int(train.size), train_distinct=len(train_set),
                           train_size=self.train_size)


def _compact(parts: list[torch.Tensor], most: int = 64) -> None:
    """Keep a bounded number of tensor objects (a device-side cat, no sync): the Python heap stays
    flat while fingerprints accumulate up to their caps."""
    if len(parts) >= most:
        parts[:] = [torch.cat([p.to(parts[0].device) for p in parts])]


def _tensor_sources(dataset: Any) -> list[tuple[str, int]]:
    """The storages of a TensorDataset's tensors that hold nothing else: evaluating on those tensors
    directly (the whole training set in one forward, or slices of it) is evaluating on the training
    data knowingly, like its loader. A tensor that is a slice of a larger storage is left out: the
    rest of that storage may be the held-out part."""
    out = []
    for t in getattr(dataset, "tensors", ()) or ():
        if isinstance(t, torch.Tensor):
            try:
                storage = t.untyped_storage()
                if t.data_ptr() == storage.data_ptr() and t.numel() * t.element_size() == storage.nbytes():
                    out.append(("tensor", storage.data_ptr()))
            except Exception:
                pass
    return out


def _host(parts: list[torch.Tensor]) -> np.ndarray:
    device = parts[0].device
    return torch.cat([p.to(device) for p in parts]).cpu().numpy()  # one copy (a sync on CUDA, at stop)
