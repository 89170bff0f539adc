"""Tests of clip.data.download against an HTTP server on 127.0.0.1 started by the tests."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from data_helpers import tiny_config
from PIL import Image

from clip.data.captions import read_caption_table
from clip.data.download import FAILURES_FILE, DownloadOptions, download
from clip.data.images import load_rgb
from clip.data.layout import CAPTIONS_FILE
from clip.errors import ClipError

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 0.3
SLOW_SECONDS = 1.0


def encoded_image(image_format: str, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buffer, format=image_format)
    return buffer.getvalue()


JPEG = encoded_image("JPEG")
PNG = encoded_image("PNG")
TRUNCATED_JPEG = encoded_image("JPEG", (64, 48))[:400]


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.requests: Counter[str] = Counter()
        self.missing_found = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ImageHandler(BaseHTTPRequestHandler):
    """Serves one kind of response per path; see the branches of do_GET."""

    server: ImageServer

    def do_GET(self) -> None:
        self.server.requests[self.path] += 1
        kind = self.path.strip("/").split("/")[0]
        try:
            if kind == "jpeg":
                self.reply(200, JPEG, "image/jpeg")
            elif kind == "png":
                self.reply(200, PNG, "image/png")
            elif kind == "missing" and not self.server.missing_found:
                self.reply(404, b"not found", "text/plain")
            elif kind == "missing":
                self.reply(200, JPEG, "image/jpeg")
            elif kind == "slow":
                time.sleep(SLOW_SECONDS)
                self.reply(200, JPEG, "image/jpeg")
            elif kind == "text":
                self.reply(200, b"<html>an error page</html>", "text/html")
            elif kind == "redirect":
                self.send_response(302)
                self.send_header("Location", "/jpeg/target.jpg")
                self.end_headers()
            elif kind == "truncated":
                self.reply(200, TRUNCATED_JPEG, "image/jpeg")
            elif kind == "flaky" and self.server.requests[self.path] == 1:
                self.reply(503, b"busy", "text/plain")
            elif kind == "flaky":
                self.reply(200, JPEG, "image/jpeg")
            else:
                self.reply(500, b"unknown path", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up after its timeout

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ImageServer]:
    image_server = ImageServer()
    thread = threading.Thread(target=image_server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield image_server
    image_server.shutdown()
    image_server.server_close()


def write_url_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{caption}\t{url}\n" for caption, url in rows), encoding="utf-8")
    return path


def options_for(tmp_path: Path, url_file: Path, **overrides: object) -> DownloadOptions:
    options = DownloadOptions(url_file=url_file, save_path=tmp_path / "cc3m", workers=4,
                              timeout=TIMEOUT, retries=1, retry_delay=0.01)
    return replace(options, **overrides)


def saved_lines(save_path: Path) -> list[str]:
    return (save_path / CAPTIONS_FILE).read_text(encoding="utf-8").splitlines()


def failure_reasons(save_path: Path) -> dict[int, str]:
    reasons = {}
    for line in (save_path / FAILURES_FILE).read_text(encoding="utf-8").splitlines():
        row, _, reason = line.split("\t")
        reasons[int(row)] = reason
    return reasons


@pytest.fixture
def every_kind(tmp_path: Path, server: ImageServer) -> Path:
    """A URL file with one row per kind of response and bad row; rows 0, 1, 5 and 7 succeed."""
    base = server.base_url
    return write_url_file(tmp_path / "urls.tsv", [
        ('a dog, "quoted", café', f"{base}/jpeg/0.jpg"),
        ("a png image", f"{base}/png/1.png"),
        ("gone", f"{base}/missing/2.jpg"),
        ("too slow", f"{base}/slow/3.jpg"),
        ("an error page", f"{base}/text/4.jpg"),
        ("moved", f"{base}/redirect/5.jpg"),
        ("cut short", f"{base}/truncated/6.jpg"),
        ("busy at first", f"{base}/flaky/7.jpg"),
        ("local file", "file:///etc/hostname"),
        ("no url on this line", ""),
        ("  ", f"{base}/jpeg/10.jpg"),
    ])


def test_download_handles_every_response(tmp_path: Path, server: ImageServer,
                                         every_kind: Path) -> None:
    result = download(options_for(tmp_path, every_kind))
    save_path = tmp_path / "cc3m"

    assert result.saved == 4
    assert result.failed == 7
    assert sorted(saved_lines(save_path)) == [
        '000000000.jpg\ta dog, "quoted", café',
        "000000001.png\ta png image",
        "000000005.jpg\tmoved",
        "000000007.jpg\tbusy at first",
    ]
    reasons = failure_reasons(save_path)
    assert reasons[2] == "HTTP 404 Not Found"
    assert reasons[3] == f"timed out after {TIMEOUT} s"
    assert reasons[4] == "body is not an image"
    assert reasons[6].startswith("truncated or corrupt image")
    assert reasons[8].startswith("unsupported URL scheme")
    assert reasons[9].startswith("unsupported URL scheme")
    assert reasons[10] == "empty caption"
    assert server.requests["/jpeg/10.jpg"] == 0

    images = sorted((save_path / "images").iterdir())
    assert [path.name for path in images] == [
        "000000000.jpg", "000000001.png", "000000005.jpg", "000000007.jpg"
    ]
    for path in images:
        assert load_rgb(path).size == (16, 12)
    config = tiny_config(captions_path=str(save_path / CAPTIONS_FILE),
                         image_path=str(save_path / "images"))
    table = read_caption_table(config.data)
    assert sorted(table.captions) == ['a dog, "quoted", café', "a png image", "busy at first",
                                      "moved"]
    # Transient failures are retried once, permanent ones are not.
    assert server.requests["/flaky/7.jpg"] == 2
    assert server.requests["/slow/3.jpg"] == 2
    assert server.requests["/missing/2.jpg"] == 1


def test_rerun_skips_done_rows(tmp_path: Path, server: ImageServer, every_kind: Path) -> None:
    download(options_for(tmp_path, every_kind))
    requests_before = sum(server.requests.values())
    lines_before = saved_lines(tmp_path / "cc3m")

    result = download(options_for(tmp_path, every_kind))
    assert result.saved == 0
    assert result.failed == 0
    assert result.already_saved == 4
    assert result.already_failed == 7
    assert sum(server.requests.values()) == requests_before
    assert saved_lines(tmp_path / "cc3m") == lines_before


def test_retry_failed_downloads_fixed_rows(tmp_path: Path, server: ImageServer) -> None:
    url_file = write_url_file(tmp_path / "urls.tsv", [
        ("first", f"{server.base_url}/jpeg/0.jpg"),
        ("was missing", f"{server.base_url}/missing/1.jpg"),
        ("still bad", f"{server.base_url}/text/2.jpg"),
    ])
    download(options_for(tmp_path, url_file))
    assert sorted(failure_reasons(tmp_path / "cc3m")) == [1, 2]

    server.missing_found = True
    download(options_for(tmp_path, url_file))
    assert server.requests["/missing/1.jpg"] == 1

    result = download(options_for(tmp_path, url_file, retry_failed=True))
    assert result.saved == 1
    assert server.requests["/missing/1.jpg"] == 2
    assert "000000001.jpg\twas missing" in saved_lines(tmp_path / "cc3m")
    assert sorted(failure_reasons(tmp_path / "cc3m")) == [2]


def test_max_images_counts_all_runs(tmp_path: Path, server: ImageServer) -> None:
    url_file = write_url_file(tmp_path / "urls.tsv", [
        (f"image {index}", f"{server.base_url}/jpeg/{index}.jpg") for index in range(8)
    ])
    download(options_for(tmp_path, url_file, max_images=3))
    save_path = tmp_path / "cc3m"
    assert len(saved_lines(save_path)) == 3
    assert len(list((save_path / "images").iterdir())) == 3

    result = download(options_for(tmp_path, url_file, max_images=5))
    assert result.saved == 2
    assert len(saved_lines(save_path)) == 5
    assert len(list((save_path / "images").iterdir())) == 5

    assert download(options_for(tmp_path, url_file, max_images=5)).saved == 0


def test_interrupted_run_leftovers_are_repaired(tmp_path: Path, server: ImageServer) -> None:
    url_file = write_url_file(tmp_path / "urls.tsv", [
        ("zero", f"{server.base_url}/jpeg/0.jpg"),
        ("one", f"{server.base_url}/jpeg/1.jpg"),
    ])
    images = tmp_path / "cc3m" / "images"
    images.mkdir(parents=True)
    (images / "000000000.jpg").write_bytes(JPEG)
    (images / "000000001.jpg.tmp").write_bytes(JPEG[:10])
    # The interruption cut the second line short.
    (tmp_path / "cc3m" / CAPTIONS_FILE).write_text("000000000.jpg\tzero\n000000001.jpg\to")

    result = download(options_for(tmp_path, url_file))
    assert result.already_saved == 1
    assert result.saved == 1
    assert saved_lines(tmp_path / "cc3m") == ["000000000.jpg\tzero", "000000001.jpg\tone"]
    assert not list(images.glob("*.tmp"))
    assert server.requests["/jpeg/0.jpg"] == 0


def test_bad_options_raise(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match="URL file .*absent.tsv not found"):
        download(DownloadOptions(tmp_path / "absent.tsv", tmp_path / "out"))
    url_file = write_url_file(tmp_path / "urls.tsv", [])
    with pytest.raises(ClipError, match="--retries -1 is negative"):
        download(DownloadOptions(url_file, tmp_path / "out", retries=-1))
    with pytest.raises(ClipError, match="--workers 0 and --timeout 10.0 must be positive"):
        download(DownloadOptions(url_file, tmp_path / "out", workers=0))


def test_command_line_download(tmp_path: Path, server: ImageServer) -> None:
    url_file = write_url_file(tmp_path / "urls.tsv", [
        ("from the command line", f"{server.base_url}/jpeg/0.jpg"),
        ("not found", f"{server.base_url}/missing/1.jpg"),
    ])
    command = [sys.executable, "-m", "clip.data.download", "--url_file", str(url_file),
               "--save_path", str(tmp_path / "cc3m"), "--workers", "2", "--timeout", "5"]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr
    assert saved_lines(tmp_path / "cc3m") == ["000000000.jpg\tfrom the command line"]
    assert "saved 1 images, 1 failed" in finished.stderr

    missing = subprocess.run(
        [sys.executable, "-m", "clip.data.download", "--url_file", str(tmp_path / "none.tsv"),
         "--save_path", str(tmp_path / "cc3m")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode == 2
    assert "none.tsv not found" in missing.stderr
