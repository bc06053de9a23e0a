"""`af3-serve`: run the server under uvicorn; exit non-zero if the engine dies."""

import logging
import sys

import uvicorn

from af3_serve.app import create_app
from af3_serve.config import parse_args
from af3_serve.model_files import ModelFilesError, resolve_model_files


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        files = resolve_model_files(config.model, config.think_adapter, config.cache_dir)
    except ModelFilesError as exc:
        sys.exit(f"af3-serve: error: {exc}")
    engine_died = False
    server: uvicorn.Server | None = None

    def on_engine_dead() -> None:
        nonlocal engine_died
        engine_died = True
        if server is not None:
            server.should_exit = True  # a supervisor restarts us

    app = create_app(config, files, on_engine_dead)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            access_log=False,  # af3_serve.request_log writes one line per request, with its id
            timeout_graceful_shutdown=600,  # SIGTERM: finish in-flight requests first
        )
    )
    server.run()
    if engine_died or not server.started:
        sys.exit(1)


if __name__ == "__main__":
    main()
