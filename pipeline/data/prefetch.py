"""Micro batches read from Arrow, masked and packed while the current one computes.

`BatchStream` owns the run's sampler and collator while it is open: a daemon thread calls `sampler.next_batch()`, reads
the rows, masks and packs them (`collator(rows)`), pins the tensors when the run is on CUDA (so the trainer's copy
with `non_blocking=True` is asynchronous) and queues up to `depth` batches. Each batch carries the sampler and
masking-generator states right after it was made; `close()` stops the thread and rewinds sampler and collator to
the state after the last batch handed out, so a checkpoint holds the batches consumed, not those prefetched, and a
resumed run (prefetch on or off) continues with exactly the next batch.

Caution:
- A thread, not DataLoader workers: the sampler and masking states stay in this process (exact resume without
  replaying workers). Reading and masking are partly Python under the GIL; they overlap the step's device work
  (the main thread waits in CUDA / DeepSpeed calls), not other Python work.
- `depth=0` makes every batch in the caller (no thread), the reference of tests/pipeline/test_prefetch.py.
- Only the sampler's `next_batch() / state_dict() / load_state_dict()` are used.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from runtime.devices import pin as pin_batch


@dataclass
class MicroBatch:
    batch: dict  # pipeline.data.collate.pack's packed batch (host tensors, pinned with pin=True)
    counts: torch.Tensor  # (2,) float64 on the host: tokens in the packed stream, pairs
    sampler_state: dict  # sampler.state_dict() right after this batch
    collator_state: dict  # collator.state_dict() right after this batch (masking generator)


@dataclass
class _Failure:
    error: BaseException


class BatchStream:
    """Micro batches in the sampler's order, made `depth` ahead in a background thread (0: in the caller)."""

    def __init__(self, sampler, collator, read_rows: Callable[[object], list[dict]], depth: int = 2, pin=False):
        self.sampler, self.collator, self.read_rows, self.pin = sampler, collator, read_rows, pin
        self.consumed = (_snapshot(sampler), copy.deepcopy(collator.state_dict()))
        self._queue: queue.Queue | None = queue.Queue(maxsize=depth) if depth > 0 else None
        self._stop = threading.Event()
        self._thread = None
        if self._queue is not None:
            self._thread = threading.Thread(target=self._run, name="mexma-prefetch", daemon=True)
            self._thread.start()

    @property
    def epoch(self) -> int | None:
        """Epoch of the last batch handed out."""
        return self.consumed[0].get("epoch")

    def make(self) -> MicroBatch:
        idx = self.sampler.next_batch()
        batch = self.collator(self.read_rows(idx))
        counts = torch.tensor([batch["input_ids"].numel(), batch["n_pairs"]], dtype=torch.float64)
        if self.pin:
            batch, counts = pin_batch(batch), counts.pin_memory()
        return MicroBatch(batch, counts, _snapshot(self.sampler), copy.deepcopy(self.collator.state_dict()))

    def next(self) -> MicroBatch:
        """The next micro batch; an error raised while making it (e.g. DataError) is raised here."""
        item = self.make() if self._queue is None else self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        self.consumed = (item.sampler_state, item.collator_state)
        return item

    def close(self) -> None:
        """Stop the thread (queued batches are dropped) and rewind sampler and collator to the consumed state."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sampler.load_state_dict(self.consumed[0])
        self.collator.load_state_dict(self.consumed[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.make()
            except Exception as e:  # handed to the consumer, which raises it in the training loop
                item = _Failure(e)
            if not self._put(item) or isinstance(item, _Failure):
                return

    def _put(self, item) -> bool:
        """Queue `item`, waiting for room; False when asked to stop meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


def _snapshot(sampler) -> dict:
    return copy.deepcopy(sampler.state_dict())
