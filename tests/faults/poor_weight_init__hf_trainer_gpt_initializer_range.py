"""Small GPT-2 language model trained from scratch with the Hugging Face Trainer (AdamW, linear warm-up
then decay, gradients accumulated over two batches) on token sequences that follow a pattern, with an
evaluation every 20 steps; the model's config sets its initializer range.

planted: kind=poor_weight_init cause=bad_weight_init
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
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        stride = torch.randint(1, 4, (n, 1), generator=g)
        self.ids = (start + stride * torch.arange(LENGTH)) % VOCAB

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
                    initializer_range=1.0)
model = GPT2LMHeadModel(config)
args = TrainingArguments(
    output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, seed=0,
    per_device_train_batch_size=8, gradient_accumulation_steps=2, per_device_eval_batch_size=64,
    learning_rate=3e-3, warmup_steps=10, max_steps=120,
    eval_strategy="steps", eval_steps=20, logging_steps=20, save_strategy="no", disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=Sequences(4000, 0), eval_dataset=Sequences(256, 1))
trainer.train()
print(trainer.evaluate())
