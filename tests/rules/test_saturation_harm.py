"""saturated_activation's severity when the loss still falls: saturation alone is not harm.

Measured on tests/faults/saturated_activation__sigmoid_lstm_large_init.py (helper S1): the sigmoid
after a Linear initialised N(0, 10) is ~50-70% saturated, yet the layers before it keep learning.
The large weights scale the backward pass up by as much as the flat sigmoid scales it down (the
encoder's gradient was 50x its healthy twin's; Adam's update ratios were the same before and after
the sigmoid), and freezing the encoder costs the model its accuracy (0.97 -> 0.61 held out), so it
is no linear head on fixed features. Until a reference shows harm the finding stays low.
"""

from __future__ import annotations

import numpy as np
from builders import build, healthy_columns

from modeldebug.rules.saturated_activation import SaturatedActivation


def test_saturated_hidden_layer_whose_body_keeps_learning_stays_low():
    cols = healthy_columns(act="Sigmoid")
    lt = cols["layer_stats"]
    lt["sat_frac"] = np.where(lt["layer"] == "net.1", 0.7, lt["sat_frac"])
    # the layers before net.1 move as much as those after it (update ratio 1e-3 everywhere)
    pt = cols["param_stats"]
    assert np.all(pt["update_ratio"] == 1e-3)
    (f,) = SaturatedActivation().check(build(cols))
    assert (f.location, f.severity) == ("net.1", "low")
    assert f.evidence["sat_frac"] == 0.7
