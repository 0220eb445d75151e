"""docs/cli.md is the CLI's own help text: every command and sub-command, every option
(regenerate with `python -m traitlens.workflows.cli_reference --write`)."""

import click

from traitlens.workflows.cli_reference import DOC, REGENERATE, anchor, commands, render


def test_docs_cli_md_is_current():
    assert DOC.exists(), f"{DOC} is missing: run `{REGENERATE}`"
    assert DOC.read_text() == render(), f"docs/cli.md is stale (the CLI changed): run `{REGENERATE}`"


def test_the_reference_holds_every_command_and_option_with_a_contents_entry():
    """Walked from the click objects, independently of the renderer's own walk: each command has a
    heading and a contents link, and each of its options appears in its section."""
    from traitlens.workflows.cli import cli

    text = render()
    found = []

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            found.append(((*prefix, name), cmd))
            if isinstance(cmd, click.Group):
                walk(cmd, (*prefix, name))

    walk(cli, ())
    assert {p for p, _ in found} == {p for p, _ in commands(cli)}
    assert ("vectors", "combine") in {p for p, _ in found}  # sub-commands too
    for path, cmd in found:
        heading = f" traitlens {' '.join(path)}\n"
        assert f"](#{anchor(path)})" in text and heading in text, path
        section = text.split(heading, 1)[1].split("\n#", 1)[0]
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in section, (path, opt)
