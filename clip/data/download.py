"""Download the Conceptual Captions images into the layout that training reads.

    python -m clip.data.download --url_file Train_GCC-training.tsv --save_path data/cc3m

The URL file has one ``caption<TAB>URL`` line per image and no header. Row R (counting lines
from 0) is saved as ``save_path/images/RRRRRRRRR.<ext>`` with its original bytes, the extension
following the decoded format. ``save_path/img_cap.csv`` gets one ``image_name<TAB>caption`` line
per saved image and ``save_path/failures.tsv`` one ``row<TAB>URL<TAB>reason`` line per
failure.

An attempt fails when connecting, waiting for the response or reading the whole body takes
longer than ``--timeout``. Timeouts, connection errors and HTTP 408, 429 and 5xx responses are
retried (``--retries``) with exponential backoff, other HTTP errors fail at once. A body counts
only if PIL can verify and fully decode it. Rows with an empty caption are not downloaded.

An interrupted run leaves every file valid: images are written to a ``.tmp`` name and
renamed, and each output line is appended whole and flushed. A re-run skips the rows in
``img_cap.csv`` and in ``failures.tsv`` (retried with ``--retry_failed``), removes leftover
``.tmp`` files and drops a last line cut off by the interruption.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from clip.data.layout import CAPTIONS_FILE, IMAGES_FOLDER
from clip.errors import ClipError

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.tsv"
USER_AGENT = "clip-bench-downloader/0.1 (Python urllib)"
# Bodies above this size are rejected: no caption image needs more, and it bounds memory.
MAX_IMAGE_BYTES = 32 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
# HTTP statuses worth retrying: request timeout, rate limit and server errors.
RETRIED_STATUSES = {408, 429, 500, 502, 503, 504}
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp",
              "BMP": "bmp", "TIFF": "tif"}
# Futures in flight per worker thread, so that the queue never contains the whole file.
IN_FLIGHT_PER_WORKER = 2


@dataclass
class DownloadOptions:
    """Options of one download run; see ``--help`` for each."""

    url_file: Path
    save_path: Path
    max_images: int = 0
    workers: int = 16
    timeout: float = 10.0
    retries: int = 2
    retry_delay: float = 1.0
    retry_failed: bool = False


@dataclass
class DownloadResult:
    """Counts of one run: images saved and rows failed now, rows already done before."""

    saved: int = 0
    failed: int = 0
    already_saved: int = 0
    already_failed: int = 0


@dataclass
class Fetched:
    """Outcome of one row: a temporary image file and its final name, or a failure reason."""

    row: int
    url: str
    caption: str
    temporary: Path | None = None
    name: str = ""
    reason: str = ""


class DownloadError(Exception):
    """A failed download; ``retry`` is True when another attempt may succeed."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


def download(options: DownloadOptions) -> DownloadResult:
    """Download the rows of ``options.url_file`` that are not done yet; see the module doc."""
    _check_options(options)
    images = options.save_path / IMAGES_FOLDER
    images.mkdir(parents=True, exist_ok=True)
    _remove_temporary_files(images)
    captions_file = options.save_path / CAPTIONS_FILE
    failures_file = options.save_path / FAILURES_FILE
    if options.retry_failed and failures_file.exists():
        failures_file.write_text("")
    saved = _saved_rows(captions_file)
    failed = _failed_rows(failures_file) - saved
    result = DownloadResult(already_saved=len(saved), already_failed=len(failed))

    remaining = options.max_images - len(saved) if options.max_images else None
    if remaining is not None and remaining <= 0:
        logger.info("%d images already saved, --max_images %d reached", len(saved),
                    options.max_images)
        return result
    done = saved | failed
    total = sum(1 for row in _read_url_file(options.url_file) if row[0] not in done)
    logger.info("downloading up to %d rows (%d saved and %d failed before) to %s", total,
                len(saved), len(failed), options.save_path)
    rows = (row for row in _read_url_file(options.url_file) if row[0] not in done)
    with open(captions_file, "a", encoding="utf-8") as captions, \
            open(failures_file, "a", encoding="utf-8") as failures, \
            ProgressBar(total) as progress:
        _run(options, rows, remaining, _Writer(captions, failures, images, result, progress))
    logger.info("saved %d images, %d failed; captions in %s", result.saved, result.failed,
                captions_file)
    return result


def _check_options(options: DownloadOptions) -> None:
    if not options.url_file.is_file():
        raise ClipError(
            f"URL file {options.url_file} not found; pass the Conceptual Captions TSV "
            "(caption<TAB>URL per line) with --url_file."
        )
    for name in ("max_images", "retries"):
        if getattr(options, name) < 0:
            raise ClipError(f"--{name} {getattr(options, name)} is negative; use 0 or more.")
    if options.workers < 1 or options.timeout <= 0:
        raise ClipError(
            f"--workers {options.workers} and --timeout {options.timeout} must be positive."
        )


class _Writer:
    """Records outcomes in the main thread: renames images, appends lines, moves the bar."""

    def __init__(self, captions: io.TextIOBase, failures: io.TextIOBase, images: Path,
                 result: DownloadResult, progress: ProgressBar) -> None:
        self.captions = captions
        self.failures = failures
        self.images = images
        self.result = result
        self.progress = progress

    def record(self, fetched: Fetched) -> None:
        if fetched.temporary is not None:
            os.replace(fetched.temporary, self.images / fetched.name)
            _append_line(self.captions, f"{fetched.name}\t{fetched.caption}")
            self.result.saved += 1
        else:
            reason = " ".join(fetched.reason.split())
            _append_line(self.failures, f"{fetched.row}\t{fetched.url}\t{reason}")
            self.result.failed += 1
            logger.debug("row %d failed: %s", fetched.row, reason)
        self.progress.advance(self.result.saved, self.result.failed)


def _append_line(file: io.TextIOBase, line: str) -> None:
    file.write(line + "\n")
    file.flush()


def _run(options: DownloadOptions, rows: Iterable[tuple[int, str, str]], remaining: int | None,
         writer: _Writer) -> None:
    pending = iter(rows)
    in_flight: set[Future[Fetched]] = set()
    max_in_flight = options.workers * IN_FLIGHT_PER_WORKER
    with ThreadPoolExecutor(options.workers, thread_name_prefix="download") as pool:
        try:
            while True:
                while len(in_flight) < max_in_flight and not _reached(writer.result, remaining):
                    row = next(pending, None)
                    if row is None:
                        break
                    in_flight.add(pool.submit(fetch_row, *row, writer.images, options))
                if not in_flight:
                    return
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    _record_or_discard(future.result(), writer, remaining)
        except KeyboardInterrupt:
            logger.warning("interrupted; run the same command again to resume")
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _reached(result: DownloadResult, remaining: int | None) -> bool:
    return remaining is not None and result.saved >= remaining


def _record_or_discard(fetched: Fetched, writer: _Writer, remaining: int | None) -> None:
    # Images finished after --max_images was reached are dropped, so the count is exact.
    if fetched.temporary is not None and _reached(writer.result, remaining):
        fetched.temporary.unlink(missing_ok=True)
        return
    writer.record(fetched)


def fetch_row(row: int, caption: str, url: str, images: Path,
              options: DownloadOptions) -> Fetched:
    """Download and verify one image into a temporary file; runs in a worker thread."""
    fetched = Fetched(row, url, caption)
    if not caption.strip():
        fetched.reason = "empty caption"
        return fetched
    try:
        body = _get_with_retries(url, options)
        extension = verify_image(body)
    except DownloadError as error:
        fetched.reason = str(error)
        return fetched
    fetched.name = f"{row:09d}.{extension}"
    fetched.temporary = images / f"{fetched.name}.tmp"
    fetched.temporary.write_bytes(body)
    return fetched


def _get_with_retries(url: str, options: DownloadOptions) -> bytes:
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"unsupported URL scheme in {url[:80]!r}", retry=False)
    for attempt in range(options.retries + 1):
        try:
            return http_get(url, options.timeout)
        except DownloadError as error:
            if not error.retry or attempt == options.retries:
                raise
            logger.debug("retrying %s after: %s", url, error)
            time.sleep(options.retry_delay * 2**attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def http_get(url: str, timeout: float) -> bytes:
    """Return the body of ``url``, following redirects.

    ``timeout`` limits the connection, the wait for the response and, checked after each chunk,
    the time spent reading the body.
    """
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            chunks, size = [], 0
            while chunk := response.read(READ_CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise DownloadError(f"body larger than {MAX_IMAGE_BYTES} bytes", retry=False)
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"HTTP {error.code} {error.reason}",
                            retry=error.code in RETRIED_STATUSES) from error
    except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as error:
        if isinstance(error, TimeoutError) or "timed out" in str(error):
            raise DownloadError(f"timed out after {timeout} s", retry=True) from error
        raise DownloadError(f"connection failed: {error!r}", retry=True) from error
    except ValueError as error:
        # urllib raises ValueError (http.client.InvalidURL among them) for malformed URLs.
        raise DownloadError(f"invalid URL: {error}", retry=False) from error


def verify_image(body: bytes) -> str:
    """Check that ``body`` is a complete image; return its file extension."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            image_format = image.format or ""
            image.verify()
        # verify() leaves the image unusable and misses truncated JPEG data, so decode it too.
        with Image.open(io.BytesIO(body)) as image:
            image.load()
    except UnidentifiedImageError as error:
        raise DownloadError("body is not an image", retry=False) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DownloadError(f"truncated or corrupt image: {error}", retry=False) from error
    return EXTENSIONS.get(image_format, image_format.lower() or "img")


def _read_url_file(path: Path) -> Iterator[tuple[int, str, str]]:
    with open(path, encoding="utf-8", newline="\n") as file:
        for row, line in enumerate(file):
            caption, _, url = line.rstrip("\r\n").rpartition("\t")
            yield row, caption, url.strip()


def _saved_rows(captions_file: Path) -> set[int]:
    rows = set()
    for line in _complete_lines(captions_file):
        stem = line.partition("\t")[0].partition(".")[0]
        if stem.isdigit():
            rows.add(int(stem))
    return rows


def _failed_rows(failures_file: Path) -> set[int]:
    return {int(line.partition("\t")[0]) for line in _complete_lines(failures_file)
            if line.partition("\t")[0].isdigit()}


def _complete_lines(path: Path) -> list[str]:
    """Return the lines of ``path``, first cutting off a last line that has no newline."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        complete = data[:data.rfind(b"\n") + 1]
        logger.warning("dropping the incomplete last line of %s", path)
        with open(path, "r+b") as file:
            file.truncate(len(complete))
        data = complete
    return data.decode("utf-8").splitlines()


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed or 0.0
        return Text(f"{speed:.1f} rows/s")


class ProgressBar(contextlib.AbstractContextManager):
    """A rich progress bar on stderr: rows done, rate, images saved and failures."""

    def __init__(self, total: int) -> None:
        self.progress = Progress(
            TextColumn("download"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
            TextColumn("{task.fields[saved]} saved, {task.fields[failed]} failed"),
            TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.task = self.progress.add_task("download", total=total, saved=0, failed=0)

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def advance(self, saved: int, failed: int) -> None:
        self.progress.update(self.task, advance=1, saved=saved, failed=failed)


def _remove_temporary_files(images: Path) -> None:
    leftovers = list(images.glob("*.tmp"))
    for path in leftovers:
        path.unlink()
    if leftovers:
        logger.info("removed %d partial images left by an interrupted run", len(leftovers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clip.data.download",
        description="Download Conceptual Captions images listed as caption<TAB>URL lines.",
    )
    parser.add_argument("--url_file", type=Path, required=True,
                        help="TSV with one caption<TAB>URL line per image, no header")
    parser.add_argument("--save_path", type=Path, required=True,
                        help=f"Output folder: {IMAGES_FOLDER}/, {CAPTIONS_FILE}, {FAILURES_FILE}")
    parser.add_argument("--max_images", type=int, default=0,
                        help="Stop once this many images are saved in all runs; 0: no limit")
    parser.add_argument("--workers", type=int, default=16, help="Download threads (default: 16)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="Seconds allowed for connecting, for the response and for "
                             "reading the body of one attempt (default: 10)")
    parser.add_argument("--retries", type=int, default=2,
                        help="Extra attempts after a transient failure (default: 2)")
    parser.add_argument("--retry_delay", type=float, default=1.0,
                        help="Seconds before the first retry, doubled for each next one "
                             "(default: 1)")
    parser.add_argument("--retry_failed", action="store_true",
                        help=f"Retry the rows listed in {FAILURES_FILE} instead of skipping them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        download(DownloadOptions(**vars(args)))
    except ClipError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
