"""Validation losses a plain loop computes by hand (no torch loss function): recorded as the values the
script itself prints, in the training loss's units; accuracy and counts never taken for a loss; the
torch-loss path unchanged; training steps never under the mode that follows evaluation outputs."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch


def _config(path, every=1):
    return md.DebuggingConfig(every=every, store_path=path)


def _regression(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    x, xv = torch.randn(64, 4), torch.randn(32, 4)
    return model, torch.optim.SGD(model.parameters(), lr=0.05), (x, x.sum(1, keepdim=True)), (xv, xv.sum(1, keepdim=True))


def _train_epoch(model, opt, x, y, stack_sizes):
    model.train()
    for i in range(0, len(x), 16):
        opt.zero_grad()
        loss = ((model(x[i:i + 16]) - y[i:i + 16]) ** 2).mean()
        stack_sizes.append(torch._C._len_torch_function_stack())
        loss.backward()
        opt.step()


def test_hand_written_mse_is_recorded_as_printed_and_training_runs_without_the_mode(store_path):
    model, opt, (x, y), (xv, yv) = _regression()
    printed, stacks = [], []
    with watch(model, opt, config=_config(store_path)) as dbg:
        for _ in range(3):
            _train_epoch(model, opt, x, y, stacks)
            model.eval()
            total, n = 0.0, 0
            with torch.no_grad():
                for i in range(0, len(xv), 8):
                    err = ((model(xv[i:i + 8]) - yv[i:i + 8]) ** 2).mean()
                    total += err.item()
                    n += 1
            printed.append(total / n)
    v = dbg.evidence().validation
    np.testing.assert_allclose(v.loss, printed, rtol=1e-6)
    assert v.loss_fn.tolist() == ["computed"] * 3 and v.batches.tolist() == [4, 4, 4]
    assert set(stacks) == {0}  # training never runs under the mode
    assert torch._C._len_torch_function_stack() == 0


def test_accumulated_tensors_and_weighted_sums_record_the_batch_loss(store_path):
    """`total += err * len(x)` on tensors, read once at the end: each batch's `err` is its loss."""
    model, opt, (x, y), (xv, yv) = _regression(1)
    printed = []
    with watch(model, opt, config=_config(store_path)) as dbg:
        for _ in range(3):
            _train_epoch(model, opt, x, y, [])
            model.eval()
            total = torch.zeros(())
            with torch.no_grad():
                for i in range(0, len(xv), 8):
                    out = model(xv[i:i + 8])
                    err = (out - yv[i:i + 8]).pow(2).mean()
                    total += err * len(out)
            printed.append(float(total) / len(xv))
    np.testing.assert_allclose(dbg.evidence().validation.loss, printed, rtol=1e-6)


def _classification(n_train, width, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(20, 1)

    def make(n):
        xs = torch.randn(n, 20)
        return xs, ((xs @ w).squeeze(1) + torch.randn(n) > 0).long()

    model = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), make(n_train), make(512)


def _cross_entropy(logits, y):
    logp = logits.log_softmax(1)
    return -(F.one_hot(y, 2).float() * logp).sum(1).mean()


def _run_classification(store_path, n_train, width, steps=400):
    model, opt, (x, y), (xv, yv) = _classification(n_train, width)
    printed, accs = [], []
    with watch(model, opt, config=_config(store_path, every=10)) as dbg:
        for step in range(steps):
            model.train()
            i = torch.randint(0, len(x), (32,))
            opt.zero_grad()
            loss = _cross_entropy(model(x[i]), y[i])
            loss.backward()
            opt.step()
            if step % 25 == 0:
                model.eval()
                with torch.no_grad():
                    logits = model(xv)
                    val = _cross_entropy(logits, yv)
                    accs.append((logits.argmax(1) == yv).float().mean().item())
                printed.append(float(val))
    return dbg, printed, accs


def test_hand_written_cross_entropy_finds_overfitting_and_a_healthy_run_is_quiet(store_path, tmp_path):
    dbg, printed, accs = _run_classification(store_path, n_train=64, width=512)
    v = dbg.evidence().validation
    np.testing.assert_allclose(v.loss, printed, rtol=1e-5)  # the loss, never the accuracy read after it
    assert not np.allclose(v.loss, accs)
    assert "overfitting" in {f.kind for f in dbg.report().findings}

    healthy, printed, _ = _run_classification(str(tmp_path / "h.db"), n_train=4096, width=32)
    np.testing.assert_allclose(healthy.evidence().validation.loss, printed, rtol=1e-5)
    assert "overfitting" not in {f.kind for f in healthy.report().findings}


def test_an_evaluation_that_computes_only_accuracy_records_no_loss(store_path):
    model, opt, (x, y), (xv, yv) = _classification(256, 32)
    with watch(model, opt, config=_config(store_path)) as dbg:
        for epoch in range(3):
            for i in range(0, len(x), 32):
                opt.zero_grad()
                F.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
                opt.step()
            model.eval()
            correct = seen = 0
            with torch.no_grad():
                for i in range(0, len(xv), 128):
                    logits = model(xv[i:i + 128])
                    correct += (logits.argmax(1) == yv[i:i + 128]).sum().item()
                    seen += len(logits)
                    confident = (logits.softmax(1).amax(1) > 0.9).float().mean().item()
            print(epoch, correct / seen, confident)
            model.train()
    assert len(dbg.evidence().validation) == 0


def test_the_torch_loss_path_is_unchanged(store_path):
    model, opt, (x, y), (xv, yv) = _classification(256, 32)
    printed = []
    with watch(model, opt, config=_config(store_path)) as dbg:
        for _ in range(3):
            for i in range(0, len(x), 32):
                opt.zero_grad()
                F.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                losses = [F.cross_entropy(model(xv[i:i + 128]), yv[i:i + 128]).item() for i in range(0, 512, 128)]
            printed.append(sum(losses) / len(losses))
            model.train()
    v = dbg.evidence().validation
    np.testing.assert_allclose(v.loss, printed, rtol=1e-5)
    assert v.loss_fn.tolist() == ["cross_entropy"] * 3 and v.batches.tolist() == [4, 4, 4]


def test_numbers_that_compare_the_output_with_nothing_or_are_negative_are_no_loss(store_path):
    """A generator's sample statistics, a mean confidence: no target met, nothing recorded. A
    log-likelihood read before Python negates it (`-logp.mean().item()`) is not in a loss's units."""
    model, opt, (x, y), (xv, yv) = _regression(2)
    labels = (yv[:, 0] > 0).long()
    stacks = []
    with watch(model, opt, config=_config(store_path)) as dbg:
        for _ in range(3):
            _train_epoch(model, opt, x, y, stacks)
            with torch.no_grad():
                sample = model(xv)
                print(f"sample mean {sample.mean():.3f} std {sample.std():.3f}")
                confidence = torch.sigmoid(model(xv)).max(1).values.mean().item()
                logits = torch.cat([model(xv), -model(xv)], 1)
                nll = -logits.log_softmax(-1).gather(1, labels[:, None]).mean().item()
            assert confidence > 0 and nll > 0
    assert len(dbg.evidence().validation.loss) == 0
