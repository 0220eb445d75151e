"""Write the table schemas into docs/store-format.md, from the schemas the store writes with.

    python docs/store_schemas.py            # print the block
    python docs/store_schemas.py --write    # replace the block between the markers in docs/store-format.md

``tests/test_docs.py`` fails when the block differs from ``traitlens.store.tables.SCHEMAS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent / "store-format.md"
START, END = "<!-- schemas:start -->", "<!-- schemas:end -->"
REGENERATE = "python docs/store_schemas.py --write"


def comments() -> dict[str, dict[str, str]]:
    """``{table: {column: the comment beside it in store/tables.py}}``: the schemas' own notes."""
    import re

    import traitlens.store.tables as tables

    source = Path(tables.__file__).read_text()
    out: dict[str, dict[str, str]] = {}
    for name in tables.SCHEMAS:
        m = re.search(rf"^{name.upper()}_SCHEMA = pa\.schema\(\n(.*?)^\)", source, re.S | re.M)
        notes, last = {}, None
        for line in (m.group(1).splitlines() if m else []):
            col = re.match(r'\s*\("(\w+)",.*?\),?\s*(?:#\s*(.*))?$', line)
            if col:
                last = col.group(1)
                notes[last] = (col.group(2) or "").strip()
            elif last and line.strip().startswith("#"):  # a comment continued on the next line
                notes[last] = (notes[last] + " " + line.strip().lstrip("#").strip()).strip()
        out[name] = notes
    return out


def render() -> str:
    """One Markdown table per Parquet table: each column, its Arrow type and the schema's note
    on it, in schema order."""
    from traitlens.store.tables import SCHEMAS

    notes = comments()
    out = [f"Generated from `traitlens.store.tables.SCHEMAS` and the notes beside each column in "
           f"`store/tables.py` (`{REGENERATE}`; a test fails when it is stale).", ""]
    for name, schema in SCHEMAS.items():
        out += [f"### `{name}`", "", "| column | type | note |", "|---|---|---|"]
        for f in schema:
            note = notes[name].get(f.name, "").replace("|", "\\|")
            out.append(f"| `{f.name}` | `{f.type}` | {note} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def block(text: str) -> str:
    """The generated block of ``text`` (between the markers), or raise."""
    if START not in text or END not in text:
        raise ValueError(f"{DOC.name} has no {START} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write(doc: Path = DOC) -> None:
    text = doc.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{render()}{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
        print(f"wrote the schemas into {DOC}")
    else:
        sys.stdout.write(render())
