import os

# torch's default 2 threads crawl when the other core is busy; subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "runs.db")


@pytest.fixture
def cpu_clock():
    """This process's CPU seconds, for speed budgets: other processes' time slices on a busy machine
    do not count, as they do on the wall clock (where waiting is the point, keep the wall clock)."""
    import time

    return time.process_time
