"""Benchmark: modeldebug's compare_with_torch against torch.onnx.verification.verify_onnx_program.

Both tools compare every intermediate value they can match between a PyTorch module and its ONNX
export (``compare_intermediates=True`` for torch's). Each model is exported once with
``torch.onnx.export(..., dynamo=True)`` (the export time is listed apart: both tools need it), and
then each tool gets the same export and the same inputs. torch's tool runs in a child process
with a time limit, since it can take minutes on big models.

    OMP_NUM_THREADS=1 python benchmarks/onnx_compare.py [--models mlp80,resnet50] [--torch-limit 900]

Prints a Markdown table (the one in docs/onnx.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import sys
import time
import warnings

import torch
from torch import nn


# --- models --------------------------------------------------------------------------------------


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    """A small MLP-Mixer: about 80 ONNX nodes after the dynamo export."""

    def __init__(self, depth: int = 5, tokens: int = 16, dim: int = 64, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(48, dim)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's resnet50 layout (3, 4, 6, 3 bottlenecks), written out to avoid the dependency."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for i, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(cin, width, 2 if (b == 0 and i > 0) else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(name: str):
    torch.manual_seed(0)
    if name == "mlp80":
        return Mixer().eval(), (torch.randn(2, 16, 48),)
    if name == "resnet50":
        model = ResNet50().eval()
        with torch.no_grad():  # non-trivial batch-norm statistics, as in a trained model
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        return model, (torch.randn(1, 3, 224, 224),)
    raise ValueError(f"unknown model {name!r}")


def export(model, args):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return torch.onnx.export(model, args, dynamo=True, verbose=False)


# --- the two tools ---------------------------------------------------------------------------------


def run_ours(name: str) -> dict:
    from modeldebug.onnx import compare_with_torch

    model, args = build(name)
    t0 = time.perf_counter()
    program = export(model, args)
    export_s = time.perf_counter() - t0
    nodes = len(program.model_proto.graph.node)
    compare_with_torch(model, args, onnx_model=program)  # warm: first onnxruntime/numpy use
    t0 = time.perf_counter()
    # the ONNXProgram, as torch's tool gets it: module-level and op-level points
    report = compare_with_torch(model, args, onnx_model=program)
    ours_s = time.perf_counter() - t0
    return {
        "nodes": nodes,
        "export_s": export_s,
        "ours_s": ours_s,
        "ours_points": report.metrics.matched_points,
        "ours_findings": len(report.findings),
    }


def _torch_child(name: str, queue) -> None:
    from torch.onnx.verification import verify_onnx_program

    model, args = build(name)
    program = export(model, args)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        infos = verify_onnx_program(program, args, compare_intermediates=True)
    queue.put({"torch_s": time.perf_counter() - t0, "torch_points": len(infos)})


def run_torch(name: str, limit_s: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_torch_child, args=(name, queue))
    proc.start()
    proc.join(limit_s)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"torch_s": None, "torch_points": None, "torch_note": f"> {limit_s:.0f} s (stopped)"}
    return queue.get() if not queue.empty() else {"torch_s": None, "torch_points": None, "torch_note": "failed"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp80,resnet50")
    parser.add_argument("--torch-limit", type=float, default=900.0, help="Seconds torch's tool may take per model.")
    parser.add_argument("--json", help="Also write the rows as JSON here.")
    opts = parser.parse_args(argv)
    rows = []
    for name in opts.models.split(","):
        row = {"model": name, **run_ours(name), **run_torch(name, opts.torch_limit)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| model | ONNX nodes | dynamo export (s) | modeldebug compare_with_torch (s) | points | torch verify_onnx_program(compare_intermediates=True) (s) | points | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        torch_s = f"{r['torch_s']:.1f}" if r["torch_s"] is not None else r["torch_note"]
        speedup = f"{r['torch_s'] / r['ours_s']:.0f}x" if r["torch_s"] else "-"
        print(
            f"| {r['model']} | {r['nodes']} | {r['export_s']:.1f} | {r['ours_s']:.2f} | {r['ours_points']} | "
            f"{torch_s} | {r['torch_points'] if r['torch_points'] is not None else '-'} | {speedup} |"
        )
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
