"""Scheduled training runs in a process of its own: one that grows past RECS_TRAIN_MEMORY_GB is
stopped, one the kernel kills is reported, and either way the API keeps answering with the
previous model while /health says why, until a training succeeds again."""

import threading
import time

import psutil
import pytest
from fastapi.testclient import TestClient

from core.events import parse_events
from core.ingest import PendingProduct
from core.types import ProductInput
from functions.app import create_app
from functions.services import Services
from local.runtime import TrainingSchedule, train_in_process

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _add_events(services: Services, users: range) -> None:
    good, bad = parse_events(
        [
            {"user_id": f"u{u}", "product_id": f"P{(u + k) % 6}", "event_type": "purchase"}
            for u in users
            for k in range(3)
        ]
    )
    assert not bad
    services.events.append(good)


def _kill_the_child_once_it_runs(stop: threading.Event) -> None:
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):  # the training process, not the resource tracker
                    time.sleep(0.5)  # let it start its work
                    child.kill()
                    return
            except psutil.Error:
                continue
        time.sleep(0.02)


def test_a_stopped_or_killed_training_leaves_the_api_answering(services: Services) -> None:
    products = [
        PendingProduct(ProductInput.from_mapping({"product_id": f"P{i}", "title": f"Item {i}"})) for i in range(6)
    ]
    assert services.indexer.index(products).indexed == 6
    _add_events(services, range(8))
    first = train_in_process(services.settings)
    assert first.status == "trained" and "trained on 24 events" in first.message and first.peak_bytes > 0
    client = TestClient(create_app(services))
    services.recommender.refresh()
    model = services.recommender.model_key
    assert model is not None

    def answering() -> None:
        body = client.get("/recommendations/u1").json()
        assert body["strategy"] == "personalized" and body["model"] == model and body["recommendations"]

    _add_events(services, range(8, 12))
    # Past the memory limit: stopped by the watchdog.
    small = services.settings.model_copy(update={"recs_train_memory_gb": 0.05})
    job = TrainingSchedule(small, 3600, services.problems)
    job.run_once()
    problem = services.problems["recs-training"]
    assert "RECS_TRAIN_MEMORY_GB=0.05" in problem and "serving the previous model" in problem
    health = client.get("/health").json()
    assert health["status"] == "degraded" and problem in health["warnings"]
    assert health["recommendation_model"] == model
    answering()

    # Killed from outside, as the kernel's out-of-memory killer does.
    job = TrainingSchedule(services.settings, 3600, services.problems)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_the_child_once_it_runs, args=(stop,))
    killer.start()
    try:
        job.run_once()
    finally:
        stop.set()
        killer.join()
    problem = services.problems["recs-training"]
    assert "killed by signal 9" in problem and "out of memory?" in problem
    assert problem in client.get("/health").json()["warnings"]
    answering()

    # The next good run clears the problem and the new model is served.
    job.run_once()
    assert "recs-training" not in services.problems
    assert not any("training failed" in w for w in client.get("/health").json()["warnings"])
    services.recommender.refresh()
    assert services.recommender.model_key not in (None, model)
