"""Corpus records: the rules that turn one object into a :class:`PromptRecord`, and the line readers.

Every record becomes a :class:`PromptRecord` with a content-hash ``prompt_id``, a trait, a
label (+1 trait present, -1 its opposite, 0 unlabelled) and the split the corpus gives (None:
the ingest's plan assigns one, stratified by label; :mod:`.splits`). Bad input raises
:class:`CorpusError` naming the file, line and field, and how to fix it. :func:`record_from_object`
is the one definition of those rules: the columnar readers (:mod:`.readers`) apply them to a
batch at a time and are tested against it.

This module reads the line formats itself, one line at a time (``.json`` arrays excepted: they
are parsed whole), plain or compressed (``.gz``, ``.zst``):
- ``*.jsonl``: one JSON object a line; ``*.json``: a JSON array of objects;
- ``*.csv`` / ``*.tsv`` with a header row;
- ``*.txt``: one prompt a line (label and trait from the options);
- a folder holding ``positive.txt`` / ``negative.txt`` (trait = folder name), a folder
  ``traitlens generate`` wrote (its ``corpus.jsonl``), or a tree of such folders
  (:mod:`.trait_folders`).
Parquet, Arrow and ``datasets`` folders, globs and folders of files, and the fast JSONL path
live in :mod:`.readers` (:func:`.readers.batches.source_attempts` picks the reader of a file).
:mod:`.plan` validates a corpus whole in one streaming pass before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from traitlens.store.errors import InputError

from traitlens.pipeline.capture.errors import CorpusError  # (re-exported: where callers import it from)
from traitlens.pipeline.capture.readers.streams import open_bytes, stem
from traitlens.pipeline.capture.trait_folders import GENERATED, SIDES, trait_folders

# the text column when none is named, first found wins: names public contrastive sets use for
# the prompt (SST-2 / CoLA `sentence`; retrieval and red-teaming sets `query`)
TEXT_FIELDS = ("text", "prompt", "statement", "instruction", "question", "input", "sentence", "query")
LABEL_FIELDS = ("label", "answer_matching_behavior")
RESERVED = {"messages", "trait", "dataset", "split"}
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
POSITIVE = {"1", "+1", "pos", "positive", "true", "yes", "y", "t"}
NEGATIVE = {"-1", "neg", "negative", "false", "no", "n", "f"}
NEUTRAL = {"0", "neutral", "none", "unlabelled", "unlabeled", ""}


@dataclass
class PromptRecord:
    """One labelled prompt. ``text`` or ``messages`` (a chat) is set, never both."""

    prompt_id: str
    text: str | None
    messages: list[dict] | None
    dataset: str
    trait: str
    label: int
    split: str | None  # None: not given; the ingest's plan assigns it (:mod:`.splits`)
    source: str
    extra: dict = field(default_factory=dict)

    @property
    def has_assistant_turn(self) -> bool:
        """A chat with at least one non-empty assistant message (what ``assistant_mean`` pools)."""
        return self.messages is not None and any(m["role"] == "assistant" and m["content"].strip()
                                                 for m in self.messages)

    def as_row(self) -> dict:
        return {"prompt_id": self.prompt_id, "text": self.text,
                "messages": json.dumps(self.messages, ensure_ascii=False) if self.messages is not None else None,
                "dataset": self.dataset, "trait": self.trait, "label": self.label, "split": self.split,
                "source": self.source, "extra": json.dumps(self.extra, ensure_ascii=False, default=str)}


@dataclass
class ReadOptions:
    """What the CLI's corpus options say; ``None`` means detect from the data.

    ``limit``: read only the first N records; ``sample`` (with ``seed``): keep N of the records
    read, chosen by a keyed hash of each record (see :mod:`.plan`)."""

    text_column: str | None = None
    label_column: str | None = None
    messages_column: str | None = None
    trait: str | None = None
    label: str | None = None
    dataset: str | None = None
    split: str | None = None
    zero_is_negative: bool = False
    limit: int | None = None
    sample: int | None = None
    seed: int = 0

    # the spelling before 0.3 (CLI --text-field/--label-field, spec keys text_field/label_field)
    ALIASES = {"text_field": "text_column", "label_field": "label_column"}

    @classmethod
    def from_options(cls, options: dict) -> "ReadOptions":
        """From a workflow spec's corpus keys or keyword options, old spellings included."""
        out = {}
        for k, v in options.items():
            new = cls.ALIASES.get(k, k)
            if out.get(new) is not None and v is not None and out[new] != v:
                raise InputError(f"{new} is given twice, as {new!r} and as {k!r} (its older name), with different "
                                 f"values: keep {new!r}")
            if v is not None or new not in out:
                out[new] = v
        return cls(**out)


def prompt_id_for(text: str | None, messages: list[dict] | None) -> str:
    """Content hash (96 bits, hex) of the prompt itself, independent of labels and files."""
    payload = "t:" + text if messages is None else "m:" + json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def parse_label(value, path, line, field_name, zero_is_negative=False) -> int:
    """Map +1/-1, pos/neg, true/false, yes/no (any case, stripped) to +1/-1; 0/empty to 0."""
    if isinstance(value, bool):
        return 1 if value else -1
    key = str(value).strip().lower() if value is not None else ""
    if key in ("1.0",):
        key = "1"
    if key in ("-1.0",):
        key = "-1"
    if key in ("0", "0.0") and zero_is_negative:
        return -1
    if key in POSITIVE:
        return 1
    if key in NEGATIVE:
        return -1
    if key in NEUTRAL or key == "0.0":
        return 0
    raise CorpusError(path, line, field_name, f"unknown label value {value!r}",
                      "use +1/-1, pos/neg, true/false or yes/no; 0 or empty means unlabelled "
                      "(pass --zero-is-negative for 1/0 labels)")


def parse_split(value, path, line) -> str:
    key = str(value).strip().lower()
    if key not in SPLITS:
        raise CorpusError(path, line, "split", f"unknown split {value!r}", "use train, val or test")
    return SPLITS[key]


def _check_messages(messages, path, line) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise CorpusError(path, line, "messages", "must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise CorpusError(path, line, "messages", f"item {i} is not an object with string 'role' and 'content'")
    if not any(m["content"].strip() for m in messages):
        raise CorpusError(path, line, "messages", "every message is empty", "remove the line or give it text")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def record_from_object(obj, path: Path, line: int, opts: ReadOptions, default_name: str) -> PromptRecord:
    """Validate one decoded object and turn it into a :class:`PromptRecord`."""
    if not isinstance(obj, dict):
        raise CorpusError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    text, messages = None, None
    messages_key = opts.messages_column or "messages"
    if opts.text_column:
        if opts.text_column not in obj:
            raise CorpusError(path, line, opts.text_column, "missing", f"fields present: {sorted(obj)}")
        text_key = opts.text_column
    elif opts.messages_column:
        if obj.get(opts.messages_column) is None:
            raise CorpusError(path, line, opts.messages_column, "missing", f"fields present: {sorted(obj)}")
        text_key = messages_key
    elif "messages" in obj and obj["messages"] is not None:
        text_key = "messages"
    else:
        text_key = next((k for k in TEXT_FIELDS if k in obj), None)
        if text_key is None:
            raise CorpusError(path, line, None, f"no text field (looked for {', '.join(TEXT_FIELDS)}, messages)",
                              f"pass --text-column NAME or --messages-column NAME; fields present: {sorted(obj)}")
    if text_key == messages_key:
        messages = _check_messages(obj[messages_key], path, line)
    else:
        text = obj[text_key]
        if not isinstance(text, str):
            raise CorpusError(path, line, text_key, f"must be a string, got {type(text).__name__}")
        if not text.strip():
            raise CorpusError(path, line, text_key, "is empty", "remove the line or give it text")
    label_key = opts.label_column or next((k for k in LABEL_FIELDS if k in obj), None)
    if opts.label_column and opts.label_column not in obj and opts.label is None:
        raise CorpusError(path, line, opts.label_column, "missing", f"fields present: {sorted(obj)}")
    if label_key and label_key in obj:
        label = parse_label(obj[label_key], path, line, label_key, opts.zero_is_negative)
    elif opts.label is not None:
        label = parse_label(opts.label, path, line, "--label", opts.zero_is_negative)
    else:
        label = 0
    trait = str(obj["trait"]) if obj.get("trait") not in (None, "") else (opts.trait or default_name)
    dataset = str(obj["dataset"]) if obj.get("dataset") not in (None, "") else (opts.dataset or default_name)
    pid = prompt_id_for(text, messages)
    if obj.get("split") not in (None, ""):
        split = parse_split(obj["split"], path, line)
    elif opts.split:
        split = parse_split(opts.split, path, "--split")
    else:
        split = None  # stratified by label once the whole corpus is read (splits.py)
    used = {text_key, label_key, messages_key} | RESERVED
    extra = {k: v for k, v in obj.items() if k not in used}
    return PromptRecord(pid, text, messages, dataset, trait, label, split, f"{path}:{line}", extra)


def _decode_lines(path: Path):
    """Yield (line_number, text) one line at a time (a 10M-line corpus is never held whole),
    with a clear error on bad UTF-8."""
    with open_bytes(path) as f:  # (.gz and .zst decompress as they stream)
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield i, raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError as e:
                raise CorpusError(path, i, None, f"not valid UTF-8 (byte {e.start + 1} of the line)",
                                  "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def _read_jsonl(path, opts, name):
    for i, line in _decode_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(path, i, None, f"malformed JSON: {e.msg} at column {e.colno}") from None
        yield record_from_object(obj, path, i, opts, name)


def _read_json(path, opts, name):
    text = "\n".join(line for _, line in _decode_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(path, e.lineno, None, f"malformed JSON: {e.msg} at column {e.colno}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise CorpusError(path, 1, None, "expected a JSON array of objects (or an object holding one array)",
                              "for one object per line, name the file .jsonl")
        data = lists[0]
    if not isinstance(data, list):
        raise CorpusError(path, 1, None, "expected a JSON array of objects")
    # approximate line numbers: JSON arrays rarely keep one record per line, so report the index
    for i, obj in enumerate(data, start=1):
        try:
            yield record_from_object(obj, path, i, opts, name)
        except CorpusError as e:
            raise CorpusError(path, None, e.field, f"record #{i}: {str(e).split(': ', 1)[-1]}") from None


def _read_csv(path, opts, delimiter, name):
    # the csv module pulls lines as it needs them (a quoted field may span several), so the
    # file streams; reader.line_num counts the lines read, i.e. the record's last line
    reader = csv.DictReader((line + "\n" for _, line in _decode_lines(path)), delimiter=delimiter, strict=True)
    try:
        if not reader.fieldnames:
            raise CorpusError(path, 1, None, "empty file or no header row", "the first line must name the columns")
        for obj in reader:
            line = reader.line_num
            if None in obj:
                raise CorpusError(path, line, None, "more values than header columns", "quote fields holding commas")
            yield record_from_object(dict(obj), path, line, opts, name)
    except csv.Error as e:  # strict mode: an unterminated or stray quote is an error, not a merged row
        raise CorpusError(path, reader.line_num, None, f"malformed CSV: {e}",
                          'close every quoted field; double a quote inside one ("")') from None


def _read_txt(path, opts, label=None, trait=None, name=None):
    o = ReadOptions(**{**opts.__dict__, "label": label if label is not None else opts.label,
                       "trait": trait or opts.trait})
    for i, line in _decode_lines(path):
        if line.strip():
            yield record_from_object({"text": line}, path, i, o, name or stem(path))


def _read_folder(path, opts):
    found = trait_folders(path)
    if not found:
        raise CorpusError(path, None, None, "folder has no positive.txt / negative.txt, nor a generate folder's "
                          "corpus.jsonl (nor sub-folders with them)")
    for d, kind in found:
        if kind == "generated":  # its records name their trait, label and split
            yield from _read_jsonl(d / GENERATED, opts, d.name)
            continue
        for name, label in SIDES:
            if (d / name).exists():
                yield from _read_txt(d / name, ReadOptions(**{**opts.__dict__, "dataset": opts.dataset or d.name}),
                                     label=label, trait=opts.trait or d.name)


def read_lines(path: Path, kind: str, name: str, opts: ReadOptions):
    """The records of one file (or trait folder) read by Python a line at a time: ``kind`` is
    jsonl, json, csv, tsv, txt or traits (:mod:`.readers.sources`), ``name`` the default trait
    and dataset."""
    path = Path(path)
    if kind == "traits":
        yield from _read_folder(path, opts)
    elif kind == "jsonl":
        yield from _read_jsonl(path, opts, name)
    elif kind == "json":
        yield from _read_json(path, opts, name)
    elif kind in ("csv", "tsv"):
        yield from _read_csv(path, opts, "\t" if kind == "tsv" else ",", name)
    elif kind == "txt":
        yield from _read_txt(path, opts, name=name)
    else:
        raise ValueError(f"no line reader for {kind!r}")


def records_of(batch) -> list[PromptRecord]:
    """The records of a batch of the readers' columns (:data:`.readers.normalise.COLUMNS`)."""
    return [PromptRecord(r["prompt_id"], r["text"], json.loads(r["messages"]) if r["messages"] is not None else None,
                         r["dataset"], r["trait"], r["label"], r["split"], r["source"],
                         json.loads(r["extra"]) if r["extra"] else {})
            for r in batch.to_pylist()]
