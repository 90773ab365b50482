"""FSDP1's parameters and layers are named by the user's module paths (never `_fsdp_wrapped_module`
or `_flat_param`), with flat parameters and with `use_orig_params`; the run says what wrapped the
model. One process (a gloo group of one rank, in a child so no process group outlives the test)."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

CHILD = r"""
import json, sys, torch, torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
import modeldebug as md
from modeldebug.collect.sharding import data_parallel

dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % int(sys.argv[2]), rank=0, world_size=1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.block(self.fc1(x)))


torch.manual_seed(0)
model = FSDP(Net(), use_orig_params=sys.argv[1] == "orig", device_id=torch.device("cpu"),
             auto_wrap_policy=ModuleWrapPolicy({nn.Sequential}))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with md.watch(model, opt, config=md.DebuggingConfig(every=1, store_path=sys.argv[3])) as dbg:
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
        opt.step()
ev = dbg.evidence()
print(json.dumps({"params": sorted(ev.params), "modules": sorted({i.module for i in ev.params.values()}),
                  "layers": sorted(ev.layers), "sampled": sorted(set(ev.param_stats.param.tolist())),
                  "parallel": data_parallel([model])}))
dist.destroy_process_group()
"""


def _names(tmp_path, mode, port):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(port), str(tmp_path / "runs.db")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_flat_parameters_are_named_by_the_parameters_they_hold(tmp_path):
    got = _names(tmp_path, "flat", 29611)
    assert got["params"] == ["block.0.weight+block.0.bias", "fc1.weight+fc1.bias+head.weight+…4"]
    assert got["sampled"] == got["params"]
    assert got["modules"] == ["", "block"]
    assert "fc1" in got["layers"] and "block.0" in got["layers"]
    assert not any("_fsdp" in n or "_flat_param" in n for n in got["params"] + got["layers"])
    assert got["parallel"] == "FSDP"


def test_use_orig_params_keeps_the_users_names(tmp_path):
    got = _names(tmp_path, "orig", 29612)
    assert got["params"] == ["block.0.bias", "block.0.weight", "fc1.bias", "fc1.weight", "head.bias", "head.weight"]
    assert got["modules"] == ["block.0", "fc1", "head"]
    assert not any("_fsdp" in n for n in got["layers"])
