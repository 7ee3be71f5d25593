"""The notebooks stay thin and clean: short code cells, no committed outputs, no hard-coded zoo models.

Logic belongs in the ``protego_nb`` package (``protego_nb.notebook`` sets a notebook up from its
parameters); model lists come from the parameter profiles. The papermill ``parameters`` cell may be
longer than the limit: it declares one parameter per line, and the runner injects only declared names.
"""

import ast
import json
import re

import pytest

from protego_nb import run
from protego_nb.models import zoo

MAX_CELL_LINES = 10
NOTEBOOKS = run.list_notebooks()


def _cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _is_parameters(cell) -> bool:
    return "parameters" in cell.get("metadata", {}).get("tags", [])


def _code_cells(nb_path):
    return [(i, c) for i, c in enumerate(_cells(nb_path)) if c["cell_type"] == "code" and not _is_parameters(c)]


def _strings(src: str) -> list[str]:
    """String constants of a cell (f-string parts included); comments are not code."""
    return [n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def long_cells(nb_path, limit: int = MAX_CELL_LINES) -> list[tuple[int, int]]:
    return [(i, len(_source(c).splitlines())) for i, c in _code_cells(nb_path) if len(_source(c).splitlines()) > limit]


def zoo_names_in_code(nb_path) -> list[tuple[int, str]]:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, zoo.MODELS)) + r")\b")
    return [(i, m) for i, c in _code_cells(nb_path) for s in _strings(_source(c)) for m in pattern.findall(s)]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_short(nb_path):
    assert not long_cells(nb_path), f"{nb_path.name}: (cell, lines) over {MAX_CELL_LINES} lines"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_outputs_committed(nb_path):
    for i, c in enumerate(_cells(nb_path)):
        if c["cell_type"] == "code":
            assert c.get("outputs") == [] and c.get("execution_count") is None, f"{nb_path.name} cell {i}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_first(nb_path):
    code = [c for c in _cells(nb_path) if c["cell_type"] == "code"]
    assert _is_parameters(code[0]) and sum(map(_is_parameters, code)) == 1


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_zoo_model_hard_coded(nb_path):
    assert not zoo_names_in_code(nb_path), f"{nb_path.name}: model names belong in the parameter profiles"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_explains_the_notebook(nb_path):
    cells = _cells(nb_path)
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# ")


def _nb(tmp_path, cells):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    path = tmp_path / "99_x.ipynb"
    nbformat.write(nb, path)
    return path


def test_the_checks_catch_what_they_are_for(tmp_path):
    import nbformat

    params = nbformat.v4.new_code_cell("\n".join(f"A{i}: int = {i}" for i in range(15)))
    params.metadata["tags"] = ["parameters"]
    long = nbformat.v4.new_code_cell("\n".join(f"x{i} = {i}" for i in range(11)))
    named = nbformat.v4.new_code_cell('models = ["sface", "dlib_resnet"]  # mobilefacenet in a comment is fine\n'
                                      'f"{x}/mobilefacenet512"')
    path = _nb(tmp_path, [params, long, named])
    assert long_cells(path) == [(1, 11)]  # the parameters cell is exempt
    assert zoo_names_in_code(path) == [(2, "sface"), (2, "dlib_resnet"), (2, "mobilefacenet512")]
