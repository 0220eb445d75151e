"""The corpus error: one bad record, file or option, named with where it is and how to fix it.

It lives apart from :mod:`.corpus` (which re-exports it) so that the modules below the record
rules, such as :mod:`.readers.streams` (decompression, which :mod:`.corpus` uses), can raise it
without importing the rules.
"""

from __future__ import annotations

from traitlens.store.errors import InputError


class CorpusError(InputError):
    """A corpus file cannot be read; ``str(e)`` is ``file:line: field: problem (fix)``."""

    def __init__(self, path, line: int | None, field: str | None, problem: str, fix: str = ""):
        self.path, self.line, self.field = str(path), line, field
        where = self.path + (f":{line}" if line else "")
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {problem}" + (f" ({fix})" if fix else ""))
