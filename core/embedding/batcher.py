"""Query encodes shared by concurrent requests: micro-batches.

A query runs the text towers on a handful of tokens, where a batch of several texts costs little
more than one (the weights are read once per batch). Requests that arrive while an encode runs
wait for the next one and are encoded together; an idle process encodes a lone query at once
(a batch of one, no added wait). Identical texts in flight share one encode (identical whole
searches share one run: :class:`core.search.SingleFlight`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from PIL import Image

from core.embedding import Embedder
from core.types import Vector

T = TypeVar("T")
R = TypeVar("R")
IDLE_EXIT_SECONDS = 60.0  # a batcher's thread ends after this long without work


class _Slot(Generic[T, R]):
    __slots__ = ("future", "item", "key")

    def __init__(self, item: T, key: Hashable | None) -> None:
        self.item = item
        self.key = key
        self.future: Future[R] = Future()
        # Running from the start: a waiter that gives up (an asyncio task cancelled when its
        # client hung up) cannot cancel an encode that other callers may share.
        self.future.set_running_or_notify_cancel()


class MicroBatcher(Generic[T, R]):
    """Runs ``encode`` (items -> one result each) for the items of concurrent callers in batches
    of at most ``max_batch``, one batch at a time, in a thread of its own. A caller's item joins
    the next batch; a caller whose ``key`` is already waiting or being encoded shares that result."""

    def __init__(self, encode: Callable[[Sequence[T]], Sequence[R]], max_batch: int = 8, name: str = "encode") -> None:
        self.encode = encode
        self.max_batch = max(1, max_batch)
        self.batch_sizes: Counter[int] = Counter()
        """How many batches of each size ran (``/metrics`` shows them as a histogram)."""
        self.shared = 0  # callers that joined an identical item in flight
        self._pending: list[_Slot[T, R]] = []
        self._by_key: dict[Hashable, _Slot[T, R]] = {}
        self._cond = threading.Condition()
        self._name = name
        self._thread: threading.Thread | None = None  # started by the first call

    def __call__(self, item: T, key: Hashable | None = None) -> R:
        """``item``'s result, encoded in the next batch (raises what ``encode`` raised)."""
        return self.submit(item, key).result()

    def submit(self, item: T, key: Hashable | None = None) -> Future[R]:
        """``item``'s result to come, from the next batch: an event loop awaits it
        (``asyncio.wrap_future``) without holding a thread."""
        with self._cond:
            slot = self._by_key.get(key) if key is not None else None
            if slot is not None:
                self.shared += 1
            else:
                slot = _Slot[T, R](item, key)
                self._pending.append(slot)
                if key is not None:
                    self._by_key[key] = slot
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"batch-{self._name}", daemon=True)
                    self._thread.start()
                self._cond.notify()
        return slot.future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    if not self._cond.wait(IDLE_EXIT_SECONDS) and not self._pending:
                        self._thread = None  # idle: the next call starts a new one
                        return
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            rows: Sequence[R] = ()
            error: BaseException | None = None
            try:
                rows = self.encode([s.item for s in batch])
                if len(rows) != len(batch):
                    raise ValueError(f"{self._name}: {len(rows)} results for a batch of {len(batch)}")
            except BaseException as exc:  # every caller of the batch gets it; the thread goes on
                error = exc
            with self._cond:
                self.batch_sizes[len(batch)] += 1
                for s in batch:
                    if s.key is not None and self._by_key.get(s.key) is s:
                        del self._by_key[s.key]
            for i, s in enumerate(batch):
                if error is not None:
                    s.future.set_exception(error)
                else:
                    s.future.set_result(rows[i])


TextVectors = tuple[Vector, Vector | None]  # (sentence vector, CLIP text vector or None)


class QueryEncoder:
    """The query side of a process's encoders, shared by every request of the process. One
    batcher runs the text towers of each batch side by side: CLIP's (when a query of the batch
    needs it) in a thread of its own while MiniLM runs in the batcher's, their ONNX sessions
    splitting the cores (:func:`core.embedding.onnx_text.query_threads`): at a query's shape one
    thread per tower does more per core than two threads taking turns (``bench/README.md``, the
    throughput section). CLIP's image tower has a batcher of its own. A text is its own key:
    identical concurrent queries share an encode."""

    def __init__(self, embedder: Embedder, max_batch: int = 8) -> None:
        self.embedder = embedder
        self._clip_text = ThreadPoolExecutor(1, thread_name_prefix="clip-text")
        self.texts: MicroBatcher[tuple[str, bool], TextVectors] = MicroBatcher(self._encode_texts, max_batch, "text")
        self.clip_image: MicroBatcher[Image.Image, Vector] = MicroBatcher(self._encode_images, max_batch, "clip-image")

    def text(self, text: str, with_clip: bool) -> TextVectors:
        return self.submit_text(text, with_clip).result()

    def submit_text(self, text: str, with_clip: bool) -> Future[TextVectors]:
        """:meth:`text` to come: an event loop awaits it without a thread of its own."""
        return self.texts.submit((text, with_clip), key=(text, with_clip))

    def _encode_texts(self, items: Sequence[tuple[str, bool]]) -> list[TextVectors]:
        texts = [t for t, _ in items]
        need = [i for i, (_, with_clip) in enumerate(items) if with_clip]
        pending = self._clip_text.submit(self.embedder.clip.embed_texts, [texts[i] for i in need]) if need else None
        sentence = self.embedder.text.embed_texts(texts)
        clip = pending.result() if pending is not None else None
        out: list[TextVectors] = [(sentence[i], None) for i in range(len(items))]
        for j, i in enumerate(need):
            assert clip is not None
            out[i] = (sentence[i], clip[j])
        return out

    def _encode_images(self, images: Sequence[Image.Image]) -> list[Vector]:
        return list(self.embedder.clip.embed_images(images))

    def batchers(self) -> dict[str, MicroBatcher[Any, Any]]:
        return {"text": self.texts, "clip_image": self.clip_image}
