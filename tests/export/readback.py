"""What the report says each platform should hold, for the tests to compare with what was read back."""

import math


def expected_series(report, column):
    """(step, value) of a training series column, the finite points only."""
    s = report.metrics.series
    return [(int(st), v) for st, v in zip(s.step, getattr(s, column)) if v is not None and math.isfinite(v)]


def expected_validation(report):
    v = report.metrics.validation
    return [(int(st), x) for st, x in zip(v.step, v.loss) if x is not None and math.isfinite(x)]


def expected_layer(report, stat):
    """The first layer's name and its (step, value) points of ``stat``."""
    layer = report.metrics.layers[0]
    values = getattr(layer, stat)
    return layer.name, [(int(st), v) for st, v in zip(layer.step, values) if v is not None and math.isfinite(v)]


def severity_counts(report):
    return {s: sum(f.severity == s for f in report.findings) for s in ("high", "medium", "low")}
