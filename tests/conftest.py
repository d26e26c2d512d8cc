import pytest
import torch


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
