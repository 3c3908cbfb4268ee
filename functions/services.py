"""Everything a request handler needs, built once per process."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from core import __version__
from core.catalog import Catalog
from core.embedding import Embedder, load_embedder
from core.embedding.batcher import QueryEncoder
from core.events import EventLog
from core.hot import HotCatalog
from core.ingest import Indexer
from core.recommend.artifact import ModelStore
from core.recommend.online import Recommender
from core.rules import RuleStore
from core.search import QueryCache, SingleFlight
from core.settings import Settings
from core.startup import read_startup
from core.storage import ObjectStore
from core.types import Weights
from core.uploads import UploadLog, UploadProcessor

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Settings, models, catalog and bucket of one process."""

    settings: Settings
    embedder: Embedder
    catalog: Catalog
    store: ObjectStore
    indexer: Indexer
    uploads: UploadProcessor
    events: EventLog
    model_store: ModelStore  # trained recommendation models in the bucket
    recommender: Recommender
    rules: RuleStore
    hot: HotCatalog | None = None
    query_cache: QueryCache = field(default_factory=QueryCache)
    encoder: QueryEncoder | None = None
    """Query encodes batched across this process's requests (None: ``QUERY_BATCH_MAX=0``)."""
    flights: SingleFlight | None = None
    version: str = __version__
    warnings: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    """What a background job of this process reports as wrong (job name -> message): ``/health``
    shows it until the job succeeds again and clears it."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        warnings: list[str] | None = None,
    ) -> Services:
        """Load the models (unless given) and open the bucket and catalog."""
        embedder = embedder or load_embedder(settings)
        store = ObjectStore(settings)
        catalog = Catalog.from_settings(
            settings, clip_dim=embedder.clip.dim, text_dim=embedder.text.dim, space=embedder.space
        )
        indexer = Indexer(catalog, embedder, store, settings)
        events = EventLog(catalog)
        models = ModelStore(store)
        hot = (
            HotCatalog(
                catalog,
                ann_min_rows=settings.ann_min_rows,
                nprobe=settings.ann_nprobe,
                refresh_seconds=settings.catalog_refresh_seconds,
            )
            if settings.hot_catalog
            else None
        )
        recommender = Recommender(
            catalog,
            events,
            models,
            settings.default_weights(embedder.clip.random_init),
            exclude_seen=settings.recs_exclude_seen,
            refresh_seconds=settings.recs_refresh_seconds,
            hot=hot,
            ann_min_rows=settings.ann_min_rows,
            event_window_days=settings.recs_event_window_days,
            basket_gap_seconds=60 * settings.bought_together_session_minutes,
        )
        # No refresh here: a query process's lifespan loads the hot catalog first and the
        # recommender from it (the catalog is read and held once); batch jobs never need it; a
        # host without the lifespan refreshes on the first recommendation (ensure_fresh).
        svc = cls(
            settings=settings,
            embedder=embedder,
            catalog=catalog,
            store=store,
            indexer=indexer,
            uploads=UploadProcessor(store, indexer, UploadLog(catalog), settings),
            events=events,
            model_store=models,
            recommender=recommender,
            rules=RuleStore(store, settings.recs_refresh_seconds),
            hot=hot,
            query_cache=QueryCache(settings.query_cache_size),
            encoder=QueryEncoder(embedder, settings.query_batch_max) if settings.query_batch_max > 0 else None,
            flights=SingleFlight() if settings.query_batch_max > 0 else None,
            warnings=list(warnings or []),
        )
        if embedder.clip.random_init:
            svc.warnings.append(
                "CLIP_PRETRAINED=none: CLIP runs with random weights (offline/demo mode); image "
                "search and text-to-image scores are not meaningful, so default ranking uses "
                "text only (weights image=0, text=1)."
            )
        stored = catalog.stored_space
        if stored and stored != embedder.space:
            svc.warnings.append(
                f"catalog vectors were made with {stored}, but this process embeds queries with "
                f"{embedder.space}; re-index the catalog or configure the same models."
            )
        for w in svc.warnings:
            log.warning(w)
        return svc

    def load_startup_file(self) -> bool:
        """Start the hot catalog and the recommender from the newest start-up file in the bucket
        (:mod:`core.startup`), if there is one that fits; their first refresh then catches up.
        Whether one was loaded. Any failure falls back to loading from the dataset."""
        if self.hot is None:
            return False
        try:
            state = read_startup(self.store, self.catalog, self.recommender.weights)
        except Exception as exc:
            log.warning("start-up file not loaded (loading from the dataset): %s", exc)
            return False
        if state is None:
            return False
        self.hot.adopt(state.hot)
        self.recommender.adopt(state.events, state.recs)
        return True

    @property
    def default_weights(self) -> Weights:
        return self.settings.default_weights(self.embedder.clip.random_init)
