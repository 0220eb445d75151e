"""Run a bench's commands with an earlier release's source, side by side with this one.

``--before-code DIR`` in a bench names a folder holding that release's source (e.g.
``git archive 4b6f66b | tar -x -C DIR``); :func:`old_code_env` is the environment in which a
child process's ``import traitlens`` finds it first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def old_code_env(folder: Path) -> dict:
    """An environment in which ``import traitlens`` finds the source in ``folder`` first."""
    shim = Path(tempfile.mkdtemp(prefix="traitlens-old-code-"))
    (shim / "traitlens").symlink_to(Path(folder).resolve(), target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(shim)}
