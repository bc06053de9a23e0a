"""`af3-serve`: check the settings, prepare the model files, configure the engine, then run
the server under uvicorn; exit non-zero if the engine dies."""

import logging
import sys

import uvicorn
from pydantic import ValidationError

from af3_serve.app import create_app
from af3_serve.config import ServerConfig, SettingsError, parse_args
from af3_serve.engine import build_vllm_config, start_engine
from af3_serve.model_files import ModelFiles, ModelFilesError, resolve_model_files


def _prepare(argv: list[str] | None) -> tuple[ServerConfig, ModelFiles, object]:
    """Everything that can refuse the start does so here, as one line without a traceback."""
    try:
        config = parse_args(argv)
        files = resolve_model_files(config.model, config.think_adapter, config.cache_dir)
        vllm_config = build_vllm_config(config, files)
    except (SettingsError, ModelFilesError) as exc:
        sys.exit(f"af3-serve: error: {exc}")
    except ValidationError as exc:  # vLLM's config classes are pydantic dataclasses
        reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        sys.exit(f"af3-serve: error: vLLM refused the engine settings: {reasons}")
    except (ValueError, NotImplementedError) as exc:  # vLLM's other checks of engine flags
        sys.exit(
            f"af3-serve: error: vLLM refused the engine settings: {' '.join(str(exc).split())}"
        )
    return config, files, vllm_config


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config, files, vllm_config = _prepare(argv)
    engine_died = False
    server: uvicorn.Server | None = None

    def on_engine_dead() -> None:
        nonlocal engine_died
        engine_died = True
        if server is not None:
            server.should_exit = True  # a supervisor restarts us

    app = create_app(config, files, lambda: start_engine(vllm_config), on_engine_dead)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            access_log=False,  # af3_serve.edge.request_log writes one line per request, with its id
            timeout_graceful_shutdown=600,  # SIGTERM: finish in-flight requests first
        )
    )
    server.run()
    if engine_died or not server.started:
        sys.exit(1)


if __name__ == "__main__":
    main()
