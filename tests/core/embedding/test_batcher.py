"""Query encodes shared by concurrent requests (core/embedding/batcher.py) and single-flight
searches, with an encoder the test holds back to make the batches deterministic."""

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from core.embedding import Matrix
from core.embedding.batcher import MicroBatcher
from core.search import SingleFlight


class Gated:
    """An encoder whose first call waits until the test opens the gate; it records each batch."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[str]] = []
        self.fail_on: str | None = None

    def __call__(self, texts: Sequence[str]) -> Matrix:
        self.batches.append(list(texts))
        self.started.set()
        self.gate.wait(10)
        if self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on}")
        return np.array([[float(len(t)), float(ord(t[0]))] for t in texts], dtype=np.float32)


def call_all(batcher: MicroBatcher[str, Any], items: list[tuple[str, str | None]]) -> list[object]:
    out: list[object] = [None] * len(items)

    def one(i: int, text: str, key: str | None) -> None:
        try:
            out[i] = batcher(text, key=key)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i, t, k)) for i, (t, k) in enumerate(items)]
    for t in threads:
        t.start()
    return [threads, out]  # type: ignore[list-item]


def wait_pending(batcher: MicroBatcher[str, Any], n: int) -> None:
    deadline = time.monotonic() + 10
    while len(batcher._pending) < n:
        assert time.monotonic() < deadline, "callers did not queue"
        time.sleep(0.005)


def test_a_lone_query_is_a_batch_of_one_and_exact() -> None:
    enc = Gated()
    enc.gate.set()
    b = MicroBatcher(enc, max_batch=8)
    assert b("mug").tolist() == [3.0, float(ord("m"))]
    assert enc.batches == [["mug"]] and b.batch_sizes == {1: 1}


def test_queries_arriving_during_an_encode_go_together_in_the_next_batch() -> None:
    enc = Gated()
    b = MicroBatcher(enc, max_batch=4)
    first_threads, _ = call_all(b, [("first", None)])
    assert enc.started.wait(10)
    threads, out = call_all(b, [(f"q{i}" + "x" * i, None) for i in range(6)])
    wait_pending(b, 6)
    enc.gate.set()
    for t in [*first_threads, *threads]:
        t.join(10)
    assert [len(x) for x in enc.batches] == [1, 4, 2]  # at most max_batch, in arrival order
    assert b.batch_sizes == {1: 1, 4: 1, 2: 1}
    for i, row in enumerate(out):
        assert row.tolist() == [float(2 + i), float(ord("q"))]  # each caller gets its own row


def test_identical_queries_in_flight_share_one_encode() -> None:
    enc = Gated()
    b = MicroBatcher(enc, max_batch=16)
    first_threads, _ = call_all(b, [("warm", None)])
    assert enc.started.wait(10)
    threads, out = call_all(b, [("red shoes", "red shoes")] * 5 + [("blue", "blue")])
    wait_pending(b, 2)
    time.sleep(0.05)  # the other four have joined the queued "red shoes"
    enc.gate.set()
    for t in [*first_threads, *threads]:
        t.join(10)
    assert enc.batches[1] == ["red shoes", "blue"] and b.shared == 4
    assert all(np.array_equal(r, out[0]) for r in out[:5])


def test_an_encode_error_reaches_every_caller_of_its_batch_only() -> None:
    enc = Gated()
    enc.fail_on = "bad"
    b = MicroBatcher(enc, max_batch=8)
    first_threads, _ = call_all(b, [("warm", None)])
    assert enc.started.wait(10)
    threads, out = call_all(b, [("bad", None), ("good", None)])
    wait_pending(b, 2)
    enc.gate.set()
    for t in [*first_threads, *threads]:
        t.join(10)
    assert all(isinstance(r, RuntimeError) for r in out)
    enc.fail_on = None
    assert b("after").tolist() == [5.0, float(ord("a"))]  # the batcher goes on


def test_an_event_loop_awaits_an_encode_and_a_caller_giving_up_cancels_nobody_elses() -> None:
    enc = Gated()
    b = MicroBatcher(enc, max_batch=8)
    first_threads, _ = call_all(b, [("warm", None)])
    assert enc.started.wait(10)

    async def scenario() -> tuple[object, object, object]:
        impatient = asyncio.ensure_future(asyncio.wrap_future(b.submit("red", key="red")))
        patient = asyncio.ensure_future(asyncio.wrap_future(b.submit("red", key="red")))
        other = asyncio.ensure_future(asyncio.wrap_future(b.submit("blue", key="blue")))
        await asyncio.sleep(0.01)
        impatient.cancel()  # its client hung up while the encode was queued
        await asyncio.sleep(0.01)
        enc.gate.set()
        return await patient, await other, await asyncio.gather(impatient, return_exceptions=True)

    patient, other, impatient = asyncio.run(asyncio.wait_for(scenario(), 10))
    for t in first_threads:
        t.join(10)
    assert enc.batches[1] == ["red", "blue"] and b.shared == 1
    assert patient.tolist() == [3.0, float(ord("r"))] and other.tolist() == [4.0, float(ord("b"))]
    assert isinstance(impatient[0], asyncio.CancelledError)
    assert b("red", key="red").tolist() == [3.0, float(ord("r"))]  # the batcher goes on


def test_single_flight_runs_identical_concurrent_searches_once() -> None:
    flights = SingleFlight()
    gate, runs = threading.Event(), []

    def slow() -> list:  # type: ignore[type-arg]
        runs.append(1)
        gate.wait(10)
        return ["hit"]

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(flights.run("q", slow))) for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while flights.shared < 4:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(10)
    assert runs == [1] and results == [["hit"]] * 5
    assert flights.run("q", lambda: ["again"]) == ["again"]  # finished flights are not reused


def test_single_flight_passes_an_error_to_every_waiter() -> None:
    flights = SingleFlight()

    def boom() -> list:  # type: ignore[type-arg]
        raise ValueError("no")

    with pytest.raises(ValueError):
        flights.run("q", boom)
    assert flights.run("q", lambda: ["ok"]) == ["ok"]


def test_query_encoder_runs_the_two_text_towers_side_by_side() -> None:
    """CLIP's text tower runs in its own thread while MiniLM runs: each tower waits for the other
    to have started (a barrier), which only passes when they overlap. Vectors go to their texts;
    a text that needs no CLIP vector gets None and costs CLIP nothing."""
    from types import SimpleNamespace

    from core.embedding.batcher import QueryEncoder

    both = threading.Barrier(2, timeout=10)
    clip_batches: list[list[str]] = []

    def sentence(texts: Sequence[str]) -> Matrix:
        both.wait()
        return np.array([[float(len(t)), 0.0] for t in texts], dtype=np.float32)

    def clip(texts: Sequence[str]) -> Matrix:
        clip_batches.append(list(texts))
        both.wait()
        return np.array([[0.0, float(len(t))] for t in texts], dtype=np.float32)

    embedder: Any = SimpleNamespace(text=SimpleNamespace(embed_texts=sentence), clip=SimpleNamespace(embed_texts=clip))
    encoder = QueryEncoder(embedder)
    out = encoder._encode_texts([("a", True), ("bb", False), ("ccc", True)])
    assert clip_batches == [["a", "ccc"]]
    assert [float(s[0]) for s, _ in out] == [1.0, 2.0, 3.0]
    assert [None if c is None else float(c[1]) for _, c in out] == [1.0, None, 3.0]

    def sentence_alone(texts: Sequence[str]) -> Matrix:
        return np.zeros((len(texts), 2), dtype=np.float32)

    embedder.text.embed_texts = sentence_alone
    assert [c for _, c in encoder._encode_texts([("dd", False)])] == [None]
    assert clip_batches == [["a", "ccc"]]  # no CLIP call for a batch that needs none
