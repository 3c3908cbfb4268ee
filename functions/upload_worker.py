"""The upload worker: a background thread that indexes upload objects.

Notifications (``POST /triggers/s3``) and the sweeper only enqueue keys; one worker thread per
process does the indexing, so a webhook is acknowledged at once and a process never runs two
Lance writers of its own at a time. Storage outages are retried with exponential backoff; the
sweeper is the safety net for anything a notification missed (and for crashes mid-ingest).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from datetime import timedelta

from core.errors import ServiceError, Unavailable
from core.uploads import UploadProcessor

log = logging.getLogger(__name__)


class UploadWorker:
    """A deduplicating queue of upload keys and the thread that processes them."""

    def __init__(self, processor: UploadProcessor, *, sweep_seconds: float = 0.0, max_backoff: float = 30.0) -> None:
        self.processor = processor
        self.sweep_seconds = sweep_seconds
        self.max_backoff = max_backoff
        self._queue: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._busy = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.processed = 0
        self.errors = 0

    def submit(self, keys: list[str]) -> int:
        """Queue keys (duplicates collapse); returns how many were new to the queue."""
        added = 0
        with self._cond:
            for key in keys:
                if key not in self._queue:
                    self._queue[key] = None
                    added += 1
            self._cond.notify_all()
        return added

    def sweep(self, stale_pending: timedelta = timedelta(minutes=2)) -> int:
        """Queue every upload key whose current ETag has no final record (and pending records
        older than ``stale_pending``: their process died)."""
        return self.submit(self.processor.due(stale_pending))

    def start(self) -> UploadWorker:
        if self._threads:
            return self
        self._threads.append(threading.Thread(target=self._run, name="upload-worker", daemon=True))
        if self.sweep_seconds > 0:
            self._threads.append(threading.Thread(target=self._sweep_loop, name="upload-sweeper", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the queue is empty and nothing is being processed (tests, CLIs)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def _sweep_loop(self) -> None:
        try:
            # At start, pending records are leftovers of a process that died mid-ingest.
            self.sweep(stale_pending=timedelta(0))
        except ServiceError as exc:
            log.warning("initial upload sweep failed: %s", exc)
        backoff = self.sweep_seconds
        while not self._stop.wait(backoff):
            try:
                self.sweep()
                backoff = self.sweep_seconds
            except ServiceError as exc:
                backoff = min(self.max_backoff, backoff * 2)
                log.warning("upload sweep failed (%s); next try in %.0fs", exc, backoff)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(1.0)
                if self._stop.is_set():
                    return
                key, _ = self._queue.popitem(last=False)
                self._busy = True
            try:
                self.processor.process(key)
                self.processed += 1
                backoff = 0.5
            except Unavailable as exc:
                # Storage is down: put the key back and wait; nothing is dropped.
                self.errors += 1
                log.warning("upload %s: storage unavailable (%s); retrying in %.1fs", key, exc, backoff)
                self.submit([key])
                self._stop.wait(backoff)
                backoff = min(self.max_backoff, backoff * 2)
            except Exception:  # the trigger loop must never die; the sweeper retries the key later
                self.errors += 1
                log.exception("upload %s: unexpected error", key)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
