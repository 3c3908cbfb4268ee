"""The one settings object. Nothing else in the project reads the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from core.types import Weights


class Settings(BaseSettings):
    """Service configuration, read from environment variables (and `.env` when present).

    Field names are the environment variable names, case-insensitively (``S3_BUCKET`` ->
    ``s3_bucket``). Secrets have no defaults.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    # Object storage
    s3_endpoint_url: str | None = Field(default=None, description="Empty means AWS S3.")
    s3_bucket: str = "products"
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str = "us-east-1"
    catalog_uri: str | None = Field(default=None, description="LanceDB URI; default s3://<S3_BUCKET>/catalog.")
    catalog_refresh_seconds: float = Field(
        default=1.0, ge=0, description="How often a query process checks for a new dataset version."
    )
    index_min_rows: int = Field(
        default=5000, ge=256, description="Build ANN + scalar indexes once the table has this many rows."
    )
    hot_catalog: bool = Field(
        default=True, description="Answer search/similar from an in-memory copy of the catalog (refreshed per version)."
    )
    ann_min_rows: int = Field(
        default=20_000,
        ge=1,
        description="Exact search below this many products, IVF ANN above (hot catalog); "
        "recommendations: exact content scan below, a PQ content index above.",
    )
    ann_nprobe: int = Field(default=48, ge=1, le=4096, description="IVF lists probed per query (recall vs speed).")
    query_cache_size: int = Field(
        default=10_000, ge=0, description="Query texts whose vectors are kept (LRU; 0 = off)."
    )
    s3_timeout_seconds: float = Field(default=10.0, gt=0)
    write_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a write (upsert, delete, event append) retries commit conflicts and storage "
        "errors with backoff before answering 503.",
    )
    version_retention_hours: float = Field(
        default=24.0,
        gt=0,
        description="Dataset versions younger than this survive compaction/cleanup: query processes may "
        "still serve them and `rollback` can restore them.",
    )

    # Models
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "laion2b_s34b_b79k"
    text_model: str = "all-MiniLM-L6-v2"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    embed_batch_size: int = Field(default=32, ge=1, le=4096)
    ingest_commit_rows: int = Field(
        default=1000,
        ge=1,
        description="Products embedded per catalog commit in an import: each commit costs more as the catalog "
        "grows, so a long import commits in large groups (a failed commit is retried with its group).",
    )
    text_runtime: Literal["auto", "int8", "onnx", "torch"] = Field(
        default="auto",
        description="What runs the text towers (CLIP text and the sentence encoder) for queries. `auto`: ONNX "
        "Runtime on CPU (several times faster per query than PyTorch's eager kernels; exported once and "
        "checked against PyTorch, PyTorch if that fails), CLIP's text tower with int8 weights when they agree "
        "with PyTorch fp32 at cosine >= 0.99 on probe texts (faster on CPUs with int8 matrix units), else fp32; "
        "PyTorch on GPU. `int8`: that int8 CLIP text tower on ONNX Runtime or fail (the sentence encoder stays "
        "fp32 ONNX: its int8 copy does not pass the check). `onnx`: fp32 ONNX Runtime or fail. `torch`: always "
        "PyTorch.",
    )
    image_runtime: Literal["auto", "int8", "onnx", "torch"] = Field(
        default="auto",
        description="What runs CLIP's image tower on CPU (indexing, image queries). `auto`: ONNX Runtime with int8 "
        "weights (faster than PyTorch; used only if its vectors agree with PyTorch fp32 at cosine >= 0.99 on probe "
        "images), else the fp32 graph (>= 0.9999), else PyTorch; GPUs always run fp16 PyTorch. `int8` / `onnx`: "
        "that (on CPU) or fail. `torch`: always PyTorch.",
    )
    model_cache_dir: str = Field(
        default="",
        description="Where exported ONNX models (text towers, image tower) are cached (default "
        "`$XDG_CACHE_HOME/shelfsearch/onnx`, i.e. `~/.cache/shelfsearch/onnx`).",
    )
    embed_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Worker processes for bulk image embedding (0: in the serving process). On a GPU, "
        "about one per CPU core with CUDA MPS: GPU JPEG decoding does not scale inside one process.",
    )

    # Ranking
    image_weight: float = Field(default=0.7, ge=0)
    text_weight: float = Field(default=0.3, ge=0)
    search_mode: Literal["hybrid", "vector", "keyword"] = Field(
        default="hybrid",
        description="Default of POST /search's `mode`: hybrid = vector score + keyword_weight x BM25 (exact names "
        "and codes first), vector = the fused cosine score alone, keyword = BM25 alone.",
    )
    hybrid_keyword_weight: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="Weight of the normalised BM25 score (0..1) in hybrid search (0.5: chosen on bench.hybrid's "
        "development catalog).",
    )
    match_candidates: int = Field(
        default=1000,
        ge=10,
        le=10_000,
        description="POST /search's matching set (what total_matches, facets, pages and sorts cover): products "
        "passing the filters that match a query word (typo-tolerant) or are among this many best by vector score.",
    )

    # Security
    deployment: Literal["production", "development"] = Field(
        default="production",
        description="production: the HTTP app refuses to start without API_KEY and WEBHOOK_TOKEN (unless "
        "ALLOW_ANONYMOUS_WRITES); development: what the dev runner sets, keys optional.",
    )
    allow_anonymous_writes: bool = Field(
        default=False, description="Production without API_KEY / WEBHOOK_TOKEN: writes open to anyone (logged)."
    )
    api_key: SecretStr | None = Field(default=None, description="Writes and shopper data need it when set.")
    read_api_key: SecretStr | None = Field(
        default=None,
        description="When set, reads (search, similar, recommendations, products) need it or API_KEY; a key "
        "for a storefront that can search but not write.",
    )
    webhook_token: SecretStr | None = None
    image_url_ttl_seconds: int = Field(
        default=3600,
        ge=60,
        description="With READ_API_KEY: image URLs in answers carry a signature valid this long, so <img> tags "
        "work without the key.",
    )
    webhook_keys_per_minute: int = Field(
        default=600,
        ge=0,
        description="Upload keys a process queues (or spawns GPU work for) per minute from notifications; more "
        "are left to the sweeper (0 = no cap).",
    )
    write_rate_limit: int = Field(
        default=600, ge=0, description="Writes per minute per client (key or address); 429 above (0 = off)."
    )
    image_search_rate_limit: int = Field(
        default=120, ge=0, description="Searches by photo per minute per client; 429 above (0 = off)."
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated browser origins allowed cross-site (or *); empty = CORS closed.",
    )

    query_batch_max: int = Field(
        default=8,
        ge=0,
        description="Query encodes of concurrent requests run together in batches of up to this many (a lone "
        "query is encoded at once); identical concurrent queries share one encode and one search. 0: each request "
        "encodes alone. The query-side ONNX sessions take batches of up to 8 texts; larger ones run on PyTorch.",
    )

    # Input limits
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    max_request_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_top_k: int = Field(default=100, ge=1)
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="Largest metadata file indexed.")

    # Upload triggers
    upload_sweep_seconds: float = Field(
        default=0, ge=0, description="Sweep uploads/ this often in the HTTP process; 0 = only on notifications."
    )

    # Events and recommendations
    max_concurrent_requests: int = Field(
        default=16, ge=0, description="Requests handled at once per process; more wait, then get 429 (0 = no limit)."
    )
    queue_wait_seconds: float = Field(
        default=2.0, ge=0, description="How long a request waits for a free slot before 429 + Retry-After."
    )
    max_events_per_request: int = Field(default=10_000, ge=1, description="Largest POST /events batch.")
    events_public: bool = Field(
        default=False, description="Let POST /events through without the API key (browser-side tracking)."
    )
    recs_refresh_seconds: float = Field(
        default=2.0, gt=0, description="How often a query process picks up new products, events and models."
    )
    recs_exclude_seen: bool = Field(default=True, description="Leave out products the user already interacted with.")
    bought_together_session_minutes: float = Field(
        default=30.0,
        gt=0,
        description="Bought together: a shopper's add-to-carts and purchases with gaps up to this long are one basket.",
    )
    recs_train_minutes: float = Field(
        default=10.0, ge=0, description="Dev runner: retrain this often when there are new events; 0 = never."
    )
    recs_min_rating: float = Field(default=4.0, ge=1, le=5, description="Ratings at least this count as positives.")
    recs_positive_types: str = Field(
        default="purchase", description="Comma-separated event types that count as positives when training."
    )
    recs_max_items: int = Field(
        default=15_000,
        ge=100,
        description="Training: the collaborative model covers at most this many products, the most active "
        "lately (its memory grows with the square: ~2.7 GB at 15,000); the others are reached by content "
        "and popularity.",
    )
    recs_train_memory_gb: float = Field(
        default=8.0,
        gt=0,
        description="Training: refuse to start when the data would need more memory than this, and (dev "
        "runner) stop a scheduled training process that grows past it.",
    )
    recs_event_window_days: float = Field(
        default=0.0,
        ge=0,
        description="Query processes hold only the events of this many days (by event time) for histories and "
        "popularity, forgetting older ones as time passes: their memory then follows the traffic of a window, not "
        "all history. 0 = every event.",
    )
    startup_file_min_products: int = Field(
        default=20_000,
        ge=0,
        description="Training also writes a start-up file (a query process's prebuilt catalog, indexes and "
        "events, under `startup/` in the bucket) once the catalog has this many products; new query processes "
        "start from the newest one and catch up on what changed since. Smaller catalogs load from the dataset "
        "in seconds.",
    )
    recs_rerank: Literal["auto", "always", "off"] = Field(
        default="auto",
        description="Training: auto = keep the learned reranker only when it beats the blend on held-out "
        "validation users; always = keep it whenever it can be fitted; off = blend only.",
    )

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def positive_types(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.recs_positive_types.split(",") if t.strip())

    @field_validator("api_key", "read_api_key", "webhook_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        """``API_KEY=`` (as in a copied ``.env.example``) means no key, not the empty key."""
        return None if v == "" else v

    @model_validator(mode="after")
    def _weights_not_both_zero(self) -> Settings:
        if self.image_weight + self.text_weight <= 0:
            raise ValueError("IMAGE_WEIGHT and TEXT_WEIGHT cannot both be 0")
        return self

    @model_validator(mode="after")
    def _retention_outlives_refresh(self) -> Settings:
        floor = 10 * max(self.catalog_refresh_seconds, self.recs_refresh_seconds, 1.0)
        if self.version_retention_hours * 3600 < floor:
            raise ValueError(
                f"VERSION_RETENTION_HOURS must cover at least ten refresh intervals ({floor:g} s) so that "
                "cleanup never deletes a version a query process is still serving"
            )
        return self

    @property
    def resolved_catalog_uri(self) -> str:
        """Where the LanceDB dataset lives."""
        return self.catalog_uri or f"s3://{self.s3_bucket}/catalog"

    @staticmethod
    def default_model_cache_dir() -> str:
        """``MODEL_CACHE_DIR``'s default: ``$XDG_CACHE_HOME/shelfsearch/onnx`` (``~/.cache/...``
        when that is unset)."""
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return str(Path(base) / "shelfsearch" / "onnx")

    def default_weights(self, clip_random_init: bool) -> Weights:
        """``IMAGE_WEIGHT`` / ``TEXT_WEIGHT`` for a catalog whose image vectors come from
        random-init CLIP (``clip_random_init``: noise, so text alone) or not."""
        from core.types import default_weights

        return default_weights(self.image_weight, self.text_weight, clip_random_init)

    @property
    def clip_random_init(self) -> bool:
        """True in the explicit offline/demo mode (``CLIP_PRETRAINED=none``)."""
        return self.clip_pretrained.strip().lower() in {"", "none"}

    def storage_options(self) -> dict[str, str]:
        """Object-store options for LanceDB (only meaningful for ``s3://`` URIs)."""
        opts: dict[str, str] = {
            "region": self.aws_region,
            "timeout": f"{self.s3_timeout_seconds:g}s",
            "connect_timeout": f"{min(self.s3_timeout_seconds, 5.0):g}s",
            # Lance retries failed object-store requests itself (by default for up to 3 minutes):
            # bound each storage call to about one timeout, so a query fails fast (503) when the
            # store is unreachable instead of hanging.
            "client_max_retries": "3",
            "client_retry_timeout": str(max(1, round(self.s3_timeout_seconds))),
            # New tables name manifests so the latest is found without listing every version:
            # commits stay O(1) however many versions retention keeps.
            "new_table_enable_v2_manifest_paths": "true",
        }
        if self.s3_endpoint_url:
            opts["endpoint"] = self.s3_endpoint_url
            opts["allow_http"] = str(self.s3_endpoint_url.startswith("http://")).lower()
            # S3-compatible servers (MinIO, moto) address buckets by path.
            opts["virtual_hosted_style_request"] = "false"
        if self.aws_access_key_id is not None:
            opts["aws_access_key_id"] = self.aws_access_key_id.get_secret_value()
        if self.aws_secret_access_key is not None:
            opts["aws_secret_access_key"] = self.aws_secret_access_key.get_secret_value()
        return opts
