"""Upload triggers against the S3 server: notification formats, idempotency, bad input, concurrency."""

import io
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.embedding import Embedder
from core.errors import InvalidInput
from core.ingest import Indexer
from core.settings import Settings
from core.uploads import UploadLog, UploadProcessor, parse_notification
from functions.app import create_app
from functions.services import Services
from functions.upload_worker import UploadWorker
from tests.conftest import make_settings, new_bucket
from tests.helpers import jpeg

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).parents[1] / "fixtures" / "notifications"
KEY = "uploads/new arrivals/summer shoes.json"


def fixture(name: str, bucket: str) -> Any:
    return json.loads((FIXTURES / name).read_text().replace("BUCKET", bucket))


@pytest.fixture
def app(services: Services) -> tuple[TestClient, UploadWorker]:
    worker = UploadWorker(services.uploads)
    return TestClient(create_app(services, worker)), worker


def put_json(services: Services, key: str, obj: Any) -> None:
    body = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
    services.store.put_bytes(key, body.encode() if isinstance(body, str) else body, "application/json")


@pytest.mark.parametrize("name", ["aws_put.json", "minio_put.json", "eventbridge_created.json"])
def test_each_notification_format_parses_to_the_decoded_key(name: str) -> None:
    events = parse_notification(fixture(name, "shop"))
    assert [(e.bucket, e.key, e.created) for e in events] == [("shop", KEY, True)]


def test_test_event_delete_and_garbage() -> None:
    assert parse_notification(fixture("aws_test_event.json", "shop")) == []
    (ev,) = parse_notification(fixture("aws_delete.json", "shop"))
    assert ev.key == KEY and not ev.created
    for bad in ({"hello": 1}, "text", {"Records": [{"s3": {}}]}, {"detail": {"object": {}}}):
        with pytest.raises(InvalidInput):
            parse_notification(bad)


@pytest.mark.parametrize("name", ["aws_put.json", "minio_put.json", "eventbridge_created.json"])
def test_notification_indexes_upload_without_any_api_call(
    app: tuple[TestClient, UploadWorker], services: Services, bucket: str, name: str
) -> None:
    client, worker = app
    services.store.put_bytes("uploads/images/SH1.jpg", jpeg((30, 60, 200)))
    put_json(services, KEY, {"product_id": "SH1", "title": "Blue summer shoes", "image": "uploads/images/SH1.jpg"})
    r = client.post("/triggers/s3", json=fixture(name, bucket))
    assert r.status_code == 202 and r.json()["accepted"] == 1 and r.json()["keys"] == [KEY]
    assert worker.wait_idle(60)
    assert client.get("/products/SH1").json()["image"] == "uploads/images/SH1.jpg"
    hits = client.post("/search", json={"query": "Blue summer shoes", "top_k": 1}).json()["results"]
    assert hits[0]["product_id"] == "SH1"
    (rec,) = client.get("/uploads", params={"status": "indexed"}).json()["uploads"]
    assert rec["key"] == KEY and rec["product_ids"] == ["SH1"] and rec["records_indexed"] == 1


def test_ignored_keys_and_other_buckets(app: tuple[TestClient, UploadWorker], bucket: str) -> None:
    client, _ = app
    payload = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": "images/a.json"}}},
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": "uploads/a.jpg"}}},
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "other"}, "object": {"key": "uploads/a.json"}},
            },
        ]
    }
    body = client.post("/triggers/s3", json=payload).json()
    assert body["accepted"] == 0 and len(body["ignored"]) == 3
    assert client.post("/triggers/s3", json={"nope": True}).status_code == 422


def test_duplicates_races_and_reorders_converge(
    app: tuple[TestClient, UploadWorker], services: Services, bucket: str
) -> None:
    client, worker = app
    put_json(services, KEY, {"product_id": "D1", "title": "Version one"})
    v1 = services.store.head(KEY).etag
    events = [fixture(n, bucket) for n in ("aws_put.json", "minio_put.json", "eventbridge_created.json")]
    for ev in events * 2:  # duplicates of every format
        client.post("/triggers/s3", json=ev)
    worker.sweep()  # the sweeper racing the webhook
    assert worker.wait_idle(60)
    version = services.catalog.version
    assert services.catalog.count() == 1
    for ev in events:  # late duplicates of the same ETag are no-ops: no new dataset version
        client.post("/triggers/s3", json=ev)
    assert worker.wait_idle(60) and services.catalog.version == version
    # A changed re-upload re-indexes; an old event arriving after it still yields the latest.
    put_json(services, KEY, [{"product_id": "D1", "title": "Version two"}, {"product_id": "D2", "title": "New"}])
    assert services.store.head(KEY).etag != v1
    client.post("/triggers/s3", json=events[2])
    client.post("/triggers/s3", json=events[0])
    assert worker.wait_idle(60)
    assert services.catalog.get("D1").title == "Version two"
    assert services.catalog.count() == 2
    (rec,) = client.get("/uploads").json()["uploads"]
    assert rec["etag"] == services.store.head(KEY).etag and rec["status"] == "indexed"


def test_sweeper_alone_indexes_everything(services: Services) -> None:
    for i in range(3):
        put_json(
            services,
            f"uploads/batch-{i}.jsonl",
            "\n".join(json.dumps({"product_id": f"S{i}-{j}", "title": f"Sweep product {i} {j}"}) for j in range(4)),
        )
    services.store.put_bytes("uploads/readme.txt", b"not metadata")
    worker = UploadWorker(services.uploads).start()
    try:
        assert worker.sweep() == 3
        assert worker.wait_idle(60)
        assert services.catalog.count() == 12
        assert worker.sweep() == 0  # nothing left to do
    finally:
        worker.stop()


def test_bad_uploads_fail_with_reasons_good_records_index(services: Services) -> None:
    store = services.store
    store.put_bytes("uploads/img/ok.jpg", jpeg())
    store.put_bytes("uploads/img/corrupt.jpg", jpeg()[:60])
    store.put_bytes("uploads/img/text.jpg", b"GIF89a but not really")
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")
    store.put_bytes("uploads/img/bomb.png", bomb.getvalue())
    put_json(services, "uploads/broken.json", "{this is not json")
    put_json(services, "uploads/empty.jsonl", "\n\n")
    lines = [
        json.dumps({"product_id": "OK1", "title": "Good with image", "image": "uploads/img/ok.jpg"}),
        json.dumps({"product_id": "BAD1", "description": "no title"}),
        '{"product_id": "BAD2", "title": "nan price", "price": NaN}',
        json.dumps({"product_id": "BAD3", "title": "negative", "price": -5}),
        json.dumps({"product_id": "BAD4", "title": "missing image", "image": "uploads/img/none.jpg"}),
        json.dumps({"product_id": "BAD5", "title": "corrupt", "image": "uploads/img/corrupt.jpg"}),
        json.dumps({"product_id": "BAD6", "title": "not an image", "image": "uploads/img/text.jpg"}),
        json.dumps({"product_id": "BAD7", "title": "bomb", "image": "uploads/img/bomb.png"}),
        "[1, 2",
        json.dumps({"product_id": "OK2", "title": "Good after the bad ones"}),
    ]
    put_json(services, "uploads/mixed.jsonl", "\n".join(lines))
    worker = UploadWorker(services.uploads).start()
    try:
        worker.sweep()
        assert worker.wait_idle(120)
    finally:
        worker.stop()
    recs = {r.key: r for r in services.uploads.log.list(limit=10)[0]}
    mixed = recs["uploads/mixed.jsonl"]
    assert mixed.status == "partial" and sorted(mixed.product_ids) == ["OK1", "OK2"]
    by_line = {f["line"]: f["reason"] for f in mixed.failures}
    assert set(by_line) == {2, 3, 4, 5, 6, 7, 8, 9}
    assert "title is required" in by_line[2]
    assert "finite" in by_line[3] and "non-negative" in by_line[4]
    assert "not found" in by_line[5]
    assert "decode" in by_line[6] and "decode" in by_line[7]
    assert "pixels" in by_line[8] and "invalid JSON" in by_line[9]
    assert recs["uploads/broken.json"].status == "failed" and "invalid JSON" in recs["uploads/broken.json"].reason
    assert recs["uploads/empty.jsonl"].status == "failed"
    assert services.catalog.count() == 2
    assert worker.errors == 0  # the trigger loop never saw an unexpected error


def test_token_required_when_configured(s3_endpoint: str, bucket: str, fake: Embedder) -> None:
    svc = Services.from_settings(make_settings(s3_endpoint, bucket, webhook_token="hook-secret"), embedder=fake)
    client = TestClient(create_app(svc, UploadWorker(svc.uploads)))
    payload = fixture("aws_test_event.json", bucket)
    assert client.post("/triggers/s3", json=payload).status_code == 401
    assert client.post("/triggers/s3", json=payload, headers={"Authorization": "Bearer nope"}).status_code == 403
    ok = client.post("/triggers/s3", json=payload, headers={"Authorization": "Bearer hook-secret"})
    assert ok.status_code == 202 and ok.json()["accepted"] == 0


def test_deleted_upload_keeps_products(services: Services) -> None:
    put_json(services, "uploads/gone.json", {"product_id": "G1", "title": "Stays"})
    services.uploads.process("uploads/gone.json")
    services.store.delete("uploads/gone.json")
    assert services.uploads.due() == ["uploads/gone.json"]
    rec = services.uploads.process("uploads/gone.json")
    assert rec is not None and rec.deleted_at is not None
    assert services.catalog.get("G1").title == "Stays"
    assert services.uploads.due() == []


def test_crash_mid_ingest_loses_nothing(services: Services, s3_settings: Settings, fake: Embedder) -> None:
    lines = [json.dumps({"product_id": f"C{i:03d}", "title": f"Crash test product {i}"}) for i in range(100)]
    put_json(services, "uploads/big.jsonl", "\n".join(lines))

    class Crash(BaseException):
        pass

    class CrashingIndexer(Indexer):
        batches = 0

        def _index_group(self, *args: Any, **kwargs: Any) -> None:
            CrashingIndexer.batches += 1
            if CrashingIndexer.batches == 2:
                raise Crash  # the process dies after one committed group
            super()._index_group(*args, **kwargs)

    small_groups = s3_settings.model_copy(update={"ingest_commit_rows": 32})
    dying = UploadProcessor(
        services.store,
        CrashingIndexer(services.catalog, fake, services.store, small_groups),
        services.uploads.log,
        s3_settings,
    )
    with pytest.raises(Crash):
        dying.process("uploads/big.jsonl")
    assert 0 < services.catalog.count() < 100
    assert services.uploads.log.get("uploads/big.jsonl").status == "pending"  # type: ignore[union-attr]
    # A new process: its start-up sweep treats pending records as abandoned.
    fresh = Services.from_settings(s3_settings, embedder=fake)
    worker = UploadWorker(fresh.uploads)
    assert worker.sweep(stale_pending=timedelta(0)) == 1
    worker.start()
    assert worker.wait_idle(60)
    worker.stop()
    assert fresh.catalog.count() == 100
    assert fresh.uploads.log.get("uploads/big.jsonl").status == "indexed"  # type: ignore[union-attr]


def test_eight_concurrent_uploads_and_puts_lose_no_writes(s3_endpoint: str, fake: Embedder) -> None:
    """Eight processes' worth of writers (own catalog handles) commit to one S3 dataset at once."""
    bucket = new_bucket(s3_endpoint, "conc")
    settings = make_settings(s3_endpoint, bucket)
    base = Services.from_settings(settings, embedder=fake)
    for w in range(8):
        put_json(
            base,
            f"uploads/w{w}.jsonl",
            "\n".join(json.dumps({"product_id": f"W{w}-{i}", "title": f"Writer {w} item {i}"}) for i in range(6)),
        )
    api = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    errors: list[str] = []

    def uploader(w: int) -> None:
        try:
            svc = Services.from_settings(settings, embedder=fake)
            rec = svc.uploads.process(f"uploads/w{w}.jsonl")
            assert rec is not None and rec.status == "indexed"
        except BaseException as exc:
            errors.append(repr(exc))

    def putter() -> None:
        for i in range(6):
            r = api.put(f"/products/PUT-{i}", json={"title": f"Put product {i}"})
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=uploader, args=(w,)) for w in range(8)] + [threading.Thread(target=putter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert base.catalog.count() == 8 * 6 + 6
    records, total = UploadLog(base.catalog).list(status="indexed")
    assert total == 8 and all(r.records_indexed == 6 for r in records)
