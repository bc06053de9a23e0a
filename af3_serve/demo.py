"""The demo page at `/`: plain HTML, JS and CSS shipped in the package, calling our own
/v1 API from the browser. Nothing is added under /v1; `--no-demo-page` leaves it out."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE = Path(__file__).parent / "demo-page"
# Only this origin's scripts and API (live mode's /v1/realtime too: CSP 3's 'self' matches
# this host's ws:/wss:, as Chromium applies it, tested); recordings play back from blob:
# URLs; no framing, so another site cannot overlay the page and collect a typed API key.
POLICY = (
    "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def mount_demo_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(
            PAGE / "index.html",
            headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/demo", StaticFiles(directory=PAGE / "assets"), name="demo")
