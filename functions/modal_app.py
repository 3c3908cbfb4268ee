"""The Modal app: the same `core` code as the dev runner, serverless.

    modal secret create shelfsearch S3_BUCKET=... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        AWS_REGION=... API_KEY=... WEBHOOK_TOKEN=... [READ_API_KEY=...] [S3_ENDPOINT_URL=...]
    modal deploy functions/modal_app.py                     # web endpoint + GPU indexer + sweeper
    modal run functions/modal_app.py::reindex --prefix uploads/   # fan a bucket prefix out over GPUs

- ``web``: the HTTP app from :func:`functions.app.create_app` on CPU containers (queries embed on
  CPU; many concurrent requests per container). It runs as ``DEPLOYMENT=production``: without
  ``API_KEY`` and ``WEBHOOK_TOKEN`` in the Secret it refuses to start, naming them. Upload
  notifications it receives are handed to the GPU indexer with ``.spawn`` instead of an
  in-process worker.
- ``GpuIndexer``: models loaded once per container in ``@modal.enter``; indexes upload files and
  reindex work items, embedding images with nvjpeg decode + fp16 on the GPU in a pool of
  ``GPU_EMBED_PROCESSES`` worker processes (one process cannot decode JPEGs fast enough).
- ``sweep_uploads``: every minute, a model-free listing of ``uploads/`` against the ingest
  records; anything due is spawned onto the GPU indexer.
- ``train_recommender``: every 15 minutes on CPU, retrains the recommendation model when events
  arrived since the last one and publishes it to the bucket; ``web`` containers pick it up on
  their next refresh (``RECS_REFRESH_SECONDS``) without a restart. ``modal run
  functions/modal_app.py::train_now`` trains at once.
Modal's cloud is not reachable from this project's CI: the definitions are checked and the job
bodies (``functions/jobs.py``) run locally against an S3 server in the tests.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import modal

APP_NAME = "shelfsearch"
GPU = "L40S"  # embedding GPU; "H100" for the fastest reindex, "T4"/"L4" for the cheapest trickle of uploads
GPU_MAX_CONTAINERS = 20
# Embedding worker processes per GPU container (EmbedPool; CUDA MPS is started where present). One
# process decodes ~1-3k JPEGs/s on the GPU; 14 processes with MPS reached 4.5-7.1k/s on an H200.
# EMBED_PROCESSES in the Secret overrides it.
GPU_EMBED_PROCESSES = 8
WEB_MIN_CONTAINERS = 0  # set to 1+ to keep a warm query container (no cold start; costs idle time)
SWEEP_EVERY = modal.Period(minutes=1)
TRAIN_EVERY = modal.Period(minutes=15)
COMPACT_EVERY = modal.Period(hours=1)

ROOT = Path(__file__).resolve().parents[1]
# Ship every file of our packages, not only .py (Modal's default): the dashboard's HTML/JS/CSS in
# functions/ui/ and the open_clip configs in core/embedding/model_configs/ are needed at run time.
SOURCE_IGNORE = ["**/__pycache__/**", "**/*.pyc"]
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    # Model weights (HF) and the ONNX exports of the text towers live on the `models` Volume, so a
    # new container reuses them instead of downloading / exporting again (~30 s on 2 CPUs).
    .env({"HF_HOME": "/cache/huggingface", "MODEL_CACHE_DIR": "/cache/onnx"})
    .add_local_python_source("core", "functions", "local", ignore=SOURCE_IGNORE)
)
secret = modal.Secret.from_name(APP_NAME)  # S3_*, AWS_*, API_KEY, WEBHOOK_TOKEN, CLIP_* ...
model_cache = modal.Volume.from_name(f"{APP_NAME}-models", create_if_missing=True)

app = modal.App(APP_NAME, image=image, secrets=[secret])


def _services(settings: Any = None) -> Any:
    from core.settings import Settings
    from functions.services import Services

    return Services.from_settings(settings or Settings())


def gpu_settings() -> Any:
    """Settings of a GPU indexer container: an embedding process pool unless EMBED_PROCESSES is set
    (in the environment or the .env file: Settings says which fields were given)."""
    from core.settings import Settings

    settings = Settings()
    if "embed_processes" not in settings.model_fields_set:
        settings = settings.model_copy(update={"embed_processes": GPU_EMBED_PROCESSES})
    return settings


@app.cls(
    gpu=GPU,
    cpu=float(GPU_EMBED_PROCESSES + 2),
    memory=4096 + 1024 * GPU_EMBED_PROCESSES,
    volumes={"/cache": model_cache},
    max_containers=GPU_MAX_CONTAINERS,
    scaledown_window=120,
    timeout=3600,
)
class GpuIndexer:
    """Embeds on a GPU. One container processes one upload or reindex item at a time."""

    @modal.enter()
    def load(self) -> None:
        self.services = _services(gpu_settings())  # models loaded once per container, never per input

    @modal.method()
    def process_upload(self, key: str) -> dict[str, Any] | None:
        from functions.jobs import process_upload

        return process_upload(self.services, key)

    @modal.method()
    def index_key(self, key: str, force: bool = False) -> dict[str, Any]:
        from functions.jobs import index_key

        return index_key(self.services, key, force)


class SpawnToGpu:
    """Upload worker for the web function: hands each key to the GPU indexer (returns at once)."""

    def __init__(self) -> None:
        self.spawned = 0

    def submit(self, keys: list[str]) -> int:
        for key in keys:
            GpuIndexer().process_upload.spawn(key)
        self.spawned += len(keys)
        return len(keys)

    def start(self) -> SpawnToGpu:
        return self

    def stop(self, timeout: float = 0.0) -> None:
        return None

    @property
    def queued(self) -> int:
        return 0


@app.function(
    cpu=2.0,
    memory=4096,
    min_containers=WEB_MIN_CONTAINERS,
    scaledown_window=300,
    timeout=600,
    volumes={"/cache": model_cache},
)
@modal.concurrent(max_inputs=32)
@modal.asgi_app()
def web() -> Any:
    from functions.app import create_app

    services = _services()  # loads the models; the first container exports the text towers to ONNX
    try:
        model_cache.commit()  # ... and keeps them on the Volume for every later container
    except Exception as exc:  # a cache that could not be saved costs the next container time only
        print(f"model cache not committed: {exc}")
    return create_app(services, worker=SpawnToGpu())


@app.function(schedule=SWEEP_EVERY, cpu=1.0, timeout=600)
def sweep_uploads() -> int:
    """Safety net for missed notifications and crashed ingests; loads no models."""
    from core.settings import Settings
    from functions.jobs import due_upload_keys

    keys = due_upload_keys(Settings(), stale_pending=timedelta(minutes=10))
    for key in keys:
        GpuIndexer().process_upload.spawn(key)
    return len(keys)


# Training refuses data that would need more than RECS_TRAIN_MEMORY_GB (default 8); the start-up
# file written after it needs what a query process needs to load the catalog, more for the first
# one of a large catalog (docs/scale.md): room for both, one after the other.
@app.function(schedule=TRAIN_EVERY, cpu=4.0, memory=16384, timeout=3600)
def train_recommender(force: bool = False) -> dict[str, Any] | None:
    """Retrain recommendations on all stored events (skipped when none arrived since the last
    model, unless ``force``); loads no embedding models."""
    from core.settings import Settings
    from functions.jobs import train_recommender as _train

    report = _train(Settings(), only_if_new_events=not force)
    if report is None:
        return None
    print(report.summary())
    return {"key": report.key, "events": report.events, "seconds": report.seconds}


@app.local_entrypoint()
def train_now() -> None:
    """Retrain the recommendation model now (``modal run functions/modal_app.py::train_now``)."""
    print(train_recommender.remote(force=True))


@app.function(schedule=COMPACT_EVERY, cpu=2.0, memory=4096, timeout=3600)
def compact_dataset() -> list[dict[str, Any]]:
    """Compact every dataset table and delete versions older than VERSION_RETENTION_HOURS
    (never younger ones: web containers may be serving them, `rollback` may need them)."""
    from dataclasses import asdict

    from core.settings import Settings
    from functions.jobs import compact

    return [asdict(c) for c in compact(Settings())]


@app.function(cpu=1.0, timeout=600)
def list_metadata(prefix: str) -> list[str]:
    from core.settings import Settings
    from functions.jobs import list_metadata as _list

    return _list(Settings(), prefix)


@app.local_entrypoint()
def reindex(prefix: str = "uploads/", force: bool = False) -> None:
    """List a bucket prefix and fan its metadata files out over GPU containers, with progress."""
    from tqdm import tqdm

    from functions.jobs import ReindexSummary

    keys = list_metadata.remote(prefix)
    summary = ReindexSummary()
    indexer = GpuIndexer()
    with tqdm(total=len(keys), desc=f"reindex {prefix}", unit="file") as bar:
        for part in indexer.index_key.map(keys, kwargs={"force": force}, order_outputs=False):
            summary.add(part)
            bar.update(1)
            bar.set_postfix(indexed=summary.indexed, failed=summary.failed)
    print(f"{summary.files} files: indexed {summary.indexed}, unchanged {summary.unchanged}, failed {summary.failed}")
    for f in summary.failures[:20]:
        print(f"  FAILED {f['source']}:{f['line']} {f['product_id']}: {f['reason']}")
