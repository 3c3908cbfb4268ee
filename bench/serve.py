"""The query process of a benchmark, on its own: ``python -m bench.serve --port P [--fake-embedder]``.

Benchmarks start it with :func:`bench.common.serve_process`, so the HTTP app does not share a
process (and a GIL) with the load generator or the embedded S3 server, as in a deployment.
Settings come from the environment like any other process of the service; ``--fake-embedder``
swaps the models for deterministic ones of the real dimensions (routes that embed nothing:
similar, recommendations, events). Prints ``READY`` once the app answers, and on exit (SIGTERM)
the process's peak RSS as ``PEAK_RSS_MB <n>``.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys

import uvicorn

from core.embedding.fake import fake_embedder
from core.settings import Settings
from functions.app import create_app
from functions.services import Services


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fake-embedder", action="store_true")
    args = ap.parse_args(argv)
    settings = Settings()
    embedder = fake_embedder(clip_dim=512, text_dim=384) if args.fake_embedder else None
    services = Services.from_settings(settings, embedder=embedder)
    config = uvicorn.Config(create_app(services), host="127.0.0.1", port=args.port, log_level="warning")
    server = uvicorn.Server(config)

    def stop(*_: object) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    server.run()
    print(f"PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
