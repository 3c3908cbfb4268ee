"""``python -m local``: the dev runner.

serve                 embedded S3 (unless S3_ENDPOINT_URL is set) + sample data + HTTP app
index SOURCE          index a folder or s3://<bucket>/<prefix> into the catalog
sample --out DIR      write a synthetic catalog (products.jsonl + images/) to a folder
import-fashion-mnist  index real Fashion-MNIST product images (Debian dataset-fashion-mnist)
import-kaggle DIR     index a Kaggle "Fashion Product Images" folder (styles.csv + images/)
import-events FILE    bulk-load interaction events (JSONL or CSV) into the events table
train                 retrain the recommendation model on all stored events
evaluate              offline comparison at one time cutoff: our recommender vs five baselines
synth-ratings --out   write synthetic MovieLens-like development data (products + rating events)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ServiceError
from core.settings import Settings

if TYPE_CHECKING:
    from core.recommend.evaluate import Row

DEFAULT_DATA_DIR = Path(".local-data")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    class _QuietServer(uvicorn.Server):
        """uvicorn re-raises Ctrl-C after its graceful shutdown; we stop cleanly instead."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    from functions.app import create_app
    from functions.upload_worker import UploadWorker
    from local.runtime import (
        CompactionSchedule,
        TrainingSchedule,
        announce_api,
        build_services,
        s3_endpoint,
        seed_sample,
    )
    from local.s3server import ACCESS_KEY, SECRET_KEY

    given = Settings()
    with s3_endpoint(given, args.data_dir, port=args.s3_port, own=True) as ep:
        settings = ep.settings
        if "deployment" not in given.model_fields_set:  # DEPLOYMENT=production is honoured here too
            settings = settings.model_copy(update={"deployment": "development"})
        services = build_services(settings)
        if args.sample:
            report = seed_sample(services, args.sample)
            print(report.summary(), flush=True)
        base = f"http://{args.host}:{args.port}"
        where = "embedded, data in " + str(args.data_dir / "s3") if ep.embedded else "external"
        if ep.embedded:
            where += f"; key {ACCESS_KEY} / secret {SECRET_KEY}"
        print(
            "\n".join(
                [
                    "",
                    f"  dashboard      {base}/ui/  (search, products, shoppers, analytics)",
                    f"  API            {base}",
                    f"  API docs       {base}/docs",
                    f"  health         {base}/health",
                    f"  metrics        {base}/metrics",
                    f"  uploads        drop product JSON/JSONL/CSV under s3://{settings.s3_bucket}/uploads/ "
                    f"(swept every {args.sweep_seconds:g}s; webhook POST {base}/triggers/s3); "
                    f"status at {base}/uploads",
                    f"  S3 endpoint    {settings.s3_endpoint_url} ({where})",
                    f"  bucket         {settings.s3_bucket}",
                    f"  catalog        {settings.resolved_catalog_uri} ({services.catalog.count()} products)",
                    "  access         "
                    + (
                        "API_KEY set: writes and shopper data need it"
                        if settings.api_key
                        else "no API_KEY: writes are open (development; deployed apps refuse to start without it)"
                    ),
                    "  Ctrl-C stops everything; data is kept for the next start.",
                    "",
                ]
            ),
            flush=True,
        )
        worker = UploadWorker(services.uploads, sweep_seconds=args.sweep_seconds)
        app = create_app(services, worker)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
        minutes = settings.recs_train_minutes if args.train_minutes is None else args.train_minutes
        trainer = TrainingSchedule(settings, minutes * 60, services.problems) if minutes > 0 else None
        compactor = CompactionSchedule(settings, args.compact_minutes * 60) if args.compact_minutes > 0 else None
        for job in (trainer, compactor):
            if job:
                job.start()
        local_url = base.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
        try:
            with announce_api(args.data_dir, local_url, settings):
                _QuietServer(config).run()
        finally:
            for job in (trainer, compactor):
                if job:
                    job.stop()
    print("stopped; local data saved.", flush=True)
    return 0


def _with_services(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from local.runtime import build_services, s3_endpoint

    class _Ctx:
        def __enter__(self):  # type: ignore[no-untyped-def]
            self._ep = s3_endpoint(Settings(), args.data_dir)
            ep = self._ep.__enter__()
            return build_services(ep.settings)

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            return self._ep.__exit__(*exc)

    return _Ctx()


def _index(args: argparse.Namespace) -> int:
    from functions.jobs import index_source

    with _with_services(args) as services:
        report = index_source(services, args.source, force=args.force)
        print(report.summary())
    return 0 if report.indexed + report.unchanged > 0 or not report.failed else 1


def _upload(args: argparse.Namespace) -> int:
    from core.storage import ObjectStore
    from local.runtime import s3_endpoint

    with s3_endpoint(Settings(), args.data_dir) as ep:
        store = ObjectStore(ep.settings)
        store.ensure_bucket()
        prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
        for path in args.files:
            key = prefix + path.name
            store.put_bytes(key, path.read_bytes())
            print(f"uploaded {path} -> s3://{store.bucket}/{key}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from local.sample import generate, write_folder

    path = write_folder(generate(args.num_products, seed=args.seed, detail_photo_every=4), args.out)
    print(f"wrote {args.num_products} products to {path} (images in {args.out / 'images'})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from local import importers

    with _with_services(args) as services:
        if args.command == "import-fashion-mnist":
            items = importers.fashion_mnist(args.root, limit=args.limit, split=args.split)
            total = args.limit
        else:
            items = importers.kaggle_fashion(args.folder, limit=args.limit)
            total = args.limit
        report = services.indexer.index(items, progress=True, total=total, desc=args.command)
        services.catalog.ensure_indexes()
        print(report.summary())
    return 0


def _import_events(args: argparse.Namespace) -> int:
    from core.events import EventLog, import_event_file
    from local.runtime import s3_endpoint

    with s3_endpoint(Settings(), args.data_dir) as ep:
        from core.storage import ObjectStore

        ObjectStore(ep.settings).ensure_bucket()
        report = import_event_file(EventLog.open(ep.settings), args.file, batch_size=args.batch_size)
        print(report.summary())
    return 0 if report.accepted or not report.rejected else 1


def _train(args: argparse.Namespace) -> int:
    from functions.jobs import train_recommender
    from local.runtime import s3_endpoint, wait_until_served

    with s3_endpoint(Settings(), args.data_dir) as ep:
        report = train_recommender(ep.settings)
        assert report is not None
        print(report.summary(), flush=True)
        if args.no_wait:
            return 0
        # A dev server on this data dir picks the model up within RECS_REFRESH_SECONDS: return only
        # once it serves it, so requests made right after this command get the new model.
        timeout = 3 * ep.settings.recs_refresh_seconds + 30
        check = wait_until_served(args.data_dir, ep.settings, report.key, timeout)
        if check is not None and check.served:
            print(f"  served by the dev API server at {check.url} {check.seconds:.1f} s after saving")
        elif check is not None:
            print(
                f"  warning: the dev API server at {check.url} still serves {check.current} after "
                f"{check.seconds:.0f} s; it loads new models every RECS_REFRESH_SECONDS",
                file=sys.stderr,
            )
    return 0


def _startup_file(args: argparse.Namespace) -> int:
    from functions.jobs import write_startup_file
    from local.runtime import s3_endpoint

    with s3_endpoint(Settings(), args.data_dir) as ep:
        settings = ep.settings.model_copy(update={"startup_file_min_products": 0})
        written = write_startup_file(settings)
        print(f"start-up file for query processes: {written}")
    return 0


def _cutoff(raw: str | None) -> float | None:
    from datetime import UTC, datetime

    from core.events import parse_timestamp

    return None if raw is None else parse_timestamp(raw, datetime.now(UTC)).timestamp()


def _progress(row: Row, left: int) -> None:
    """One line per finished row of `local evaluate` (training the hybrid takes a while)."""
    more = f"; {left} more to train or score" if left else ""
    line = f"  {row.name.strip()}: NDCG@10 {row.metrics.ndcg:.4f} ({row.seconds:.1f} s){more}"
    print(line, file=sys.stderr, flush=True)


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from core.recommend.evaluate import evaluate, format_table
    from local import evaluation

    if args.synthetic:
        ev, vectors, source = evaluation.synthetic(args.users, args.items, args.seed, content=not args.no_content)
    elif args.events is not None:
        ev, vectors, source = evaluation.from_files(args.events, args.products, content=not args.no_content)
    else:
        from local.runtime import s3_endpoint

        with s3_endpoint(Settings(), args.data_dir) as ep:
            ev, vectors, source = evaluation.from_catalog(ep.settings)
    types = [t.strip() for t in args.positive_types.split(",") if t.strip()]
    rows = evaluate(
        ev,
        vectors,
        test_fraction=args.test_fraction,
        min_rating=args.min_rating,
        positive_types=types,
        scheme=args.split,
        cutoff=_cutoff(args.cutoff),
        ablation=args.ablation,
        progress=_progress,
        max_items=Settings().recs_max_items if args.max_items is None else args.max_items,
    )
    how = (
        f"one time cutoff ({args.cutoff or f'the {1 - args.test_fraction:.0%} quantile of event times'}), "
        "scored as of the cutoff"
        if args.split == "global"
        else f"per-user time split (optimistic), each user's last {args.test_fraction:.0%} held out"
    )
    desc = (
        f"{source}: {len(ev)} events, {len(ev.users)} users, {len(ev.items)} items; {how}; "
        f"positives: rating >= {args.min_rating:g} or {', '.join(types) or '-'}"
        + ("" if args.max_items is None else f"; collaborative model over at most {args.max_items} products")
    )
    print(format_table(rows, desc))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "data": desc,
                    "split": args.split,
                    "source": source,
                    "rows": [
                        {
                            "method": r.name.strip(),
                            **r.metrics.as_dict(),
                            "seconds": r.seconds,
                            "params": r.params,
                            **({"peak_rss_mb": r.peak_rss_mb} if r.peak_rss_mb else {}),
                        }
                        for r in rows
                    ],
                },
                indent=2,
            )
        )
    return 0


def _versions(args: argparse.Namespace) -> int:
    from core.catalog import Catalog
    from local.runtime import s3_endpoint

    with s3_endpoint(Settings(), args.data_dir) as ep:
        catalog = Catalog.open_existing(ep.settings)
        current = catalog.version
        print(f"{'version':>8}  {'created (UTC)':<19}  {'products':>8}")
        for v in catalog.versions(args.limit):
            mark = "  <- current" if v.version == current else ""
            print(f"{v.version:>8}  {v.timestamp:%Y-%m-%d %H:%M:%S}  {v.products:>8}{mark}")
        print(
            f"versions older than VERSION_RETENTION_HOURS={ep.settings.version_retention_hours:g} are "
            "removed by compaction; restore one with: python -m local rollback --version N"
        )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from core.catalog import Catalog
    from local.runtime import s3_endpoint

    with s3_endpoint(Settings(), args.data_dir) as ep:
        catalog = Catalog.open_existing(ep.settings)
        previous, before = catalog.version, catalog.count()
        new = catalog.restore(args.version)
        print(
            f"catalog restored to version {args.version}: now version {new} with {catalog.count()} products "
            f"(was version {previous} with {before}). Query processes pick it up within "
            f"CATALOG_REFRESH_SECONDS; undo with: python -m local rollback --version {previous}"
        )
    return 0


def _compact(args: argparse.Namespace) -> int:
    from functions.jobs import compact
    from local.runtime import s3_endpoint

    with s3_endpoint(Settings(), args.data_dir) as ep:
        for c in compact(ep.settings):
            print(f"{c.table}: {c.versions_before} -> {c.versions_after} versions in {c.seconds:.1f}s")
    return 0


def _synth_ratings(args: argparse.Namespace) -> int:
    from local import synth_ratings

    try:
        return synth_ratings.run(args)
    except ValueError as exc:  # a config the generator cannot honour
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="where the embedded S3 server keeps its objects (default .local-data)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the service locally")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--s3-port", type=int, default=0, help="embedded S3 port (default: a free one)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="seed N sample products")
    p.add_argument(
        "--sweep-seconds",
        type=float,
        default=2.0,
        help="how often to look for new files under uploads/ (0 = notifications only)",
    )
    p.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        help="retrain recommendations this often when new events arrived (default RECS_TRAIN_MINUTES=10; 0 = off)",
    )
    p.add_argument(
        "--compact-minutes",
        type=float,
        default=60,
        help="compact the dataset and remove versions older than VERSION_RETENTION_HOURS this often (0 = off)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_serve)

    p = sub.add_parser("index", help="index a folder or s3://bucket/prefix")
    p.add_argument("source")
    p.add_argument("--force", action="store_true", help="re-embed unchanged products too")
    p.set_defaults(func=_index)

    p = sub.add_parser("upload", help="put files into the bucket (default under uploads/, where they index themselves)")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--prefix", default="uploads/", help="key prefix, e.g. uploads/images/ for pictures")
    p.set_defaults(func=_upload)

    p = sub.add_parser("sample", help="write a synthetic catalog to a folder")
    p.add_argument("--num-products", type=int, default=200)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_sample)

    p = sub.add_parser("import-fashion-mnist", help="index Fashion-MNIST product images")
    p.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--split", choices=["train", "t10k"], default="t10k")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=_import)

    p = sub.add_parser("import-kaggle", help="index a Kaggle Fashion Product Images folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=_import)

    p = sub.add_parser("import-events", help="bulk-load events from a JSONL or CSV file")
    p.add_argument("file", type=Path)
    p.add_argument("--batch-size", type=int, default=20_000, help="events per commit")
    p.set_defaults(func=_import_events)

    p = sub.add_parser(
        "train",
        help="retrain the recommendation model (query processes pick it up live; with a dev server running "
        "on this data dir, returns once it serves the new model)",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for a running dev server to serve the model")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "startup-file",
        help="write a start-up file for query processes now (training writes one from STARTUP_FILE_MIN_PRODUCTS "
        "products on)",
    )
    p.set_defaults(func=_startup_file)

    p = sub.add_parser("evaluate", help="offline recall@10 / NDCG@10 / coverage vs strong baselines")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--events", type=Path, help="events file (JSONL/CSV); default: the catalog's events")
    src.add_argument("--synthetic", action="store_true", help="generate MovieLens-like development data")
    p.add_argument("--products", type=Path, help="products JSONL for the content signal (with --events)")
    p.add_argument("--no-content", action="store_true", help="leave the content (embedding) signal out")
    p.add_argument("--users", type=int, default=1000, help="with --synthetic")
    p.add_argument("--items", type=int, default=2000, help="with --synthetic")
    p.add_argument("--seed", type=int, default=0, help="with --synthetic")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument(
        "--split",
        choices=["global", "user"],
        default="global",
        help="global (default): one time cutoff, train on the past, judge the future, as a shop uses it; "
        "user: each user's latest events held out while the others' later events train (optimistic)",
    )
    p.add_argument("--cutoff", help="with --split global: the cutoff time (ISO-8601 or epoch seconds)")
    p.add_argument("--ablation", action="store_true", help="also retrain the hybrid without each of its signals (slow)")
    p.add_argument(
        "--max-items",
        type=int,
        default=None,
        help="the hybrid's collaborative model covers at most this many products (default RECS_MAX_ITEMS)",
    )
    p.add_argument("--min-rating", type=float, default=4.0, help="ratings at least this are positives")
    p.add_argument("--positive-types", default="purchase", help="event types that are positives (comma list)")
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("versions", help="list the catalog's stored versions (newest first)")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_versions)

    p = sub.add_parser("rollback", help="make a stored catalog version current again (undoable)")
    p.add_argument("--version", type=int, required=True, help="a version listed by `versions`")
    p.set_defaults(func=_rollback)

    p = sub.add_parser("compact", help="compact the dataset and remove versions older than VERSION_RETENTION_HOURS")
    p.set_defaults(func=_compact)

    p = sub.add_parser("synth-ratings", help="write synthetic MovieLens-like products + rating events")
    from local.synth_ratings import add_arguments

    add_arguments(p)
    p.set_defaults(func=_synth_ratings)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "werkzeug", "httpx", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ServiceError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
