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


# ---------------------------------------------------------------------------------------- fidelity record
#: Measured errors of the torch ports against their reference runtimes, one entry per check. The fidelity tests
#: assert a bound on each; with PROTEGO_FIDELITY_OUT set (``make fidelity``), the session writes every measured
#: value there as JSON, so the README's fidelity table quotes numbers a run measured, not the bound.
_FIDELITY: list[dict] = []


@pytest.fixture
def record_fidelity(request):
    """``record(model, reference, rel_max, n_inputs, what="")``: keep a fidelity measurement of this test."""

    def record(model: str, reference: str, rel_max: float, n_inputs: int, what: str = "") -> float:
        _FIDELITY.append({"model": model, "reference": reference, "what": what, "n_inputs": int(n_inputs),
                          "max_rel_l2": float(rel_max), "test": request.node.nodeid})
        return float(rel_max)

    return record


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("PROTEGO_FIDELITY_OUT")
    if not out or not _FIDELITY:
        return
    import json

    from protego_nb.io import atomic_write_text
    from protego_nb.runtime import git_info, machine

    rec = {"what": "largest per-input relative L2 error of each torch port against its reference runtime",
           "command": "make fidelity", "exit_status": int(exitstatus), "git": git_info(), "machine": machine(),
           "checks": sorted(_FIDELITY, key=lambda r: (r["model"], r["what"]))}
    atomic_write_text(out, json.dumps(rec, indent=1) + "\n")
