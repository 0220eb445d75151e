"""Contrastive sets: which stored rows are positives and negatives of a trait, per split.

A set joins the ``prompts`` table (trait, label, split) with one group's committed ``rows``
(array row per prompt). Its fingerprint hashes the (prompt_id, label, split) triples used, so
a vector's provenance says exactly which rows made it, and a refresh can tell when it is stale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from traitlens.store import GroupKey, Store
from traitlens.store.vocabulary import MIN_PER_SPLIT, SPLIT_NAMES

from traitlens.pipeline.extract.methods import ExtractionError

MIN_PER_CLASS = MIN_PER_SPLIT  # of each label, in the training split and in the held-out one
MIN_BACKGROUND_HELD = 10  # held-out background prompts the specificity figure needs (a top decile of one)


@dataclass
class Background:
    """Unlabelled prompts beyond a trait's corpus (``extract --background``), in the set's group.

    Split by each prompt's stored split: those in the training split join the negatives of the
    methods that take them (``takes_background``); the rest are the held-out background that
    the out-of-corpus specificity figure ranks the held-out positives among. The trait's own
    rows are never part of it."""

    name: str  # what was given, for the provenance
    fingerprint: str  # hash of the (prompt_id, split) lines used
    train_rows: np.ndarray  # int64 [n_train] ascending array rows
    held_rows: np.ndarray  # int64 [n_held] ascending
    train_tokens: np.ndarray  # int [n_train] tokens the model saw
    held_tokens: np.ndarray  # int [n_held]

    def provenance(self) -> dict:
        return {"corpus": self.name, "fingerprint": self.fingerprint, "n_train": int(len(self.train_rows)),
                "n_held": int(len(self.held_rows))}


@dataclass
class ContrastiveSet:
    """Array rows and labels of one trait in one group. Rows are ascending within each split."""

    key: GroupKey
    trait: str
    train_rows: np.ndarray  # int64 [n_train]
    train_pos: np.ndarray  # bool [n_train]
    held_rows: np.ndarray  # int64 [n_held]
    held_pos: np.ndarray  # bool [n_held]
    held_split: str
    fingerprint: str
    where_sql: str | None = None
    # what is not the trait, per row in the same order (the nuisance floors read these):
    train_tokens: np.ndarray | None = None  # int [n_train] tokens the model saw
    held_tokens: np.ndarray | None = None  # int [n_held]
    train_datasets: np.ndarray | None = None  # int [n_train] codes into ``datasets``
    held_datasets: np.ndarray | None = None  # int [n_held]
    datasets: list[str] | None = None
    background: Background | None = None  # ``extract --background``; its hash is in ``fingerprint``

    @property
    def n_pos(self) -> int:
        return int(self.train_pos.sum())

    @property
    def n_neg(self) -> int:
        return int((~self.train_pos).sum())


def fingerprint(pids, labels, splits) -> str:
    """Hash of the sorted ``(prompt_id, label, split)`` lines of the rows a set uses (Arrow
    string arrays ``pids`` and ``splits``, integer ``labels``, of one length; prompt ids are
    unique within a set). Arrow kernels throughout: a million rows hash in well under a second."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pids = pa.chunked_array([pids]) if isinstance(pids, pa.Array) else pids
    order = pc.sort_indices(pids)
    pid = pc.cast(pc.take(pids, order).combine_chunks(), pa.large_string())  # 64-bit offsets: any size
    lab = pc.cast(pc.take(pa.array(np.asarray(labels, np.int64)), order), pa.large_string())
    spl = pc.cast(pc.take(splits, order), pa.large_string())
    sep = (pa.scalar("\t", pa.large_string()), pa.scalar("\n", pa.large_string()))
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(pid, lab, spl, sep[0]),
                                        pa.array([""] * len(pid), pa.large_string()), sep[1])
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    h = hashlib.sha256()
    if len(lines):
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset:lines.offset + len(lines) + 1]
        h.update(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])
    return h.hexdigest()[:16]


def too_few(trait: str, key: GroupKey, split: str, in_split: tuple[int, int], in_all: tuple[int, int],
            train_split: str, where_sql: str | None) -> str:
    """Why a set cannot be fitted: ``split`` holds fewer than :data:`MIN_PER_CLASS` of a label.
    ``in_split`` / ``in_all``: (positive, negative) rows in that split / in every split."""
    need = 2 * MIN_PER_CLASS
    head = (f"trait {trait!r} in {key.path}: split {split!r} holds {in_split[0]} positive and {in_split[1]} "
            f"negative rows; a fit needs at least {MIN_PER_CLASS} of each in {train_split!r} (to fit on) and in the "
            "held-out split (to choose among layers and methods and to measure AUROC)")
    selected = " that --where selects" if where_sql else ""
    if min(in_all) < need:
        short = " and ".join(f"{need - n} more {side}" for side, n in zip(("positive", "negative"), in_all) if n < need)
        return (f"{head}. The trait has {in_all[0]} positive and {in_all[1]} negative labelled rows{selected} in "
                f"all: at least {need} of each are needed ({MIN_PER_CLASS} for training, {MIN_PER_CLASS} held out), "
                f"and {3 * MIN_PER_SPLIT} of each per dataset give every split (train, val, test) {MIN_PER_SPLIT}. "
                f"Ingest {short} labelled prompt(s)" + (", or widen --where" if where_sql else ""))
    return (f"{head}. The trait has {in_all[0]} positive and {in_all[1]} negative labelled rows{selected} in all, "
            "enough, but its splits do not spread them: they were given by the corpus (a split column or --split), "
            "or assigned by a traitlens that split by prompt hash alone (before splits were stratified by label). "
            f"Re-ingest into a new --store (ingest now gives every split {MIN_PER_SPLIT} of each label), or give "
            f"the corpus a split column with {MIN_PER_CLASS} of each label in train and in val")


def contrastive_set(store: Store, key: GroupKey, trait: str, train_split: str = "train", held_split: str = "auto",
                    prompt_ids: set[str] | None = None, where_sql: str | None = None) -> ContrastiveSet:
    """Build the set; ``held_split='auto'`` uses val, else test. ``prompt_ids`` restricts it
    (the ids a SQL WHERE selected). Column operations throughout (Arrow and numpy): a store of
    a million prompts is read, joined and fingerprinted in about a second."""
    import pyarrow as pa
    import pyarrow.compute as pc

    prompts = store.table("prompts", columns=["prompt_id", "trait", "label", "split", "dataset"])
    traits = sorted(set(pc.unique(prompts["trait"]).to_pylist()))
    if trait not in traits:
        raise ExtractionError(f"trait {trait!r} is not in the store; traits: {', '.join(traits) or 'none'}")
    keep = pc.and_(pc.equal(prompts["trait"], trait), pc.not_equal(prompts["label"], 0))
    if prompt_ids is not None:
        keep = pc.and_(keep, pc.is_in(prompts["prompt_id"], value_set=pa.array(sorted(prompt_ids), pa.string())))
    mine = prompts.filter(keep)
    pids = mine["prompt_id"].combine_chunks().dictionary_encode()  # hashing, not sorting strings
    uniq, inverse = pids.dictionary, pids.indices.to_numpy().astype(np.int64)
    label = mine["label"].to_numpy().astype(np.int64)
    splits = mine["split"].combine_chunks().dictionary_encode()
    split_names, split_code = splits.dictionary.to_pylist(), splits.indices.to_numpy().astype(np.int64)
    ds = mine["dataset"].combine_chunks().dictionary_encode()
    ds_names, ds_code = ds.dictionary.to_pylist(), ds.indices.to_numpy().astype(np.int64)
    # one (label, split) per prompt: the last record wins, as it always has; two labels is an error
    lo = np.full(len(uniq), 2, np.int64)
    hi = np.full(len(uniq), -2, np.int64)
    np.minimum.at(lo, inverse, label)
    np.maximum.at(hi, inverse, label)
    bad = np.flatnonzero(lo != hi)
    if len(bad):
        raise ExtractionError(f"prompt {uniq[int(bad[0])]} has labels {int(hi[bad[0]]):+d} and {int(lo[bad[0]]):+d} "
                              f"for trait {trait!r} (two datasets disagree); fix the corpora")
    last = np.zeros(len(uniq), np.int64)
    np.maximum.at(last, inverse, np.arange(len(label)))
    u_label, u_split, u_ds = label[last], split_code[last], ds_code[last]  # dataset: of that same record
    rows = store.group_rows(key).select(["row", "prompt_id", "token_count"])
    if rows.num_rows == 0:
        raise ExtractionError(f"nothing is stored for {key.path}; run `traitlens ingest` first")
    store.check_intact(key, rows["row"])  # a lost rows part or array: refuse, never fit a subset in silence
    at = pc.index_in(rows["prompt_id"], value_set=uniq)
    found = pc.is_valid(at)
    idx = pc.filter(at, found).to_numpy().astype(np.int64)
    row_no = pc.filter(rows["row"], found).to_numpy().astype(np.int64)
    r_pos, r_split, r_ds = u_label[idx] > 0, u_split[idx], u_ds[idx]
    r_tok = pc.filter(rows["token_count"], found).to_numpy(zero_copy_only=False).astype(np.int64)
    used_splits = pc.take(pa.array(split_names, pa.string()), pa.array(r_split))
    fp = fingerprint(pc.filter(rows["prompt_id"], found), u_label[idx], used_splits)
    by_split = {name: tuple(a[r_split == code] for a in (row_no, r_pos, r_tok, r_ds))
                for code, name in enumerate(split_names)}
    empty = (np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64))
    for name in SPLIT_NAMES:
        by_split.setdefault(name, empty)
    if held_split == "auto":
        held_split = "val" if len(by_split["val"][0]) else "test"
    if held_split == train_split:
        raise ExtractionError("the held-out split must differ from the training split")

    def arrays(split):  # (rows, pos, tokens, dataset codes), ascending array rows
        r, p, t, d = by_split.get(split, empty)
        order = np.argsort(r, kind="stable")
        return r[order], p[order].astype(bool), t[order], d[order]

    tr, trp, tr_tok, tr_ds = arrays(train_split)
    he, hep, he_tok, he_ds = arrays(held_split)
    for name, r_, p_ in ((train_split, tr, trp), (held_split, he, hep)):
        n_pos, n_neg = int(p_.sum()), int((~p_).sum())
        if n_pos < MIN_PER_CLASS or n_neg < MIN_PER_CLASS:
            raise ExtractionError(too_few(trait, key, name, (n_pos, n_neg), (int(r_pos.sum()), int((~r_pos).sum())),
                                          train_split, where_sql))
    return ContrastiveSet(key, trait, tr, trp, he, hep, held_split, fp, where_sql, tr_tok, he_tok, tr_ds, he_ds,
                          ds_names)


def with_background(store: Store, cset: ContrastiveSet, prompt_ids: set[str], name: str,
                    train_split: str = "train") -> ContrastiveSet:
    """``cset`` with the background ``prompt_ids`` (see :class:`Background`), its fingerprint
    extended by theirs (so a vector fitted with a background never shares an id with one
    fitted without). Every prompt must be captured in the set's group (an
    :class:`~.methods.ExtractionError` says how many are not, and what to run)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not prompt_ids:
        raise ExtractionError(f"--background {name}: no prompts found in it")
    asked = pa.array(sorted(prompt_ids), pa.string())
    rows = store.group_rows(cset.key, ["row", "prompt_id", "token_count"])
    inside = pc.is_in(rows["prompt_id"], value_set=asked)
    rows = rows.filter(inside)
    missing = len(asked) - rows.num_rows
    if missing:
        raise ExtractionError(f"--background {name}: {missing} of its {len(asked)} prompts are not captured in "
                              f"{cset.key.path}; ingest it into this group first (`traitlens ingest {name} --model "
                              f"MODEL --pooling {cset.key.pooling} --site {cset.key.site} --layers ...` with the "
                              "trait's model and layers)")
    own = np.concatenate([cset.train_rows, cset.held_rows])
    row_no = rows["row"].to_numpy().astype(np.int64)
    keep = ~np.isin(row_no, own)  # a prompt of the trait's own corpus is never background
    prompts = store.table("prompts", columns=["prompt_id", "split"])
    prompts = prompts.filter(pc.is_in(prompts["prompt_id"], value_set=asked))
    split_of = dict(zip(prompts["prompt_id"].to_pylist(), prompts["split"].to_pylist()))  # the last record wins
    pids = rows["prompt_id"].to_pylist()
    is_train = np.array([split_of.get(p) == train_split for p in pids], bool)
    tokens = rows["token_count"].to_numpy(zero_copy_only=False).astype(np.int64)
    splits = pa.array(["train" if t else "held" for t in is_train[keep]], pa.string())
    fp = fingerprint(rows["prompt_id"].filter(pa.array(keep)), np.zeros(int(keep.sum()), np.int64), splits)
    tr, he = keep & is_train, keep & ~is_train
    if int(he.sum()) < MIN_BACKGROUND_HELD:
        raise ExtractionError(f"--background {name}: {int(he.sum())} of its prompts are outside the {train_split!r} "
                              f"split; the specificity figure needs at least {MIN_BACKGROUND_HELD} held-out "
                              "background prompts (give a larger corpus, or ingest it with --split test)")
    bg = Background(name, fp, row_no[tr], row_no[he], tokens[tr], tokens[he])
    combined = hashlib.sha256(f"{cset.fingerprint}+background:{fp}".encode()).hexdigest()[:16]
    return replace(cset, background=bg, fingerprint=combined)
