"""Where audio may come from: audio_url's SSRF address checks, the URL rules, file:// under
one folder, and the http(s) fetch itself (from a loopback server here), in-process."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.audio_files import encode
from tests.support.http_helpers import CHAT, assert_error, serve, server_fixture, url_request
from tests.support.server import PRIVATE_MEDIA_HOSTS

PARAM = "messages[0].content[0].audio_url.url"
PRIVATE_HOSTS = PRIVATE_MEDIA_HOSTS
api = server_fixture(
    "--allowed-local-media-path", "{tmp}/media", "--allowed-media-domains", *PRIVATE_HOSTS
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.wav",
        "http://localhost:9/a.wav",
        "http://[::1]:9/a.wav",
        "http://169.254.169.254/latest/meta-data",
        "http://0x7f000001:9/a.wav",
        "http://2130706433:9/a.wav",
        "http://017700000001:9/a.wav",
        "http://[::ffff:127.0.0.1]:9/a.wav",
        "https://127.0.0.1:9/a.wav",
    ],
)
async def test_allowlisted_hosts_on_private_addresses_are_refused(api, url: str) -> None:
    response = await api.client.post(CHAT, json=url_request(url))
    assert_error(response, 400, PARAM, "address_not_allowed")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://example.com/a.wav", "domain_not_allowed"),
        ("http://user:pw@127.0.0.1:9/a.wav", "invalid_url"),
        ("http://127.0.0.1:99999/a.wav", "invalid_url"),
        ("gopher://127.0.0.1:70/_x", "invalid_url"),
        ("data:audio/wav,RIFF", "invalid_url"),
        ("data:audio/wav;base64,!!!", "invalid_base64"),
        ("file:///etc/passwd", "local_file_not_allowed"),
        ("file:///nonexistent/a.wav", "local_file_not_allowed"),
    ],
)
async def test_url_rules(api, url: str, code: str) -> None:
    assert_error(await api.client.post(CHAT, json=url_request(url)), 400, PARAM, code)


async def test_file_urls_cannot_leave_the_folder(api, tmp_path: Path, speech) -> None:
    media = tmp_path / "media"
    (tmp_path / "outside.wav").write_bytes(encode(speech[:16000]))
    (media / "escape.wav").symlink_to(tmp_path / "outside.wav")
    (media / "inside.wav").write_bytes(encode(speech[:16000]))
    for url in (
        f"file://{media}/../outside.wav",
        (media / "escape.wav").as_uri(),
        f"file://{media}/%2e%2e/outside.wav",
    ):
        response = await api.client.post(CHAT, json=url_request(url))
        assert_error(response, 400, PARAM, "local_file_not_allowed")
    inside = await api.client.post(CHAT, json=url_request((media / "inside.wav").as_uri()))
    assert inside.status_code == 200, inside.text


async def test_without_a_folder_file_urls_are_refused(tiny_checkpoint, tmp_path, speech) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(speech[:16000]))
    async with serve(tiny_checkpoint, tmp_path) as app:
        response = await app.client.post(CHAT, json=url_request(clip.as_uri()))
    assert_error(response, 400, PARAM, "local_file_not_allowed")


@pytest.fixture
def audio_host(speech) -> Iterator[str]:
    """A loopback HTTP server: /a.wav (4 s), /moved (a redirect to it), /big (3 MB)."""
    wav = encode(speech[: 16000 * 4])
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers["Host"])
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/a.wav")
                self.end_headers()
                return
            body = {"/a.wav": wav, "/big": b"\0" * (3 * 2**20)}.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    assert all(host.startswith("localhost:") for host in seen), seen  # the URL's own Host


async def test_fetch_from_an_allowed_host(tiny_checkpoint, tmp_path, audio_host: str) -> None:
    """Private addresses allowed for an internal host: the audio is fetched; redirects are
    not followed, error statuses and oversized files are refused."""
    flags = ["--allowed-media-domains", "localhost", "--allow-private-media-addresses"]
    async with serve(tiny_checkpoint, tmp_path, *flags, "--max-request-bytes", str(2**21)) as app:
        fetched = await app.client.post(CHAT, json=url_request(f"{audio_host}/a.wav"))
        moved = await app.client.post(CHAT, json=url_request(f"{audio_host}/moved"))
        missing = await app.client.post(CHAT, json=url_request(f"{audio_host}/missing"))
        big = await app.client.post(CHAT, json=url_request(f"{audio_host}/big"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 100
    assert (
        "redirects are not followed" in assert_error(moved, 400, PARAM, "fetch_failed")["message"]
    )
    assert_error(missing, 400, PARAM, "fetch_failed")
    assert_error(big, 413, PARAM, "audio_too_large")
