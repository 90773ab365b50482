"""Fine-tuning a small BERT-like encoder for token tagging (a toy named-entity task: a name token
is tagged PER in a sentence that holds a title word, LOC otherwise, other tokens O). The encoder has word,
position and segment embeddings, LayerNorm, two post-LN transformer layers and the usual pooler
(dense + tanh on the [CLS] position) that the backbone returns alongside the sequence output; the
tagging head reads the sequence output. AdamW with a lower lr for the encoder than for the head,
no decay on biases and LayerNorm, linear warmup then linear decay, DataLoader with padding masks.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

VOCAB, MAX_LEN, PAD, CLS = 200, 24, 0, 1
TITLES = torch.arange(2, 8)
NAMES = torch.arange(8, 40)


def make_sentences(n):
    lengths = torch.randint(10, MAX_LEN, (n,))
    ids = torch.randint(40, VOCAB, (n, MAX_LEN))
    person_context = torch.rand(n) < 0.5
    slot = torch.randint(1, 10, (n,))
    ids[person_context, slot[person_context]] = TITLES[torch.randint(0, len(TITLES), (int(person_context.sum()),))]
    is_name = (torch.rand(n, MAX_LEN) < 0.2) & (torch.arange(MAX_LEN) != slot.unsqueeze(1))
    ids[is_name] = NAMES[torch.randint(0, len(NAMES), (int(is_name.sum()),))]
    ids[:, 0] = CLS
    ids[torch.arange(MAX_LEN).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD
    name = (ids >= 8) & (ids < 40)
    tags = torch.zeros_like(ids)
    tags[name & person_context.unsqueeze(1)] = 1
    tags[name & ~person_context.unsqueeze(1)] = 2
    tags[ids == PAD] = -100
    return ids, (ids != PAD).long(), tags


class MiniBert(nn.Module):
    def __init__(self, hidden=64, layers=2, heads=4):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, hidden, padding_idx=PAD)
        self.position_embeddings = nn.Embedding(MAX_LEN, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.emb_norm = nn.LayerNorm(hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.size(1)).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings(torch.zeros_like(input_ids))
        seq = self.encoder(self.emb_norm(x), src_key_padding_mask=attention_mask == 0)
        return seq, self.pooler(seq[:, 0])


class TokenTagger(nn.Module):
    def __init__(self, tags=3, hidden=64):
        super().__init__()
        self.bert = MiniBert(hidden)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, tags)

    def forward(self, input_ids, attention_mask):
        sequence_output, _ = self.bert(input_ids, attention_mask)
        return self.classifier(self.dropout(sequence_output))


train_set = TensorDataset(*make_sentences(1536))
dev_ids, dev_mask, dev_tags = make_sentences(512)
loader = DataLoader(train_set, batch_size=32, shuffle=True)
model = TokenTagger()

no_decay = ("bias", "norm")
groups = [
    {"params": [p for n, p in model.bert.named_parameters() if not any(k in n for k in no_decay)], "lr": 1e-3, "weight_decay": 0.01},
    {"params": [p for n, p in model.bert.named_parameters() if any(k in n for k in no_decay)], "lr": 1e-3, "weight_decay": 0.0},
    {"params": model.classifier.parameters(), "lr": 3e-3, "weight_decay": 0.0},
]
optimizer = torch.optim.AdamW(groups)
epochs = 3
total_steps, warmup = epochs * len(loader), len(loader) // 2
scheduler = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total_steps - s) / (total_steps - warmup)))
criterion = nn.CrossEntropyLoss(ignore_index=-100)

for epoch in range(epochs):
    model.train()
    total = 0.0
    for ids, mask, tags in loader:
        optimizer.zero_grad()
        logits = model(ids, mask)
        loss = criterion(logits.view(-1, 3), tags.view(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        total += loss.item()
    model.eval()
    with torch.no_grad():
        pred = model(dev_ids, dev_mask).argmax(-1)
        keep = dev_tags != -100
        entity = keep & (dev_tags > 0)
        acc = (pred[keep] == dev_tags[keep]).float().mean().item()
        entity_recall = (pred[entity] == dev_tags[entity]).float().mean().item()
    print(f"epoch {epoch} train loss {total / len(loader):.4f} dev token acc {acc:.3f} entity recall {entity_recall:.3f}")
