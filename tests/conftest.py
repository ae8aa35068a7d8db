"""Fixtures shared by the test modules, and the ``--device`` option that runs the model tests on
another device (``pytest --device cuda`` on a GPU machine; the default is the CPU)."""
from __future__ import annotations

import os

import pytest
import torch

# encode's automatic export (hybridhash.autoexport) would, on a CPU with bf16 / int8 units, write to the
# user's cache and change the precision the tests' new collections take; its own tests turn it back on
os.environ["HYBRIDHASH_NO_AUTO_EXPORT"] = "1"


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device for the tests that take the `device` fixture (cpu, cuda, cuda:1)")


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device the model tests run on; a CUDA device that is absent skips them with the reason."""
    name = pytestconfig.getoption("--device")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device {name}: no CUDA device on this machine")
    return dev


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def serve_collection(tmp_path_factory) -> dict:
    """A small real collection (encoded and indexed) shared by the service, browser and load tests."""
    from tests.helpers.collections import build_collection

    return build_collection(tmp_path_factory.mktemp("serve"))
