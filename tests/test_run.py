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
        code("import pandas as pd\nfrom protego_nb import report\n"
             "if N > 3:  # a section that writes only sometimes\n"
             "    report.save_table(pd.DataFrame({'a': [N]}), '00_extra', PROFILE)\n"
             "report.save_results('00_ok', {'n': N, 'seed': SEED}, PROFILE)"),
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


def _out(tmp):
    return tmp / "out" / "papermill_runs" / "ci"


def test_results_carry_provenance(tiny_project):
    run.run("ci", only=["00"], progress=False)
    r = json.loads((_out(tiny_project) / "results" / "00_ok.json").read_text())
    prov = r["_run"]
    assert prov["parameters"] == {"PROFILE": "ci", "SEED": 7, "N": 5} and prov["profile"] == "ci"
    assert prov["command"] == "python -m protego_nb.run --profile ci --only 00" and prov["ok"]
    assert prov["wall_seconds"] > 0 and prov["machine"]["cpu_count"] >= 1
    assert "git_commit" in prov and "git_dirty" in prov and r["_format"] == 2


def test_rerun_leaves_nothing_stale(tiny_project):
    """A section that wrote last time and not this time leaves no file behind; --only keeps others' files."""
    run.run("ci", progress=False)
    out = _out(tiny_project)
    assert (out / "results" / "00_extra.md").exists()
    (out / "results" / "00_stale_from_an_old_version.json").write_text("{}")
    f = paths.notebooks_dir() / "params" / "ci.yaml"
    f.write_text(yaml.safe_dump({"common": {"SEED": 8}, "00_ok": {"N": 2}}))
    before_02 = (out / "results" / "02_after.json").read_text()
    run.run("ci", only=["00"], progress=False)
    assert not (out / "results" / "00_extra.md").exists() and not (out / "results" / "00_extra.csv").exists()
    assert not (out / "results" / "00_stale_from_an_old_version.json").exists()
    r = json.loads((out / "results" / "00_ok.json").read_text())
    assert r["n"] == 2 and r["seed"] == 8
    assert (out / "results" / "02_after.json").read_text() == before_02  # not run, not touched


def test_a_failing_notebook_leaves_no_old_results(tiny_project):
    out = _out(tiny_project)
    (out / "results").mkdir(parents=True)
    (out / "results" / "01_fails.json").write_text('{"old": 1}')
    runs = run.run("ci", only=["01"], progress=False)
    assert not runs[0].ok and not (out / "results" / "01_fails.json").exists()


def test_save_results_does_not_merge(tmp_path, monkeypatch):
    from protego_nb import report

    monkeypatch.setenv("PROTEGO_OUTPUT_DIR", str(tmp_path))
    report.save_results("09_x", {"a": 1, "b": 2}, "ci")
    report.save_results("09_x", {"a": 3}, "ci")
    r = report.load_results("09_x", "ci")
    assert r["a"] == 3 and "b" not in r


def test_kernel_sees_the_output_dir(tiny_project):
    """The notebook (a separate kernel process) writes under PROTEGO_OUTPUT_DIR, not into the repository."""
    run.run("ci", only=["02"], progress=False)
    assert (_out(tiny_project) / "results" / "02_after.json").exists()
    assert not (paths.REPO_ROOT / "papermill_runs" / "ci" / "results" / "02_after.json").exists()
