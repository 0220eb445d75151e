"""The README's CLI reference is the CLI's own help text (regenerate with
`python -m traitlens.workflows.cli_reference --write`)."""

from traitlens.workflows.cli_reference import README, readme_block, render


def test_readme_cli_reference_is_current():
    assert readme_block(README.read_text()) == render().strip(), (
        "README CLI reference is stale: run `python -m traitlens.workflows.cli_reference --write`")
