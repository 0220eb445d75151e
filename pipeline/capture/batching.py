"""Batches by length: prompts of similar length share a batch, so little compute goes to padding."""

from __future__ import annotations


def length_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Split indices into batches of similar length, longest first.

    Each batch holds at most ``batch_size`` prompts and at most ``max_tokens`` padded tokens
    (its longest prompt x its size), so memory is bounded whatever the corpus holds. Longest
    first: if a batch is too big for the device, the first one says so.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or (max_tokens and longest * (len(cur) + 1) > max_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches
