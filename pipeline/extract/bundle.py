"""A vector bundle on disk: one folder that carries trait vectors with their card, their evidence
and the record of how they were made, and that anyone who receives it can check.

::

    DIR/README.md                 YAML front matter (what model hubs and `vectors --library` index)
                                  and a human card (:mod:`.bundle_card`)
    DIR/vectors.safetensors       one float32 unit vector ``[d]`` per vector, named by its vector id;
                                  metadata ``traitlens.bundle``: strict JSON of each vector's group,
                                  layer, method, held-out metrics and the export commands
    DIR/evidence/<name>.parquet   metrics, steering, capability (where the store has that table),
                                  prompts (ids, text, labels, splits; hashes only with --no-prompts)
    DIR/reproduce.json            how the vectors were made (model, corpus, commands, versions,
                                  device) and the SHA-256 of every other file

This module is the format alone: writing a folder atomically (:func:`write_bundle`), checking
it (:func:`verify`: a missing, changed or unlisted file is a :class:`BundleError`, exit 2, that
names it) and reading it back (:func:`open_bundle`). What goes in is gathered from a store by
:mod:`traitlens.workflows.bundles`.

The hashes catch damage and edits; they are not a signature: whoever rewrites ``reproduce.json``
along with a file passes :func:`verify` (compare its SHA-256 with the one the author published).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from traitlens.store.errors import InputError
from traitlens.store.location import sha256_file
from traitlens.store.strict_json import document
from traitlens.store.vocabulary import (BUNDLE_CARD, BUNDLE_EVIDENCE, BUNDLE_EVIDENCE_DIR, BUNDLE_REPRODUCE,
                                        BUNDLE_VECTORS)

from traitlens.pipeline.extract.export import NOT_MEASURABLE, card_json

FORMAT = "traitlens bundle 1"
META_KEY = "traitlens.bundle"  # the safetensors metadata key of the vectors' descriptions
FRONT = "---"  # the YAML front matter's fences


class BundleError(InputError):
    """A bundle that cannot be used as it is (missing, damaged or changed file): exit 2, naming it.
    ``file`` (bundle-relative) and ``problem`` (missing | changed | not listed | damaged) say what
    failed, for listings."""

    def __init__(self, message: str, file: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.file, self.problem = file, problem


def evidence_path(name: str) -> str:
    """The bundle-relative path of one evidence table (``evidence/metrics.parquet``)."""
    if name not in BUNDLE_EVIDENCE:
        raise ValueError(f"unknown evidence {name!r}; bundles hold {', '.join(BUNDLE_EVIDENCE)}")
    return f"{BUNDLE_EVIDENCE_DIR}/{name}.parquet"


def strict_json(obj) -> str:
    """``obj`` as strict JSON text, indented: no NaN or Infinity (null, the reason under ``nulls``)."""
    return json.dumps(document(obj, NOT_MEASURABLE), indent=1, default=str, allow_nan=False, ensure_ascii=False) + "\n"


# -- writing -----------------------------------------------------------------------------------
def write_bundle(out: Path, vectors: dict[str, np.ndarray], meta: dict, evidence: dict[str, pa.Table], card: str,
                 reproduce: dict) -> dict[str, str]:
    """Write the bundle folder ``out`` (which must not exist) atomically: every part is written
    into a hidden sibling folder, hashed, and the folder renamed into place, so a crash never
    leaves half a bundle under its name. ``vectors``: ``{vector_id: float32 [d]}``; ``meta``: the
    safetensors description (strict JSON); ``evidence``: ``{name: table}``; ``card``: README.md's
    text; ``reproduce``: reproduce.json without its ``files``. Returns ``{file: sha256}``."""
    from safetensors.numpy import save_file

    out = Path(out)
    if out.exists():
        raise BundleError(f"-o {out} exists: a bundle is written to a new folder and never over another")
    if not out.parent.is_dir():
        raise BundleError(f"-o {out}: the folder {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / BUNDLE_EVIDENCE_DIR).mkdir(parents=True)
    try:
        (tmp / BUNDLE_CARD).write_text(card, encoding="utf-8")
        save_file({vid: np.ascontiguousarray(v, dtype=np.float32) for vid, v in vectors.items()},
                  str(tmp / BUNDLE_VECTORS), metadata={META_KEY: card_json(meta)})
        for name, table in evidence.items():
            pq.write_table(table, tmp / evidence_path(name), compression="zstd")
        files = {rel: sha256_file(tmp / rel) for rel in listed_files(tmp)}
        (tmp / BUNDLE_REPRODUCE).write_text(strict_json({**reproduce, "files": files}), encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def listed_files(folder: Path) -> list[str]:
    """Every file of a bundle folder but reproduce.json and hidden ones, as sorted relative paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != BUNDLE_REPRODUCE and not any(s.startswith(".") for s in
                                                                            p.relative_to(folder).parts))


# -- checking ----------------------------------------------------------------------------------
def read_reproduce(folder: Path) -> dict:
    """reproduce.json of a bundle folder, or a :class:`BundleError` naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a bundle folder (no such folder); `traitlens bundle` writes one")
    path = folder / BUNDLE_REPRODUCE
    if not path.is_file():
        raise BundleError(f"{path} is missing: {folder} is not a traitlens bundle (or it lost the file that lists "
                          "its hashes)", BUNDLE_REPRODUCE, "missing")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: damaged (not valid JSON: {e}); the bundle cannot be checked", BUNDLE_REPRODUCE,
                          "damaged") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("files"), dict):
        raise BundleError(f"{path}: not a {FORMAT!r} reproduce file (format "
                          f"{rec.get('format') if isinstance(rec, dict) else None!r})", BUNDLE_REPRODUCE, "damaged")
    return rec


def verify(folder: Path) -> dict:
    """Check every file of the bundle against reproduce.json before anything reads it: each listed
    file exists and has its SHA-256, and no other file is there. Returns reproduce.json; a
    :class:`BundleError` (exit 2) names the first file that fails."""
    folder = Path(folder)
    rec = read_reproduce(folder)
    for rel, want in sorted(rec["files"].items()):
        path = folder / rel
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (reproduce.json lists it with SHA-256 {want[:16]}...); "
                              "the bundle is incomplete: get it again from its source", rel, "missing")
        got = sha256_file(path)
        if got != want:
            raise BundleError(f"{path}: SHA-256 {got[:16]}... but reproduce.json records {want[:16]}...: the file "
                              "was changed or damaged after the bundle was written; get the bundle again from its "
                              "source (nothing was read from it)", rel, "changed")
    extra = [rel for rel in listed_files(folder) if rel not in rec["files"]]
    if extra:
        raise BundleError(f"{folder / extra[0]}: not part of the bundle (reproduce.json does not list it"
                          + (f", nor {len(extra) - 1} more" if len(extra) > 1 else "") + "); remove it, or rebuild "
                          "the bundle with `traitlens bundle`", extra[0], "not listed")
    for required in (BUNDLE_CARD, BUNDLE_VECTORS, evidence_path("metrics")):
        if required not in rec["files"]:
            raise BundleError(f"{folder / required}: a bundle needs it and reproduce.json does not list it", required,
                              "missing")
    return rec


# -- reading -----------------------------------------------------------------------------------
def split_front_matter(text: str) -> tuple[dict, str]:
    """``(front matter, body)`` of a card: the YAML mapping between the leading ``---`` fences."""
    import yaml

    lines = text.split("\n")
    if not lines or lines[0].strip() != FRONT:
        return {}, text
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == FRONT)
    except StopIteration:
        raise BundleError("the card's front matter has no closing '---' line") from None
    try:
        front = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as e:
        raise BundleError(f"the card's front matter is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(front, dict):
        raise BundleError("the card's front matter is not a mapping")
    return front, "\n".join(lines[end + 1:])


def join_front_matter(front: dict, body: str) -> str:
    """A card: ``front`` as YAML between ``---`` fences (strict: NaN becomes null), then ``body``."""
    import yaml

    text = yaml.safe_dump(document(front, NOT_MEASURABLE), sort_keys=False, allow_unicode=True, width=100)
    return f"{FRONT}\n{text}{FRONT}\n\n{body.lstrip()}"


@dataclass
class Bundle:
    """A verified bundle, read: its vectors as vectors-table rows (``vector`` float32 ``[d]``
    included), its front matter and reproduce.json; evidence tables on demand."""

    path: Path
    reproduce: dict
    front: dict
    meta: dict
    records: list[dict] = field(default_factory=list)

    @property
    def trait(self) -> str:
        return self.reproduce["trait"]

    @property
    def model_key(self) -> str:
        return self.reproduce["model"]["key"]

    def model_spec(self) -> str | None:
        """What ``--model`` loads this bundle's model when none is given: the recorded checkpoint
        (None: the default model). A recorded folder this machine lacks is a :class:`BundleError`
        saying to pass ``--model`` (rather than a failed download of a path)."""
        spec = self.reproduce["model"].get("spec")
        if spec and not self.reproduce["model"].get("hub_id") and not Path(spec).expanduser().exists():
            raise BundleError(f"{self.path}: its model was loaded from the folder {spec}, which this machine lacks: "
                              f"pass --model with that checkpoint (a folder or a Hugging Face id); it must load as "
                              f"{self.model_key}")
        return spec

    def table(self, name: str) -> pa.Table | None:
        """One evidence table (None when the bundle holds none of that name)."""
        rel = evidence_path(name)
        return pq.read_table(self.path / rel) if rel in self.reproduce["files"] else None

    def choose(self, vector_id: str | None = None, layer: int | None = None, method: str | None = None) -> list[dict]:
        """The bundle's vectors with that id / at that layer / by that method (all without
        filters); a :class:`BundleError` listing what it holds when none matches."""
        found = [r for r in self.records if (vector_id is None or r["vector_id"] == vector_id)
                 and (layer is None or r["layer"] == layer) and (method is None or r["method"] == method)]
        if not found:
            held = ", ".join(f"{r['vector_id']} ({r['method']} L{r['layer']})" for r in self.records)
            asked = ", ".join(f"{k} {v}" for k, v in (("--vector-id", vector_id), ("--layer", layer),
                                                      ("--method", method)) if v is not None)
            raise BundleError(f"{self.path}: no vector matches {asked}; the bundle holds {held}")
        return found


def model_mismatch(bundle_key: str, loaded_key: str) -> str:
    """Why a loaded model is not a bundle's (keys are ``<folder or id name>-<weights fingerprint>``)."""
    name, _, fp = bundle_key.rpartition("-")
    got_name, _, got_fp = loaded_key.rpartition("-")
    if fp == got_fp:
        return (f"--model loads {loaded_key}: the same config and weights as the bundle's {bundle_key}, under another "
                f"name; models are keyed by their folder's (or hub id's) name too: put the checkpoint in a folder "
                f"named {name!r}")
    return (f"--model loads {loaded_key}, but the bundle's vectors were made on {bundle_key} (another config or other "
            "weights): pass --model with the bundle's checkpoint")


def open_bundle(folder) -> Bundle:
    """Verify a bundle (:func:`verify`), then read its card, vectors and metrics."""
    from safetensors.numpy import load_file
    from safetensors import safe_open

    folder = Path(folder)
    rec = verify(folder)
    front, _ = split_front_matter((folder / BUNDLE_CARD).read_text(encoding="utf-8"))
    with safe_open(str(folder / BUNDLE_VECTORS), "numpy") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    tensors = load_file(str(folder / BUNDLE_VECTORS))
    rows = pq.read_table(folder / evidence_path("metrics")).to_pylist()
    for r in rows:
        if r["vector_id"] not in tensors:
            raise BundleError(f"{folder / BUNDLE_VECTORS}: holds no tensor {r['vector_id']} (metrics lists it)")
        r["vector"] = tensors[r["vector_id"]].astype(np.float32)
    return Bundle(folder, rec, front, meta, rows)


def is_bundle(path) -> bool:
    """Whether ``path`` is a folder that looks like a bundle (has reproduce.json); reads nothing else."""
    p = Path(path)
    return p.is_dir() and (p / BUNDLE_REPRODUCE).is_file()
