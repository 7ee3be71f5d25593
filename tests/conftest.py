import functools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PROTEGO_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))


@pytest.fixture(scope="session")
def lfw():
    from protego_nb import data, paths

    if not paths.lfw_images_dir(check=False).is_dir():
        pytest.skip("LFW not available (set PROTEGO_DATA_DIR)")
    return data.lfw()


@functools.cache
def lfw_canvas_stack(names: tuple[str, ...]):
    """uint8 [N, 224, 224, 3] canvases of LFW images (relative paths) through the package's detector."""
    import numpy as np

    from protego_nb import paths
    from protego_nb.faces.pipeline import build_canvases

    root = paths.lfw_images_dir(check=False)
    if not root.is_dir():
        pytest.skip("LFW not available (set PROTEGO_DATA_DIR)")
    rep = build_canvases([root / n for n in names], progress=False)
    assert not rep.failures, rep.failures
    return np.stack([c.canvas for c in rep.canvases])


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (tiny tensors; avoids oversubscribing a shared CPU), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
