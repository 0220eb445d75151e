"""Which split a prompt is in (train, val, test): stratified by label, stable as a corpus grows.

The rule, for each record an ingest keeps:

1. a split the corpus gives (its ``split`` field, or ``--split``) is kept as given;
2. a prompt the store holds already (the same prompt_id, dataset and trait) keeps its stored
   split: adding prompts never moves one;
3. every other prompt has a hash point ``u`` in [0, 1) (:func:`hash_point`, of the prompt alone)
   and a stratum, its (trait, dataset, label). A stratum's new prompts, ranked by ``u``, are cut
   into three runs, train < val < test (:func:`cuts`): at the plain thresholds (``u < 0.8``
   train, ``u < 0.9`` val, the rest test: what every release did before this rule), unless a
   split of a labelled stratum would then hold fewer than :data:`MIN_PER_SPLIT` prompts,
   counting those it holds already (stored, or placed by the corpus). Then the cuts move just
   far enough to give it that many: train first, then val, then test. Unlabelled prompts (label
   0) are cut at the plain thresholds.

So every split of a stratum of at least 3 x MIN_PER_SPLIT = 6 prompts holds MIN_PER_SPLIT or
more of them (a stratum of 5 gets 2, 2 and 1; one of 4, 2, 2 and 0), and a large stratum is cut
exactly at the plain thresholds (it has far more than the minimum at each). The result depends
on the set of prompts, never on the order of the corpus's lines; it does depend on what the
store holds, so a corpus ingested in two halves may split otherwise than the same corpus at
once (both satisfy the rule). An ingest interrupted after writing some of its prompts resumes
to the same splits as one never interrupted (tests/test_splits.py).

The rule is written once here, in Python: :func:`assign_splits` applies it to records in memory
(the activation-cache import), and the ingest's plan (:mod:`.plan`) computes the hash points
(:data:`POINT_SQL`), counts and ranks a corpus of any length in DuckDB and asks :func:`cuts` where
to cut each stratum; tests hold the two equal.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import Counter, defaultdict

from traitlens.store.vocabulary import MIN_PER_SPLIT, SPLIT_NAMES

PLAIN_CUTS = (0.8, 0.9)  # hash points below 0.8: train; below 0.9: val; the rest: test


def hash_point(prompt_id: str) -> float:
    """The prompt's place in [0, 1): the first 32 bits of sha256("split:" + prompt_id)."""
    return int(hashlib.sha256(("split:" + prompt_id).encode()).hexdigest()[:8], 16) / 2**32


# hash_point in DuckDB, of a column ``prompt_id``: the same 32 bits, the same (exact) division
POINT_SQL = "CAST(('0x' || substr(sha256('split:' || prompt_id), 1, 8)) AS UBIGINT) / 4294967296.0"


def hash_split(prompt_id: str) -> str:
    """The split the plain thresholds give a prompt (its stratum large enough for no quota)."""
    u = hash_point(prompt_id)
    return "train" if u < PLAIN_CUTS[0] else "val" if u < PLAIN_CUTS[1] else "test"


def cuts(n: int, below_val: int, below_test: int, held=(0, 0, 0), minimum: int = MIN_PER_SPLIT) -> tuple[int, int]:
    """Where a stratum's ``n`` new prompts, ranked by hash point, are cut: ranks below ``i`` go to
    train, below ``j`` to val, the rest to test. ``below_val`` / ``below_test``: how many of them
    have ``u`` under the plain cuts; ``held``: the stratum's prompts already in train, val and test.
    Each split is owed what it lacks of ``minimum`` (in the order train, val, test, while new
    prompts last); the plain cuts move only as far as that needs."""
    owed, left = [], n
    for h in held:
        owed.append(min(max(0, minimum - h), left))
        left -= owed[-1]
    to_train, to_val, to_test = owed
    i = min(max(below_val, to_train), n - to_val - to_test)
    j = min(max(below_test, i + to_val), n - to_test)
    return i, j


def assign_splits(records, stored: dict | None = None) -> list[str]:
    """The split of each of ``records`` (:class:`.corpus.PromptRecord`, ``split`` None where the
    corpus gave none) by the module's rule. ``stored``: ``{(prompt_id, dataset, trait): (label,
    split)}``, the newest record of each key the store holds. The first record of a key decides;
    its repeats get the same split."""
    stored = stored or {}
    first: dict[tuple, object] = {}
    for r in records:
        first.setdefault((r.prompt_id, r.dataset, r.trait), r)
    fate: dict[tuple, str | None] = {}
    held: Counter = Counter()  # (trait, dataset, label, split) -> prompts placed already
    for k, r in first.items():
        fate[k] = r.split or (stored[k][1] if k in stored else None)
        if fate[k] is not None:
            held[(r.trait, r.dataset, r.label, fate[k])] += 1
    for k, (label, split) in stored.items():
        if k not in first and split is not None:
            held[(k[2], k[1], label, split)] += 1
    new = defaultdict(list)
    for k, r in first.items():
        if fate[k] is None:
            new[(r.trait, r.dataset, r.label)].append((hash_point(r.prompt_id), r.prompt_id, k))
    for stratum, items in new.items():
        items.sort()
        points = [u for u, _, _ in items]
        i, j = cuts(len(items), bisect_left(points, PLAIN_CUTS[0]), bisect_left(points, PLAIN_CUTS[1]),
                    [held[(*stratum, s)] for s in SPLIT_NAMES], MIN_PER_SPLIT if stratum[2] != 0 else 0)
        for rank, (_, _, k) in enumerate(items):
            fate[k] = SPLIT_NAMES[0 if rank < i else 1 if rank < j else 2]
    return [fate[(r.prompt_id, r.dataset, r.trait)] for r in records]
