import os

import pytest
import torch

# pytest-xdist (`-n auto` in pyproject's addopts) runs one test process per core. Each takes one
# thread, and so do the chapter scripts the tests launch: a second thread per process would only
# fight the other worker for the cores (on a 2-core machine that is several times slower, not 2x).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """Tiny tensors: a second torch thread only adds hand-off cost (and on a busy 2-core machine
    a lot of it). Test files opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`;
    the thread count is restored afterwards so other files are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
