"""The demo page's routes at `/`, in-process (the page itself in Chromium:
tests/e2e/test_demo_page.py)."""

from tests.support.http_helpers import NO_KEY, serve, server_fixture

api = server_fixture()
JS_TYPES = ("text/javascript", "application/javascript")  # what browsers run as a module


def paths(app) -> set[str]:
    return {route.path for route in app.routes}


async def test_page_and_assets_are_served_without_a_key(api) -> None:
    page = await api.client.get("/", headers=NO_KEY)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert 'src="demo/app.js"' in page.text  # relative: works behind a path prefix
    for asset in ("demo/app.js", "demo/style.css"):
        assert (await api.client.get(f"/{asset}", headers=NO_KEY)).status_code == 200
    # Live mode's AudioWorklet module: a script file, as the policy allows no blob: scripts.
    worklet = await api.client.get("/demo/mic-worklet.js", headers=NO_KEY)
    assert worklet.status_code == 200
    assert worklet.headers["content-type"].split(";")[0] in JS_TYPES
    assert 'registerProcessor("mic-capture"' in worklet.text
    assert (await api.client.get("/demo/index.html")).status_code == 404
    assert api.engine.started == []


async def test_no_demo_page_switch_and_nothing_added_under_v1(tiny_checkpoint, tmp_path) -> None:
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    async with (
        serve(tiny_checkpoint, tmp_path / "with") as with_page,
        serve(tiny_checkpoint, tmp_path / "without", "--no-demo-page") as without,
    ):
        assert paths(with_page.app) - paths(without.app) == {"/", "/demo"}
        assert (await without.client.get("/")).status_code == 404
        assert (await without.client.get("/demo/app.js")).status_code == 404
