"""docs/tutorial.ipynb runs, on a tiny model: its parameter cell is replaced (model folder, output
folder, corpus size) and nbclient executes every cell in a fresh kernel; the outputs are checked
against the store the notebook wrote, read here independently. In git the notebook has no outputs."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_the_tutorial_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert 'MODEL = "default"' in next(c.source for c in code if "parameters" in c.metadata.get("tags", []))


def pick_alpha(rows: list[dict]) -> float:
    """The alpha the notebook steers and exports with: the steering pick's (largest shift within
    the notebook's KL budget of 0.5 among the trait's rows), else 0.25."""
    within = [r for r in rows if r["method"] != "random" and r["kl"] <= 0.5]
    return max(within, key=lambda r: (r["shift"], -r["kl"]))["alpha"] if within else 0.25


def outputs(cell) -> tuple[str, str]:
    """(the text/plain and stream text, the text/html) of a cell's outputs."""
    text, page = [], []
    for o in cell.outputs:
        if o.output_type == "stream":
            text.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            text.append(o.data.get("text/plain", ""))
            page.append(o.data.get("text/html", ""))
        elif o.output_type == "error":
            raise AssertionError(f"{o.ename}: {o.evalue}")
    return "\n".join(text), "\n".join(page)


@pytest.mark.slow
def test_the_tutorial_runs_from_a_parquet_corpus_to_an_exported_vector(tmp_path, tiny_llama):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = (f"MODEL = {str(tiny_llama)!r}\nFOLDER = {str(tmp_path / 'out')!r}\nPER_SIDE = 80\n"
                     "LAYERS = 'all'\nNEUTRAL = 4\n")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    cell = lambda text: next(c for c in code if text in c.source)  # noqa: E731  (the cell that runs `text`)

    import traitlens as tl

    store = tl.Store.open(tmp_path / "out" / "store")
    corpus = tmp_path / "out" / "demo.parquet"
    assert corpus.read_bytes()[:4] == b"PAR1"
    n_prompts = store.table("prompts", columns=["prompt_id"]).num_rows
    assert n_prompts == 3 * 2 * 80  # every row of the Parquet corpus ingested
    text, page = outputs(cell("store  # groups, traits, runs and sizes"))
    assert f"{n_prompts} prompts" in text and "traitlens store" in page and "sentiment" in page

    _, page = outputs(cell("ranking = tl.rank("))
    pick = tl.rank(store, "sentiment").pick
    marked = re.search(r"<tr class=pick>(.*?)</tr>", page).group(1)
    assert pick["vector_id"] in marked and "★ pick" in marked
    text, _ = outputs(cell("vector = store.vector("))
    assert f"vector {pick['vector_id']}" in text

    _, page = outputs(cell("evaluation = tl.evaluate("))
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png[:4] == b"\x89PNG"
    rows = store.table("steering").to_pylist()
    assert {r["kind"] for r in rows} == {"expression"} and {r["alpha"] for r in rows} == {0.1, 0.25}
    assert {(r["method"], r["layer"]) for r in rows if r["method"] != "random"} == {(pick["method"], pick["layer"])}

    import gguf

    exported = tmp_path / "out" / "sentiment.gguf"
    reader = gguf.GGUFReader(exported)
    layers = sorted(int(t.name.split(".")[1]) for t in reader.tensors)
    assert layers and 0 not in layers  # llama.cpp cannot steer layer 0
    text, _ = outputs(cell("exported = tl.export("))
    assert f"llama.cpp, alpha {pick_alpha(rows):g}" in text  # the strength of the evaluated pick's alpha
    assert f"wrote {exported}" in text
    text, _ = outputs(cell("tl.query(store"))
    best = max(rows, key=lambda r: r["shift"])  # the SQL cell's first row: the largest shift stored
    first = text.splitlines()[1].split()
    assert (first[1], int(first[2]), float(first[3])) == (best["method"], best["layer"], best["alpha"])
