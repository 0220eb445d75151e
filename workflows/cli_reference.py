"""Render the CLI reference, ``docs/cli.md``, from the CLI's own definitions, and keep it true.

    python -m traitlens.workflows.cli_reference            # print it
    python -m traitlens.workflows.cli_reference --write    # rewrite docs/cli.md
    python -m traitlens.workflows.cli_reference --check    # exit 1 when docs/cli.md is stale

Every command and sub-command (``vectors combine``, ``vectors lens``) gets its full ``--help``,
in the order of a table of contents that lists each with its one-line summary.
``tests/test_cli_reference.py`` fails when the file differs from what this renders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
REGENERATE = "python -m traitlens.workflows.cli_reference --write"
WIDTH = 100  # the terminal width the help is wrapped at

HEADER = f"""# CLI reference

Every `traitlens` command with its full `--help`, generated from the CLI's own definitions
(`{REGENERATE}`; `tests/test_cli_reference.py` fails when this file is stale).

Exit codes, for every command: 0 success; 1 a failure the message explains; 2 bad usage or bad
input (the message names the option, file, line or field); 3 the store is locked by another live
run; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM, handled like Ctrl-C: what is complete is
committed and the run is recorded as interrupted).

`--store PATH|URL` (or `$TRAITLENS_STORE`) comes before the command: `traitlens --store my.store info`.
"""


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """``[(path, command)]`` for every command under ``group``, depth first, sorted by name;
    a group that is itself a command (``vectors``) comes before its sub-commands."""
    out = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        out.append(((*prefix, name), cmd))
        if isinstance(cmd, click.Group):
            out += commands(cmd, (*prefix, name))
    return out


def anchor(path: tuple[str, ...]) -> str:
    """The heading's anchor as GitHub and most Markdown renderers write it."""
    return "-".join(("traitlens", *path)).lower()


def render() -> str:
    from .cli import cli

    def help_of(args: list[str]) -> str:
        out = CliRunner().invoke(cli, [*args, "--help"], prog_name="traitlens", terminal_width=WIDTH).output
        return out.rstrip()

    found = commands(cli)
    parts = [HEADER, "## Contents", "", "| command | what it does |", "|---|---|"]
    for path, cmd in found:
        summary = cmd.get_short_help_str(limit=1000).replace("|", "\\|")
        parts.append(f"| [`traitlens {' '.join(path)}`](#{anchor(path)}) | {summary} |")
    parts += ["", "## traitlens", "", "```", help_of([]), "```"]
    for path, _ in found:
        parts += ["", f"{'#' * min(len(path) + 2, 4)} traitlens {' '.join(path)}", "", "```", help_of(list(path)), "```"]
    return "\n".join(parts) + "\n"


def stale(doc: Path = DOC) -> bool:
    """True when ``doc`` is missing or differs from what :func:`render` gives now."""
    return not doc.exists() or doc.read_text() != render()


def write(doc: Path = DOC) -> None:
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render())


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
        print(f"wrote {DOC}")
    elif "--check" in sys.argv:
        if stale():
            print(f"{DOC} is stale: run `{REGENERATE}`", file=sys.stderr)
            sys.exit(1)
        print(f"{DOC} is current")
    else:
        sys.stdout.write(render())
