"""Render the CLI reference (every verb's ``--help``) as Markdown, and keep the README's copy true.

    python -m traitlens.workflows.cli_reference            # print it
    python -m traitlens.workflows.cli_reference --write    # replace the README's block

``tests/test_cli_reference.py`` fails when the README's block differs from the CLI itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def render() -> str:
    from .cli import cli

    def help_of(args):
        out = CliRunner().invoke(cli, [*args, "--help"], prog_name="traitlens", terminal_width=100).output
        return out.rstrip()

    parts = ["```", help_of([]), "```"]
    for name in sorted(cli.commands):
        parts += ["", f"### traitlens {name}", "", "```", help_of([name]), "```"]
    return "\n".join(parts)


def readme_block(text: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README has no {START} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write(readme: Path = README) -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render()}\n{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        print(render())
