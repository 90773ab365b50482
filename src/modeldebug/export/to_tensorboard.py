"""TensorBoard: one event file (``*.modeldebug``) in the log directory, written with tensorboard's
own event writer and protos (no TensorFlow, no torch import: ~0.4 s).

Scalars as ``simple_value`` (what every TensorBoard reads, and torch's SummaryWriter writes), the
sampled layers' output histograms, and two text summaries (markdown): ``modeldebug/findings`` and
``modeldebug/run``. Written into the training run's own log directory, the ``modeldebug/`` tags
show beside the run's own metrics.
"""

from __future__ import annotations

import time
from itertools import groupby
from pathlib import Path

from modeldebug.errors import require
from modeldebug.export.content import PREFIX, ExportContent


def write(content: ExportContent, logdir: str) -> str:
    """Write ``content`` to an event file in ``logdir``; the file's path."""
    require("tensorboard", "tensorboard")
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    Path(logdir).mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(logdir), filename_suffix=".modeldebug")
    now = time.time()

    def add(step: int, values: list) -> None:
        writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary_pb2.Summary(value=values)))

    try:
        # one event per step, holding every scalar of that step (a 100-layer model has thousands)
        for step, scalars in groupby(content.scalars, key=lambda s: s.step):
            add(step, [summary_pb2.Summary.Value(tag=s.tag, simple_value=s.value) for s in scalars])
        for h in content.histograms:
            add(h.step, [summary_pb2.Summary.Value(tag=h.tag, histo=_histogram(h))])
        add(content.last_step, [summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in content.final.items()]
            + [_text(f"{PREFIX}/findings", content.findings_text, "What modeldebug found"),
               _text(f"{PREFIX}/run", _run_table(content.info), "The run modeldebug watched")])
    finally:
        writer.close()  # raises what the background writer met (a full disk)
    return str(getattr(writer, "_file_name", logdir))  # the file it made (no public name for it)


def _text(tag: str, text: str, description: str):
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorboard.plugins.text import metadata

    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode("utf-8")],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto())
    return summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(tag, description), tensor=tensor)


def _histogram(h):
    """A HistogramProto of equal bins from ``lo`` to ``hi``; sums from the bin centres (the report
    keeps counts, not values)."""
    from tensorboard.compat.proto import summary_pb2

    n = len(h.counts)
    width = (h.hi - h.lo) / n if n else 0.0
    edges = [h.lo + width * (i + 1) for i in range(n)]
    centres = [h.lo + width * (i + 0.5) for i in range(n)]
    return summary_pb2.HistogramProto(
        min=h.lo, max=h.hi, num=float(sum(h.counts)),
        sum=sum(c * x for c, x in zip(h.counts, centres)),
        sum_squares=sum(c * x * x for c, x in zip(h.counts, centres)),
        bucket_limit=edges, bucket=[float(c) for c in h.counts],
    )


def _run_table(info: dict[str, str]) -> str:
    rows = "\n".join(f"| {key} | {str(value).replace('|', '/')} |" for key, value in info.items())
    return "| | |\n|---|---|\n" + rows
