"""Eight concurrent writers on one S3 dataset, each with its own handles (as separate processes
would have), mixing upload ingests, product PUTs and event batches: every row lands exactly once."""

import json
import logging
import threading

import pytest
from fastapi.testclient import TestClient

from core.embedding import Embedder
from core.events import EventLog
from core.uploads import UploadLog
from functions.app import create_app
from functions.services import Services
from tests.conftest import make_settings, new_bucket

pytestmark = [pytest.mark.slow, pytest.mark.integration]
WRITERS, ROUNDS, PER_UPLOAD, PUTS, EVENTS = 8, 1, 6, 4, 50


def test_eight_writers_mixing_uploads_puts_and_events(
    s3_endpoint: str, fake: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.catalog")
    # Eight writers in one test process share its GIL with the S3 server: commits are slow and conflict
    # often here, so writes get a long retry budget (the default is 30 s).
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "mix"), write_retry_seconds=300)
    base = Services.from_settings(settings, embedder=fake)
    for w in range(WRITERS):
        for r in range(ROUNDS):
            lines = [
                json.dumps({"product_id": f"U{w}-{r}-{i}", "title": f"uploaded {w} {r} {i}"}) for i in range(PER_UPLOAD)
            ]
            base.store.put_bytes(f"uploads/m{w}-{r}.jsonl", "\n".join(lines).encode())
    errors: list[str] = []
    barrier = threading.Barrier(WRITERS)

    def writer(w: int) -> None:
        try:
            svc = Services.from_settings(settings, embedder=fake)
            client = TestClient(create_app(svc))
            barrier.wait(60)
            for r in range(ROUNDS):
                rec = svc.uploads.process(f"uploads/m{w}-{r}.jsonl")
                if rec is None or rec.status != "indexed":
                    errors.append(f"upload m{w}-{r}: {rec}")
                for i in range(PUTS):
                    resp = client.put(f"/products/P{w}-{r}-{i}", json={"title": f"put {w} {r} {i}"})
                    if resp.status_code != 200:
                        errors.append(f"PUT {resp.status_code} {resp.text}")
                batch = [
                    {"user_id": f"u{w}", "product_id": f"P{w}-{r}-0", "event_type": "view", "event_id": f"e{w}-{r}-{k}"}
                    for k in range(EVENTS)
                ]
                resp = client.post("/events", json=batch)
                if resp.status_code != 202 or resp.json()["accepted"] != EVENTS:
                    errors.append(f"events {resp.status_code} {resp.text}")
        except BaseException as exc:
            errors.append(f"writer {w}: {exc!r}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    retried = sum("retrying in" in r.getMessage() for r in caplog.records)
    print(f"8 writers: {retried} commits retried after conflicts/storage errors")
    assert errors == []
    base.catalog._table.checkout_latest()
    assert base.catalog.count() == WRITERS * ROUNDS * (PER_UPLOAD + PUTS)
    _, table = base.catalog.scan(["product_id"])
    ids = table.column("product_id").to_pylist()
    assert len(ids) == len(set(ids))
    events = EventLog.open(settings).read()
    event_ids = events.column("event_id").to_pylist()
    assert len(event_ids) == WRITERS * ROUNDS * EVENTS == len(set(event_ids))
    records, total = UploadLog(base.catalog).list(status="indexed")
    assert total == WRITERS * ROUNDS and all(r.records_indexed == PER_UPLOAD for r in records)
