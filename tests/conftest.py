import os

# torch's default 2 threads crawl when the other core is busy; subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "runs.db")
