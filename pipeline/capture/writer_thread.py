"""The writer thread: captured batches are committed while the model runs the next ones.

The model thread hands each batch over with :meth:`WriterThread.put` and goes on; one thread
takes the batches in order, waits for each one's rows to reach the host (:mod:`.transfer`),
and gives it to the store's :class:`~traitlens.store.store.CommitWriter` (float16 conversion,
Zarr chunk compression and writes, the Parquet rows part). The queue holds at most ``depth``
batches (1: double buffering): when the disk is slower than the model, ``put`` waits, so host
memory stays flat whatever the corpus.

The thread never outlives the ingest and never hides a failure:

- an error on the thread (a full disk, a failed commit) is re-raised in the model thread by the
  next ``put`` or by the end of the ``with`` block; the batches after it are dropped unwritten
  (what was committed stays committed; nothing is written twice);
- Ctrl-C (or SIGTERM, raised as ``KeyboardInterrupt``) reaches the model thread, as does any
  failure there (a prompt too long for the device); leaving the block then lets the thread
  finish the complete batches already handed over and commits them (a second Ctrl-C drops
  them), joins it, and lets the interrupt or error go on;
- after an error on the writer thread itself nothing more is written: the thread is joined and
  the error raised;
- the thread is a daemon, so even a process that exits without leaving the block is not held.

``threaded=False`` runs the same steps inline, in the model thread: the rows are identical
(tested), only the overlap is gone.
"""

from __future__ import annotations

import queue
import threading

from traitlens.store import PendingBatch

from traitlens.pipeline.capture.transfer import InFlight

_STOP = object()
_POLL_S = 0.2  # how often a waiting model thread looks for an error on the writer thread


class WriterThread:
    """``with WriterThread(writer, 60.0) as w: w.put(batch) ...``: batches committed in order."""

    def __init__(self, writer, commit_seconds: float, threaded: bool = True, depth: int = 1):
        self.writer, self.commit_seconds = writer, commit_seconds
        self.error: BaseException | None = None
        self._drop = False  # set: the thread gives back what is queued without writing it
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = (threading.Thread(target=self._run, name="traitlens-writer", daemon=True)
                        if threaded else None)

    def __enter__(self) -> "WriterThread":
        if self._thread is not None:
            self._thread.start()
        return self

    def put(self, batch: PendingBatch | InFlight) -> None:
        """Hand a captured batch over (waits while the queue is full); raises the writer's error."""
        self._raise_error()
        if self._thread is None:
            self._write(batch)
            return
        self._put_polling(batch, lambda: self._raise_error() is None)  # raises the writer's error while waiting

    def _put_polling(self, item, still_useful) -> bool:
        """Queue ``item``, waiting while the queue is full; every ``_POLL_S`` asks ``still_useful()``
        (which may raise instead) and gives up on False. True when ``item`` was queued."""
        while True:
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if not still_useful():
                    return False

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _write(self, batch) -> None:
        host = batch.result() if isinstance(batch, InFlight) else batch
        self.writer.add(host, self.commit_seconds)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            if self.error is not None or self._drop:
                if isinstance(batch, InFlight):
                    batch.release()
                continue
            try:
                self._write(batch)
            except BaseException as e:  # surfaces in the model thread (put, or leaving the block)
                self.error = e

    def _stop_and_join(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        if not self._put_polling(_STOP, self._thread.is_alive):  # a thread that ended takes no stop
            return
        while self._thread.is_alive():
            self._thread.join(_POLL_S)

    def _finish(self) -> None:
        """Write everything handed over, commit the rest, join; raise the writer's error."""
        try:
            self._stop_and_join()
        except KeyboardInterrupt:  # a second Ctrl-C: drop what is queued, but still join
            self._drop = True
            self._stop_and_join()
            raise
        self._raise_error()
        self.writer.commit()

    def __exit__(self, kind, exc, tb) -> bool:
        if self.error is not None:  # the writer failed: write nothing more
            self._drop = True
            self._stop_and_join()
            if kind is None:
                raise self.error
            return False
        self._finish()  # complete batches already captured are worth keeping, on an interrupt or error too
        return False
