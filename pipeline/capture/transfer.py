"""Pooled rows off the device: one copy per batch, into reused host buffers, waited for by the writer.

Capture pools on the device, so what leaves it per batch is small (``points x poolings x B x d``
float32, plus the token rows of ``tokens`` pooling). :func:`to_host` packs all of it into one flat
tensor and copies that once into a host buffer: page-locked (pinned) on CUDA, where the copy is
``non_blocking`` and a CUDA event marks its end, so the model thread goes on to the next batch
without waiting for it. :meth:`InFlight.result`, called on the writer thread, waits for that
event, copies the rows out (one ``memcpy``) into a :class:`~traitlens.store.PendingBatch` and hands
the buffer back for a later batch. On CPU the same path runs (an ordinary buffer, no event).

Buffers are reused, not bounded here: the writer thread's queue bounds how many batches are in
flight (:mod:`.writer_thread`), so in steady state the same few buffers cycle and host memory
stays flat. A batch larger than every free buffer gets a new one, 1.5x what it needs, so growth
happens a few times per run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from traitlens.store import PendingBatch

KEEP_BUFFERS = 4  # free buffers kept for reuse; more would only hold memory


class HostBuffers:
    """Reusable float32 host buffers, pinned when the batches come from a CUDA device."""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()  # taken on the model thread, given back on the writer thread

    def take(self, n: int) -> torch.Tensor:
        """A buffer of at least ``n`` values: the smallest free one that fits, else a new one."""
        with self._lock:  # (by position: == on tensors compares values)
            fits = [i for i, b in enumerate(self._free) if b.numel() >= n]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
        return torch.empty(max(n, 1) * 3 // 2 + 1, dtype=torch.float32, pin_memory=self.pinned)

    def give(self, buf: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buf)
            if len(self._free) > KEEP_BUFFERS:
                self._free.pop(min(range(len(self._free)), key=lambda i: self._free[i].numel()))


@dataclass
class Layout:
    """Where each pooled array sits in a batch's flat buffer: ``(site, pooling), layer, shape``."""

    entries: list[tuple[tuple[str, str], int, tuple[int, ...]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for _, _, shape in self.entries)


@dataclass
class InFlight:
    """One captured batch whose pooled rows are on their way to the host.

    ``meta`` holds the host-side fields of the :class:`PendingBatch` (prompt ids, token counts,
    truncation, responses, token ids); the pooled rows are ``buffer[:layout.size]`` once
    ``event`` has completed."""

    meta: dict
    layout: Layout
    buffer: torch.Tensor | None
    event: object | None  # torch.cuda.Event, or None where the copy was synchronous
    buffers: HostBuffers
    _result: PendingBatch | None = None
    written = False  # (a batch a Dask worker wrote itself is a PendingBatch with written=True)

    @property
    def token_counts(self) -> np.ndarray:
        return self.meta["token_counts"]

    def result(self) -> PendingBatch:
        """The batch on the host (waits for its copy; gives the buffer back). Idempotent."""
        if self._result is None:
            if self.event is not None:
                self.event.synchronize()
            flat = self.buffer[: self.layout.size].numpy().copy()  # out of the reused buffer
            self.release()
            pooled: dict[tuple[str, str], dict[int, np.ndarray]] = {}
            at = 0
            for key, layer, shape in self.layout.entries:
                n = int(np.prod(shape))
                pooled.setdefault(key, {})[layer] = flat[at:at + n].reshape(shape)
                at += n
            self._result = PendingBatch(pooled=pooled, **self.meta)
        return self._result

    def release(self) -> None:
        """Give the buffer back without reading it (a batch that will not be written)."""
        if self.buffer is not None:
            if self.event is not None:
                self.event.synchronize()  # the copy must land before anyone else writes there
            self.buffers.give(self.buffer)
            self.buffer = None


def to_host(parts: list[torch.Tensor], buffers: HostBuffers) -> tuple[torch.Tensor, object | None]:
    """Copy ``parts`` (pooled tensors, any shapes, on one or several devices) into one host
    buffer with a single device-to-host copy; returns ``(buffer, event)``. The parts are
    gathered on the first one's device (a device map spreads them); the event (CUDA only)
    completes when the copy has landed."""
    dev = parts[0].device
    flat = torch.cat([p.reshape(-1).to(dev, torch.float32, non_blocking=True) for p in parts])
    buf = buffers.take(flat.numel())
    if dev.type == "cuda":
        buf[: flat.numel()].copy_(flat, non_blocking=buffers.pinned)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(dev))
        return buf, event
    buf[: flat.numel()].copy_(flat)
    return buf, None
