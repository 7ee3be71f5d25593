"""Tiny helper to write notebooks from cell lists (used once per notebook by the developers).

    from scripts.nbtool import write_notebook, md, code, params
    write_notebook("notebooks/00_x.ipynb", [md("# Title"), params("A: int = 1  # doc"), code("print(A)")])

Notebooks are then edited in JupyterLab as usual; this only avoids hand-written JSON.
"""

from __future__ import annotations

import nbformat


def md(src: str):
    return nbformat.v4.new_markdown_cell(src.strip("\n"))


def code(src: str):
    return nbformat.v4.new_code_cell(src.strip("\n"))


def params(src: str):
    cell = nbformat.v4.new_code_cell(src.strip("\n"))
    cell.metadata["tags"] = ["parameters"]
    return cell


def write_notebook(path: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, c in enumerate(nb.cells):  # stable ids keep diffs small
        c.id = f"c{i:02d}"
    nbformat.write(nb, path)
