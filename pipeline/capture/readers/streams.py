"""Open a corpus file as a binary stream, decompressing ``.gz`` and ``.zst`` as it is read.

Arrow's own codecs do the work (gzip through zlib, zstd built into every pyarrow wheel), so no
extra package is needed. A damaged or truncated compressed file raises
:class:`~traitlens.pipeline.capture.errors.CorpusError` naming the file, at the read that meets
the damage, whoever reads (the line readers, the Arrow JSON reader).
"""

from __future__ import annotations

import io
from pathlib import Path

from traitlens.pipeline.capture.errors import CorpusError

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}


def compression_of(path: Path) -> str | None:
    """``gzip``, ``zstd`` or None, from the file name."""
    return COMPRESSIONS.get(Path(path).suffix.lower())


def format_suffix(path: Path) -> str:
    """The suffix that names the format, under any compression suffix: ``c.jsonl.gz`` -> ``.jsonl``."""
    p = Path(path)
    if compression_of(p):
        p = p.with_suffix("")
    return p.suffix.lower()


def stem(path: Path) -> str:
    """The name without its format and compression suffixes: ``persona.jsonl.gz`` -> ``persona``."""
    p = Path(path)
    if compression_of(p):
        p = p.with_suffix("")
    return p.stem


class _Decompressed(io.RawIOBase):
    """A raw stream over Arrow's decompressing input stream whose read errors name the file."""

    def __init__(self, path: Path, codec: str):
        import pyarrow as pa

        self.path, self.codec = path, codec
        self._raw = pa.input_stream(str(path), compression=codec)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self._raw.read(len(b))
        except Exception as e:  # Arrow's OSError ("Truncated compressed stream", "inflate failed")
            raise damaged(self.path, self.codec, e) from None
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def damaged(path: Path, codec: str, cause: BaseException) -> CorpusError:
    return CorpusError(path, None, None, f"cannot decompress this {codec} file ({str(cause).splitlines()[0]})",
                       "it is damaged or truncated: copy or compress it again")


def open_bytes(path: Path, buffer_size: int = 1 << 20):
    """The file's bytes, decompressed when its name says so; a binary file object."""
    path = Path(path)
    codec = compression_of(path)
    if codec is None:
        return open(path, "rb")
    return io.BufferedReader(_Decompressed(path, codec), buffer_size)
