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
