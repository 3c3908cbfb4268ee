"""Bring up what a local command needs: an S3 endpoint (embedded unless configured), the bucket,
the models (with the dev-only offline CLIP fallback) and the services."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
from pydantic import SecretStr

from core.embedding import Embedder, load_embedder
from core.errors import ModelLoadError, ServiceError
from core.ingest import IngestReport, iter_bucket_prefix
from core.settings import Settings
from core.storage import ObjectStore
from functions.services import Services
from local.s3server import ACCESS_KEY, SECRET_KEY, EmbeddedS3
from local.sample import generate
from sdk import APIError, RecommendationClient

log = logging.getLogger(__name__)

BANNER = "!" * 78


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@dataclass
class Endpoint:
    settings: Settings
    embedded: EmbeddedS3 | None


API_STATE = "api-server.json"
"""In the data dir while ``local serve`` runs: where its API listens and which bucket it serves."""


@contextlib.contextmanager
def announce_api(data_dir: Path, url: str, settings: Settings) -> Iterator[None]:
    """Record the running dev API server for other local commands on ``data_dir`` (``local train``
    waits until the server serves the model it trained); removed when the server stops."""
    state = data_dir / API_STATE
    data_dir.mkdir(parents=True, exist_ok=True)
    info = {"url": url, "pid": os.getpid(), "s3_endpoint": settings.s3_endpoint_url, "bucket": settings.s3_bucket}
    state.write_text(json.dumps(info))
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state.read_text()).get("pid") == os.getpid():
                state.unlink()


@dataclass(frozen=True)
class ServedCheck:
    url: str
    served: bool  # the server reported the model within the timeout
    seconds: float
    current: str | None  # the model it reported last


def wait_until_served(data_dir: Path, settings: Settings, model_key: str, timeout: float) -> ServedCheck | None:
    """When a dev API server runs on ``data_dir`` for the same S3 endpoint and bucket, poll its
    ``/health`` until it serves ``model_key`` (or ``timeout`` seconds pass). None when no such
    server runs."""
    try:
        info = json.loads((data_dir / API_STATE).read_text())
    except (OSError, ValueError):
        return None
    same = info.get("s3_endpoint") == settings.s3_endpoint_url and info.get("bucket") == settings.s3_bucket
    if not same or not _pid_alive(int(info.get("pid", -1))):
        return None
    url = str(info["url"])
    started = time.monotonic()
    current: str | None = None
    with RecommendationClient(url, timeout=5, retries=0) as client:
        while True:
            try:
                current = client.health().get("recommendation_model")
            except APIError as exc:  # not up yet, or busy: keep trying until the timeout
                log.debug("dev API server health check failed: %s", exc)
            waited = time.monotonic() - started
            if current == model_key or waited >= timeout:
                return ServedCheck(url, current == model_key, waited, current)
            time.sleep(0.1)


@contextlib.contextmanager
def s3_endpoint(settings: Settings, data_dir: Path, *, port: int = 0, own: bool = False) -> Iterator[Endpoint]:
    """Settings pointing at a usable S3 endpoint.

    ``S3_ENDPOINT_URL`` set: used as is (MinIO, AWS). Otherwise, unless ``own``, a dev server
    already running on ``data_dir`` is reused; else an embedded server is started on ``data_dir``
    and stopped (after a final mirror to disk) when the block exits.
    """
    if settings.s3_endpoint_url:
        yield Endpoint(settings, None)
        return
    state = data_dir / "s3-endpoint.json"
    if not own and state.exists():
        info = json.loads(state.read_text())
        if _pid_alive(int(info.get("pid", -1))):
            log.info("using the running dev server's S3 endpoint %s", info["url"])
            yield Endpoint(_with_endpoint(settings, info["url"]), None)
            return
    data_dir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedS3(data_dir / "s3", port=port).start()
    server.write_state(state)
    try:
        yield Endpoint(_with_endpoint(settings, server.url), server)
    finally:
        state.unlink(missing_ok=True)
        server.stop()


def _with_endpoint(settings: Settings, url: str) -> Settings:
    return settings.model_copy(
        update={
            "s3_endpoint_url": url,
            "aws_access_key_id": SecretStr(ACCESS_KEY),
            "aws_secret_access_key": SecretStr(SECRET_KEY),
        }
    )


def _network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def load_models_with_fallback(settings: Settings) -> tuple[Embedder, list[str]]:
    """Load the configured models; if CLIP weights cannot be had, fall back to random-init CLIP
    with a loud banner. Only the dev runner does this: deployed functions fail instead."""
    warnings: list[str] = []
    if not settings.clip_random_init and not _network_reachable():
        # No network: let huggingface_hub answer from its cache at once instead of retrying.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return load_embedder(settings), warnings
    except ModelLoadError as exc:
        msg = (
            f"CLIP weights {settings.clip_model}/{settings.clip_pretrained} could not be loaded "
            f"({exc.__cause__ or exc}). The dev runner falls back to CLIP_PRETRAINED=none: RANDOM "
            "CLIP weights, so image search and text-to-image scores are NOT meaningful. Text "
            "search still uses the real MiniLM sentence model. Put the weights in the HF cache or "
            "set CLIP_PRETRAINED to a local checkpoint to fix this."
        )
        print(f"\n{BANNER}\n{msg}\n{BANNER}\n", file=sys.stderr, flush=True)
        warnings.append(msg)
        return load_embedder(settings, clip_pretrained="none"), warnings


def build_services(settings: Settings, *, fallback: bool = True) -> Services:
    store = ObjectStore(settings)
    store.ensure_bucket()
    if fallback:
        embedder, warnings = load_models_with_fallback(settings)
    else:
        embedder, warnings = load_embedder(settings), []
    return Services.from_settings(settings, embedder=embedder, warnings=warnings)


SAMPLE_PREFIX = "samples/"


def seed_sample(services: Services, n: int, *, progress: bool = True) -> IngestReport:
    """Put ``n`` generated products (images + products.jsonl) under ``samples/`` in the bucket and
    index them. Idempotent: unchanged objects are not re-uploaded, unchanged products not re-embedded."""
    products = generate(n, text_only_every=10, detail_photo_every=4)
    store = services.store
    have = {o.key: o.etag for o in store.list(SAMPLE_PREFIX)}
    for p in products:
        if not p.image:
            continue
        photos = [(p.image_name, p.image), *p.more_photos]
        p.record["image"] = SAMPLE_PREFIX + p.image_name
        if p.more_photos:
            p.record["images"] = [SAMPLE_PREFIX + name for name, _ in p.more_photos]
        for name, data in photos:
            if have.get(SAMPLE_PREFIX + name) != hashlib.md5(data).hexdigest():
                store.put_bytes(SAMPLE_PREFIX + name, data, "image/jpeg")
    body = "".join(json.dumps(p.record) + "\n" for p in products).encode()
    key = SAMPLE_PREFIX + "products.jsonl"
    if have.get(key) != hashlib.md5(body).hexdigest():
        store.put_bytes(key, body, "application/x-ndjson")
    report = services.indexer.index(
        (i for i in iter_bucket_prefix(store, key, services.settings)),
        progress=progress,
        total=n,
        desc="indexing sample catalog",
    )
    services.catalog.ensure_indexes()
    return report


class Schedule(abc.ABC):
    """A dev-runner job run every ``interval`` seconds in a daemon thread (first run after one
    interval); subclasses say what one run does."""

    name = "job"

    def __init__(self, settings: Settings, interval: float) -> None:
        self.settings = settings
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @abc.abstractmethod
    def run_once(self) -> None:
        """One run of the job; errors it can recover from are logged, not raised."""

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()


GB = 1 << 30
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Watched:
    """How a :func:`run_watched` process ended."""

    reply: tuple[str, Any] | None  # ("ok", result) or ("error", "Type: message"); None: it died first
    peak_bytes: int  # the largest RSS seen
    exitcode: int | None
    over_limit: bool  # killed for passing ``limit_bytes``
    stopped: bool  # killed because ``stop`` was set

    def death(self) -> str:
        """How a process that sent nothing ended, in words."""
        code = self.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return how + (" (SIGKILL: out of memory?)" if code == -9 else "")


def _watched_child(fn: Callable[..., Any], args: tuple[Any, ...], conn: Connection) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def run_watched(
    fn: Callable[..., Any],
    *args: Any,
    name: str,
    limit_bytes: int | None = None,
    stop: threading.Event | None = None,
) -> Watched:
    """``fn(*args)`` in a fresh (spawned) process, waited for while its memory is watched: killed
    past ``limit_bytes`` or when ``stop`` is set; one that dies (the kernel's out-of-memory killer)
    is reported, not followed. ``fn`` and its result must pickle."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the caller's memory
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_watched_child, args=(fn, args, send), name=name, daemon=True)
    proc.start()
    send.close()
    watched = psutil.Process(proc.pid)
    peak, reply, over, stopped = 0, None, False, False
    while reply is None and proc.is_alive():
        with contextlib.suppress(psutil.Error):  # it may end between the check and the read
            peak = max(peak, watched.memory_info().rss)
        if limit_bytes is not None and peak > limit_bytes:
            over = True
        stopped = stop is not None and stop.is_set()
        if over or stopped:
            proc.kill()
            break
        with contextlib.suppress(EOFError):  # EOF: it died before it could say anything
            if receive.poll(POLL_SECONDS):
                reply = receive.recv()
    with contextlib.suppress(EOFError):
        if reply is None and not (over or stopped) and receive.poll():
            reply = receive.recv()
    proc.join()
    return Watched(reply, peak, proc.exitcode, over, stopped)


@dataclass(frozen=True)
class TrainingOutcome:
    status: str  # trained | skipped | failed | stopped (the runner is shutting down)
    message: str
    peak_bytes: int


def _scheduled_training(settings: Settings) -> tuple[str, str]:
    """Body of the training process: one scheduled training, its outcome as (status, text)."""
    from core.errors import InvalidInput
    from functions.jobs import train_recommender

    try:
        report = train_recommender(settings, only_if_new_events=True)
    except InvalidInput as exc:  # empty catalog, no events on catalog products yet: nothing to do
        return "skipped", str(exc)
    return ("skipped", "no new events") if report is None else ("trained", report.summary())


def train_in_process(settings: Settings, stop: threading.Event | None = None) -> TrainingOutcome:
    """Run one scheduled training (:func:`functions.jobs.train_recommender`) in a process of its
    own (:func:`run_watched`): the caller never holds the training data, and a training process
    that grows past ``RECS_TRAIN_MEMORY_GB`` is stopped."""
    limit = settings.recs_train_memory_gb
    w = run_watched(_scheduled_training, settings, name="recs-training", limit_bytes=int(limit * GB), stop=stop)
    if w.stopped:
        return TrainingOutcome("stopped", "the dev runner is shutting down", w.peak_bytes)
    if w.over_limit:
        at = f"{w.peak_bytes / GB:.1f} GB"
        message = f"stopped at {at}, past RECS_TRAIN_MEMORY_GB={limit:g}: raise it, or lower RECS_MAX_ITEMS"
        return TrainingOutcome("failed", message, w.peak_bytes)
    if w.reply is None:
        return TrainingOutcome(
            "failed", f"the training process {w.death()} at {w.peak_bytes / GB:.1f} GB", w.peak_bytes
        )
    kind, value = w.reply
    if kind == "error":  # anything else is a problem to show in /health
        return TrainingOutcome("failed", value, w.peak_bytes)
    status, message = value
    return TrainingOutcome(status, message, w.peak_bytes)


class TrainingSchedule(Schedule):
    """Recommendation retraining when events arrived since the last model, each run in a process
    of its own (:func:`train_in_process`): training never takes the API down with it. A failed run
    leaves serving on the previous model and its reason in ``problems`` (shown by ``/health``)
    until a run succeeds."""

    name = "recs-training"

    def __init__(self, settings: Settings, interval: float, problems: dict[str, str] | None = None) -> None:
        super().__init__(settings, interval)
        self.problems = problems if problems is not None else {}

    def run_once(self) -> None:
        outcome = train_in_process(self.settings, self._stop)
        if outcome.status == "trained":
            self.problems.pop(self.name, None)
            log.info("recommendation model retrained (peak %.1f GB): %s", outcome.peak_bytes / GB, outcome.message)
        elif outcome.status == "skipped":
            self.problems.pop(self.name, None)
            log.info("recommendation training skipped: %s", outcome.message)
        elif outcome.status == "failed":
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            self.problems[self.name] = (
                f"recommendation training failed at {when}: {outcome.message}; serving the previous model"
            )
            log.warning("%s", self.problems[self.name])


class CompactionSchedule(Schedule):
    """Dataset compaction + cleanup of versions older than VERSION_RETENTION_HOURS."""

    name = "compaction"

    def run_once(self) -> None:
        from functions.jobs import compact

        try:
            for c in compact(self.settings):
                log.info("compacted %s: %d -> %d versions", c.table, c.versions_before, c.versions_after)
        except ServiceError as exc:
            log.warning("compaction skipped: %s", exc)
