"""HTML for notebooks: the pieces every ``_repr_html_`` of the Python face is built from.

Every value shown goes through :func:`esc` (``html.escape``, quotes too): trait names, prompts,
tokens, paths and SQL come from corpora and users, and a ``<script>`` in a prompt must stay
text. Figures are the PNGs the report and the command line draw (``queries/ranking.py``'s
heatmap, ``pipeline/steer/plots.py``'s steering figure), drawn into a temporary file by those
same functions and inlined as base64.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from pathlib import Path

STYLE = ("<style>.traitlens table{border-collapse:collapse;font-size:12px;margin:4px 0}"
         ".traitlens td,.traitlens th{border:1px solid #ddd;padding:2px 6px;text-align:right}"
         ".traitlens td.t,.traitlens th.t{text-align:left}.traitlens tr.pick{background:#fff3bf;font-weight:bold}"
         ".traitlens h4{margin:8px 0 2px}.traitlens p{margin:2px 0}.traitlens img{max-width:100%}</style>")


def esc(value) -> str:
    """``value`` as HTML text: escaped, quotes included (None as empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def cell(value, spec: str = ".3f") -> str:
    """A value as a table cell's text: floats formatted by ``spec`` (NaN and None as ``–``), lists
    as their length; escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, float):
        return esc(format(value, spec))
    if isinstance(value, (list, tuple)):
        return esc(f"[{len(value)} values]")
    return esc(value)


def table(rows: list[dict], columns: list[str], mark: int | None = None, mark_label: str = "pick",
          max_rows: int = 200) -> str:
    """An HTML table of ``rows`` (dicts) over ``columns``; row ``mark`` is highlighted and labelled
    ``mark_label`` in a first column. Text columns are left-aligned."""
    shown = rows[:max_rows]
    text_cols = {c for c in columns if any(isinstance(r.get(c), str) for r in shown)}
    th = lambda c: f'<th class="{"t" if c in text_cols else ""}">{esc(c)}</th>'  # noqa: E731
    head = ("<th></th>" if mark is not None else "") + "".join(th(c) for c in columns)
    body = []
    for i, r in enumerate(shown):
        first = (f'<td class="t">{esc(mark_label) if i == mark else ""}</td>' if mark is not None else "")
        tds = "".join(f'<td class="{"t" if c in text_cols else ""}">{cell(r.get(c))}</td>' for c in columns)
        body.append(f'<tr{" class=pick" if i == mark else ""}>{first}{tds}</tr>')
    more = f"<p>{len(rows)} rows, first {max_rows} shown</p>" if len(rows) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def paragraphs(lines: list[str]) -> str:
    return "".join(f"<p>{esc(line)}</p>" for line in lines if line)


def heading(text: str) -> str:
    return f"<h4>{esc(text)}</h4>"


def image(png: bytes, alt: str) -> str:
    """A PNG inline (base64), with ``alt`` text."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"/>'


def drawn(draw) -> bytes:
    """The PNG ``draw(path)`` writes (one of the project's plotting functions), as bytes."""
    with tempfile.TemporaryDirectory(prefix="traitlens-figure-") as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return path.read_bytes()


def box(*parts: str) -> str:
    """The parts in one styled block."""
    return f'{STYLE}<div class="traitlens">{"".join(parts)}</div>'
