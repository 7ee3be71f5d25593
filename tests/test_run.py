"""The papermill runner: parameter selection, order, failure collection, outputs."""

import json

import nbformat
import pytest
import yaml

from protego_nb import paths, run
from scripts.nbtool import code, params, write_notebook


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    (nbdir / "params").mkdir(parents=True)
    write_notebook(str(nbdir / "00_ok.ipynb"), [
        params('PROFILE: str = "x"  # profile\nSEED: int = 1  # seed\nN: int = 2  # size'),
        code("from protego_nb import report\nreport.save_results('00_ok', {'n': N, 'seed': SEED}, PROFILE)"),
    ])
    write_notebook(str(nbdir / "01_fails.ipynb"), [
        params('PROFILE: str = "x"  # profile'),
        code("raise RuntimeError('boom in 01')"),
    ])
    write_notebook(str(nbdir / "02_after.ipynb"), [
        params('PROFILE: str = "x"  # profile\nSEED: int = 1  # seed'),
        code("from protego_nb import report\nreport.save_results('02_after', {'seed': SEED}, PROFILE)"),
    ])
    (nbdir / "params" / "ci.yaml").write_text(yaml.safe_dump({"common": {"SEED": 7, "UNUSED": 1},
                                                              "00_ok": {"N": 5}}))
    monkeypatch.setattr(paths, "notebooks_dir", lambda: nbdir)
    monkeypatch.setenv("PROTEGO_OUTPUT_DIR", str(tmp_path / "out"))
    return tmp_path


def test_parameters_filtered_to_declared(tiny_project):
    nb = run.list_notebooks()[0]
    assert run.parameters_for(nb, "ci") == {"PROFILE": "ci", "SEED": 7, "N": 5}
    nb2 = run.list_notebooks()[1]
    assert run.parameters_for(nb2, "ci") == {"PROFILE": "ci"}


def test_undeclared_notebook_specific_parameter_is_an_error(tiny_project):
    f = paths.notebooks_dir() / "params" / "ci.yaml"
    f.write_text(yaml.safe_dump({"00_ok": {"TYPO": 1}}))
    with pytest.raises(KeyError, match="TYPO"):
        run.parameters_for(run.list_notebooks()[0], "ci")


def test_runs_all_collects_failures_and_exit_code(tiny_project, capsys):
    rc = run.main(["--profile", "ci", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "01_fails" in err and "boom in 01" in err
    out = tiny_project / "out" / "papermill_runs" / "ci"
    summary = json.loads((out / "run_summary.json").read_text())
    assert [n["ok"] for n in summary["notebooks"]] == [True, False, True]  # 02 still ran after 01 failed
    assert json.loads((out / "results" / "00_ok.json").read_text())["n"] == 5
    assert json.loads((out / "results" / "02_after.json").read_text())["seed"] == 7
    assert (out / "01_fails.ipynb").exists()  # the failing notebook is kept for inspection


def test_only_selects(tiny_project):
    runs = run.run("ci", only=["02"], progress=False)
    assert [r.notebook for r in runs] == ["02_after"] and runs[0].ok
    with pytest.raises(SystemExit, match="no notebook matches"):
        run.run("ci", only=["99"], progress=False)


def test_real_notebooks_have_parameters_cells():
    nbs = run.list_notebooks()
    assert nbs, "no notebooks found"
    for nb in nbs:
        declared = run.declared_parameters(nb)
        src = next(c.source for c in nbformat.read(nb, 4).cells if "parameters" in c.metadata.get("tags", []))
        assigned = [ln.split(":")[0].split("=")[0].strip() for ln in src.splitlines() if ln and not ln.startswith("#")]
        # papermill silently skips a line it cannot parse (e.g. a comment containing '='): catch that
        assert sorted(assigned) == sorted(declared), f"{nb.name}: unparsed parameter lines"
        for key in ("PROFILE", "SEED", "DEVICE", "INTERACTIVE"):
            assert key in declared, f"{nb.name} lacks {key}"
        for profile in run.PROFILES:
            run.parameters_for(nb, profile)  # raises on undeclared profile keys
