"""The Modal app's definitions, and its job bodies run locally against the S3 server.

Modal's cloud is not reachable from CI: nothing here deploys or calls `.remote()`.
"""

import importlib
import json
import sys
from typing import Any

import pytest

from core.embedding import Embedder
from core.settings import Settings
from functions import jobs
from functions.services import Services


@pytest.fixture(scope="module")
def definitions() -> dict[str, dict[str, Any]]:
    """Import the app while recording every decorator's arguments."""
    import modal

    seen: dict[str, dict[str, Any]] = {}
    orig_function, orig_cls = modal.App.function, modal.App.cls

    def record(orig: Any) -> Any:
        def decorator_factory(self: Any, *args: Any, **kwargs: Any) -> Any:
            inner = orig(self, *args, **kwargs)

            def wrap(f: Any) -> Any:
                raw = f._get_raw_f() if hasattr(f, "_get_raw_f") else f
                name = raw.__name__
                seen[name] = kwargs
                return inner(f)

            return wrap

        return decorator_factory

    modal.App.function, modal.App.cls = record(orig_function), record(orig_cls)  # type: ignore[method-assign]
    try:
        sys.modules.pop("functions.modal_app", None)
        module = importlib.import_module("functions.modal_app")
    finally:
        modal.App.function, modal.App.cls = orig_function, orig_cls  # type: ignore[method-assign]
    seen["__module__"] = {"module": module}
    return seen


def test_app_wiring(definitions: dict[str, dict[str, Any]]) -> None:
    import modal

    m = definitions["__module__"]["module"]
    assert m.app.name == "shelfsearch"
    assert definitions["GpuIndexer"]["gpu"] == m.GPU
    assert definitions["GpuIndexer"]["cpu"] >= m.GPU_EMBED_PROCESSES + 1  # a core per embedding process
    assert isinstance(definitions["sweep_uploads"]["schedule"], modal.Period)
    assert (
        definitions["train_recommender"]["schedule"] is m.TRAIN_EVERY and "gpu" not in definitions["train_recommender"]
    )
    assert "gpu" not in definitions["web"] and definitions["web"]["cpu"] == 2.0
    # Query containers keep the exported ONNX text towers (MODEL_CACHE_DIR) on the models Volume.
    assert definitions["web"]["volumes"] == {"/cache": m.model_cache} == definitions["GpuIndexer"]["volumes"]
    assert definitions["compact_dataset"]["schedule"] is m.COMPACT_EVERY and "gpu" not in definitions["compact_dataset"]
    assert set(m.app.registered_classes) == {"GpuIndexer"}
    functions = m.app.registered_functions
    assert functions["web"]._is_web_endpoint() and not functions["sweep_uploads"]._is_web_endpoint()
    for name in ("web", "sweep_uploads", "train_recommender", "compact_dataset", "GpuIndexer.*"):
        assert len(functions[name]._spec_.secrets) == 1  # the "shelfsearch" Secret
    assert {"reindex", "train_now"} <= set(m.app.registered_entrypoints)


@pytest.mark.integration
def test_job_bodies_against_the_s3_server(services: Services, s3_settings: Settings, fake: Embedder) -> None:
    store = services.store
    store.put_bytes("uploads/a.jsonl", b'{"product_id": "A1", "title": "First"}\n{"product_id": "A2"}\n')
    store.put_bytes("uploads/a.json", json.dumps({"product_id": "B1", "title": "Second"}).encode())
    store.put_bytes("imports/c.jsonl", b'{"product_id": "C1", "title": "Third"}\n')
    # Sweeper body: model-free listing of what is due.
    assert sorted(jobs.due_upload_keys(s3_settings)) == ["uploads/a.json", "uploads/a.jsonl"]
    rec = jobs.process_upload(services, "uploads/a.jsonl")
    assert rec is not None and rec["status"] == "partial" and rec["product_ids"] == ["A1"]
    assert jobs.due_upload_keys(s3_settings) == ["uploads/a.json"]
    # Reindex body: list a prefix, index each file (the GPU method's body), summarise.
    keys = jobs.list_metadata(s3_settings, "imports/")
    assert keys == ["imports/c.jsonl"]
    summary = jobs.ReindexSummary()
    for key in [*keys, "uploads/a.json"]:
        summary.add(jobs.index_key(services, key))
    assert (summary.files, summary.indexed, summary.failed) == (2, 2, 0)
    assert jobs.index_key(services, "imports/c.jsonl")["unchanged"] == 1
    assert services.catalog.count() == 3


def test_spawn_worker_matches_the_upload_worker_interface(definitions: dict[str, dict[str, Any]]) -> None:
    from functions.upload_worker import UploadWorker

    spawn = definitions["__module__"]["module"].SpawnToGpu
    for name in ("submit", "start", "stop", "queued"):
        assert hasattr(spawn, name) and hasattr(UploadWorker, name)


@pytest.mark.integration
def test_training_job_body_against_the_s3_server(services: Services, s3_settings: Settings) -> None:
    """The scheduled function's body: trains once there are events, then skips until new ones."""
    from core.events import parse_events
    from core.ingest import PendingProduct
    from core.types import ProductInput

    products = [
        PendingProduct(ProductInput.from_mapping({"product_id": f"P{i}", "title": f"Item {i}"})) for i in range(6)
    ]
    assert services.indexer.index(products).indexed == 6
    good, _ = parse_events(
        [
            {"user_id": f"u{u}", "product_id": f"P{(u + k) % 6}", "event_type": "purchase"}
            for u in range(8)
            for k in range(3)
        ]
    )
    services.events.append(good)
    first = jobs.train_recommender(s3_settings, only_if_new_events=True)
    assert first is not None and first.events == 24 and first.key.startswith("models/recommender/")
    assert jobs.train_recommender(s3_settings, only_if_new_events=True) is None  # nothing new
    services.events.append(parse_events([{"user_id": "u0", "product_id": "P5", "event_type": "view"}])[0])
    again = jobs.train_recommender(s3_settings, only_if_new_events=True)
    assert again is not None and again.key != first.key


def test_image_ships_the_dashboard_and_model_configs() -> None:
    """Modal's add_local_python_source keeps only .py files unless told otherwise; the web
    endpoint needs functions/ui/* and core needs its open_clip configs."""
    from pathlib import Path

    from modal.file_pattern_matcher import FilePatternMatcher

    from functions import modal_app

    ignored = FilePatternMatcher(*modal_app.SOURCE_IGNORE)
    root = Path(__file__).resolve().parents[2]
    needed = [*(root / "functions" / "ui").rglob("*"), *(root / "core" / "embedding" / "model_configs").glob("*")]
    assert any(p.name == "app.js" for p in needed) and any(p.suffix == ".json" for p in needed)
    for path in needed:
        rel = path.relative_to(root / path.relative_to(root).parts[0])
        assert not ignored(rel), rel
    assert ignored(Path("core/__pycache__/catalog.cpython-311.pyc"))


def test_gpu_containers_embed_with_a_process_pool(
    definitions: dict[str, dict[str, Any]], s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = definitions["__module__"]["module"]
    for key, value in s3_settings.model_dump().items():
        if value is not None and not isinstance(value, (dict, list)):
            plain = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            monkeypatch.setenv(key.upper(), str(plain))
    monkeypatch.delenv("EMBED_PROCESSES", raising=False)
    assert m.gpu_settings().embed_processes == m.GPU_EMBED_PROCESSES > 0
    monkeypatch.setenv("EMBED_PROCESSES", "0")
    assert m.gpu_settings().embed_processes == 0
