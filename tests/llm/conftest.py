"""Fixtures for the LLM layer: a stored broken run, and an OpenAI-compatible server on 127.0.0.1.

The server answers ``POST /v1/chat/completions`` from a script of replies: a string is sent as the
assistant message's content, ``GARBAGE`` sends a body that is not JSON, ``HANG`` holds the request
open without answering. Nothing here talks to any other address.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

GARBAGE = object()
HANG = object()


class FakeOpenAI:
    def __init__(self):
        self.replies: list = []
        self.requests: list[dict] = []
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                owner.requests.append({"path": self.path, "body": body})
                reply = owner.replies.pop(0) if owner.replies else GARBAGE
                if reply is HANG:
                    owner._stop.wait(30)
                    return
                if reply is GARBAGE:
                    data = b"<html>upstream error</html>"
                else:
                    data = json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                    }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.api_base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    try:
        yield server
    finally:
        server.close()


def chat_fields(**fields) -> str:
    """An assistant message in dspy's ChatAdapter format."""
    parts = []
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    return "\n\n".join(parts + ["[[ ## completed ## ]]"])


def train_broken(store_path: str, steps: int = 40):
    """A small classifier whose first layer is frozen by mistake (unchanged_weights), stored as a run."""
    import modeldebug as md

    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with md.watch(model, opt, config=md.DebuggingConfig(every=1), store=store_path) as dbg:
        for i in range(steps):
            xb, yb = x[(i * 16) % 128:(i * 16) % 128 + 16], y[(i * 16) % 128:(i * 16) % 128 + 16]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    report = dbg.report()
    dbg.store.close()
    return dbg.run_id, report


@pytest.fixture
def stored_run(tmp_path):
    path = str(tmp_path / "runs.db")
    run_id, report = train_broken(path)
    return path, run_id, report


@pytest.fixture
def chat():
    """chat(**fields) -> an assistant reply in ChatAdapter format."""
    return chat_fields


@pytest.fixture
def sentinels():
    return {"GARBAGE": GARBAGE, "HANG": HANG}
