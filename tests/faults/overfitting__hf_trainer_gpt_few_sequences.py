"""Small GPT-2 language model trained from scratch with the Hugging Face Trainer on 48 noisy token
sequences for many epochs (AdamW, linear decay), evaluated every 20 steps on held-out sequences.

planted: kind=overfitting cause=model_too_large_for_data
requires: transformers
"""
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.utils import logging

torch.manual_seed(0)
torch.set_num_threads(1)
logging.set_verbosity_error()

VOCAB, LENGTH = 64, 16


class Sequences(torch.utils.data.Dataset):
    """Arithmetic progressions mod 64 with a quarter of the tokens replaced at random."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        stride = torch.randint(1, 4, (n, 1), generator=g)
        ids = (start + stride * torch.arange(LENGTH)) % VOCAB
        noise = torch.rand(ids.shape, generator=g) < 0.25
        self.ids = torch.where(noise, torch.randint(0, VOCAB, ids.shape, generator=g), ids)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config)
args = TrainingArguments(
    output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, seed=0,
    per_device_train_batch_size=16, per_device_eval_batch_size=64,
    learning_rate=3e-3, num_train_epochs=80,
    eval_strategy="steps", eval_steps=20, logging_steps=20, save_strategy="no", disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=Sequences(48, 0), eval_dataset=Sequences(256, 1))
trainer.train()
