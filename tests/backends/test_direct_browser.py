"""A real browser uploads a 40 MiB file in parts with Uppy (issue 17).

Headless Chromium (the Debian package) loads examples/direct_uploads.py's
page, served by uvicorn; Uppy's ``@uppy/aws-s3`` multipart mode PUTs the
parts to moto's server (CORS on the bucket), and the row ends up with a ref
whose sha256 is the file's. A page killed mid-upload is reloaded and the
upload resumes from the parts the bucket lists. Uppy and playwright-core (which drives Chromium)
come from npm, installed once into a cache directory. Skipped with the
reason when Chromium, node or npm is missing; a failure with
GRANITE_STORAGE_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest

pytest.importorskip("aioboto3")
pytest.importorskip("uvicorn")

from tests.backends.test_direct_multipart import CORS
from tests.services import free_port, skip_or_fail

pytestmark = pytest.mark.s3

NPM_PACKAGES = ("uppy@6.0.1", "playwright-core@1.65.1")
NPM_CACHE = Path(
    os.environ.get("GRANITE_STORAGE_NPM_CACHE", Path.home() / ".cache" / "granite-storage-npm")
)
SIZE = 40 * 1024 * 1024

DRIVER = """
const { chromium } = require(process.argv[2]);
(async () => {
  const browser = await chromium.launch({
    executablePath: process.argv[3], args: ["--no-sandbox", "--disable-gpu"] });
  try {
    const page = await browser.newPage();
    page.on("console", (msg) => console.error("page:", msg.text()));
    await page.goto(process.argv[4]);
    await page.setInputFiles("#file", process.argv[5]);
    await page.waitForFunction(
      () => /^(done|error)/.test(document.getElementById("status").textContent),
      null, { timeout: 120000 });
    console.log(await page.textContent("#status"));
  } finally {
    await browser.close();
  }
})().catch((error) => { console.error(error); process.exit(1); });
"""


RESUME_DRIVER = """
const { chromium } = require(process.argv[2]);
const finished = (page) => page.waitForFunction(
  () => /^(done|error)/.test(document.getElementById("status").textContent),
  null, { timeout: 120000 });
(async () => {
  const browser = await chromium.launch({
    executablePath: process.argv[3], args: ["--no-sandbox", "--disable-gpu"] });
  try {
    const context = await browser.newContext();
    // A slow link: each part takes a while, so the page dies mid-upload.
    const first = await context.newPage();
    await first.route((url) => url.searchParams.has("partNumber"), async (route) => {
      await new Promise((resolve) => setTimeout(resolve, 400));
      await route.continue();
    });
    await first.goto(process.argv[4]);
    await first.setInputFiles("#file", process.argv[5]);
    await first.waitForFunction(
      () => document.getElementById("status").textContent === "part 3", null,
      { timeout: 60000 });
    await first.close();  // the tab is killed mid-upload
    const second = await context.newPage();
    let puts = 0;
    second.on("request", (r) => { if (r.method() === "PUT") puts += 1; });
    await second.goto(process.argv[4]);
    await second.setInputFiles("#file", process.argv[5]);
    await finished(second);
    console.log(await second.textContent("#status"), "puts=" + puts);
  } finally {
    await browser.close();
  }
})().catch((error) => { console.error(error); process.exit(1); });
"""


@pytest.fixture(scope="session")
def browser_tools() -> dict[str, str]:
    """Chromium, node, and the npm packages (installed once into NPM_CACHE)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    node, npm = shutil.which("node"), shutil.which("npm")
    if chromium is None:
        skip_or_fail(
            "chromium not found; install it with: apt-get install -y --no-install-recommends "
            "chromium"
        )
    if node is None or npm is None:
        skip_or_fail("node and npm are needed to install Uppy and playwright-core")
    modules = NPM_CACHE / "node_modules"
    if not all(
        (modules / name.rsplit("@", 1)[0] / "package.json").exists() for name in NPM_PACKAGES
    ):
        result = subprocess.run(
            [npm, "install", "--prefix", str(NPM_CACHE), "--no-audit", "--no-fund", *NPM_PACKAGES],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            skip_or_fail(f"npm install {' '.join(NPM_PACKAGES)} failed: {result.stderr[-2000:]}")
    return {
        "chromium": chromium,
        "node": node,
        "uppy_dist": str(modules / "uppy" / "dist"),
        "playwright": str(modules / "playwright-core"),
    }


@pytest.fixture
def served_app(
    browser_tools: dict[str, str], s3_endpoint_url: str, s3_bucket: str, tmp_path: Path
) -> Iterator[str]:
    """examples/direct_uploads.py on uvicorn (its own thread and event loop)."""
    import mimetypes

    import uvicorn
    from sqlalchemy.ext.asyncio import create_async_engine

    from examples.direct_uploads import create_app
    from granite_storage import StoragePolicy
    from granite_storage.backends.s3 import S3StorageBackend
    from granite_storage.testing import manager_for

    backend = S3StorageBackend(
        bucket=s3_bucket,
        client_kwargs={"endpoint_url": s3_endpoint_url, "region_name": "us-east-1"},
    )
    manager = manager_for(
        backend, StoragePolicy("videos", "s3", max_size=64 << 20, key_prefix="v"), backend_key="s3"
    )
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    app = create_app(manager=manager, engine=engine, uppy_dist=browser_tools["uppy_dist"])
    mimetypes.init()  # StaticFiles would read the system's tables on the event loop
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def drive(tools: dict[str, str], url: str, data: bytes, tmp: Path, script: str = DRIVER) -> Any:
    """Open ``url`` in Chromium and pick a file holding ``data`` (a worker thread)."""
    video, driver = tmp / "talk.mp4", tmp / "driver.js"
    video.write_bytes(data)
    driver.write_text(script)
    return subprocess.run(
        [tools["node"], str(driver), tools["playwright"], tools["chromium"], url, str(video)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


async def upload_in_browser(
    tools: dict[str, str], app_url: str, s3_client: Any, bucket: str, tmp: Path, script: str
) -> tuple[str, dict[str, Any]]:
    """Run ``script`` on a new 40 MiB file; its last output line and the row's
    ref, once checked that the sha256 is the file's and nothing is left pending."""
    await s3_client.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"  # the type comes from the bytes
    data = mp4 + os.urandom(SIZE - len(mp4))
    result = await anyio.to_thread.run_sync(drive, tools, f"{app_url}/videos/1", data, tmp, script)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("done v/video/1/file_ref/"), result.stdout + result.stderr
    async with httpx.AsyncClient() as http:
        ref: dict[str, Any] = (await http.get(f"{app_url}/videos/1/ref")).json()
    assert (ref["size"], ref["checksum"]) == (SIZE, "sha256:" + hashlib.sha256(data).hexdigest())
    assert (await s3_client.list_multipart_uploads(Bucket=bucket)).get("Uploads", []) == []
    return result.stdout.strip(), ref


async def test_browser_uploads_40_mib_in_parts_with_uppy(
    browser_tools: dict[str, str],
    served_app: str,
    s3_client: Any,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    _, ref = await upload_in_browser(
        browser_tools, served_app, s3_client, s3_bucket, tmp_path, DRIVER
    )
    # The router knows the type from the location's suffix; the file name stays
    # with the page (Uppy does not send it back when completing).
    assert ref["content_type"] == "video/mp4", json.dumps(ref)


async def test_a_killed_page_resumes_from_the_listed_parts(
    browser_tools: dict[str, str],
    served_app: str,
    s3_client: Any,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    status, _ = await upload_in_browser(
        browser_tools, served_app, s3_client, s3_bucket, tmp_path, RESUME_DRIVER
    )
    # Eight 5 MiB parts; the first page sent at least three, the reloaded one the rest.
    assert 1 <= int(status.rsplit("puts=", 1)[1]) <= 5, status
