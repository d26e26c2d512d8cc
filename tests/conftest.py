import importlib.util
import os
import sys

import pytest
import torch


def _import_triton_for_its_interpreter():
    """Triton's interpreter runs a kernel only if ``triton.language`` itself was imported under
    ``TRITON_INTERPRET=1`` (its library functions, ``tl.sum`` and the like, are then interpreted too).
    Without a GPU, import it so before any test module does, and put the variable back as it was: the
    triton backends stay unavailable on the CPU unless a test sets it (tests/ops/test_*_triton.py)."""
    if torch.cuda.is_available() or "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


_import_triton_for_its_interpreter()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _cache_in_a_temporary_folder(tmp_path_factory):
    """Generated data sets go to a temporary cache, never the user's ~/.cache/ssmlab."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SSMLAB_CACHE", str(tmp_path_factory.mktemp("ssmlab-cache")))
    yield
    mp.undo()
