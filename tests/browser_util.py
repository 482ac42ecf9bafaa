"""Headless Chromium for the browser tests (marker `browser`; `tests/test_browser.py`).

Playwright (python) drives the system's Chromium (Debian's `chromium` package, or the binary
named by the environment variable `AVLENS_CHROMIUM`); playwright's own browser download is not
used (it does not work offline). Where playwright or Chromium is missing the browser tests are
skipped with a loud reason, unless `AVLENS_REQUIRE_BROWSER=1` (set by `.ci/run`): then they fail.

    with launch() as browser:                       # or the `chromium` fixture (tests/conftest.py)
        opened = open_page(browser, path.as_uri())
        opened.assert_no_errors()                   # console errors, uncaught exceptions, dialogs
        assert_rendered(opened.page.locator("#view"), "the view")   # its screenshot is not blank
        opened.close()

Pages are opened with every http(s)/ws request answered locally by an empty body and recorded in
`OpenedPage.external` (nothing leaves the machine, and a page that needs the network shows up as a
list of URLs rather than as a hang).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest

#: Chromium's switches: no sandbox (containers run as root), no GPU, no network side traffic.
#: `--use-gl=swiftshader` gives WebGL a software renderer that answers at once: with only
#: `--disable-gpu`, circuitsvis's first render (tensorflow.js on WebGL) took ~10 s here.
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
)
#: Where Chromium is looked for when `AVLENS_CHROMIUM` is not set.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/lib/chromium/chromium")
VIEWPORT = {"width": 1280, "height": 900}
#: How long a page may take to load and its views to draw (the machine may be busy).
TIMEOUT_MS = 60_000

SKIP_PREFIX = "BROWSER TESTS SKIPPED"
FAIL_PREFIX = "BROWSER TESTS FAILED: NO BROWSER"
_FIX = ("install Debian chromium (`sudo apt-get install chromium`) and playwright for python "
        "(`pip install -e '.[dev]'`), or point AVLENS_CHROMIUM at a Chromium binary")


def browser_required() -> bool:
    """Whether a missing browser is a failure (`AVLENS_REQUIRE_BROWSER=1`, as `.ci/run` sets it)."""
    return os.environ.get("AVLENS_REQUIRE_BROWSER", "").strip().lower() not in ("", "0", "false", "no")


def browser_missing(problem: str) -> None:
    """Skip the calling test loudly, or fail it when `AVLENS_REQUIRE_BROWSER=1`."""
    if browser_required():
        pytest.fail(f"{FAIL_PREFIX} (AVLENS_REQUIRE_BROWSER=1: a missing browser is a failure, not a skip): "
                    f"{problem}; {_FIX}", pytrace=False)
    pytest.skip(f"{SKIP_PREFIX}: {problem}; {_FIX}")


def find_chromium() -> Optional[str]:
    """The Chromium binary to drive: `AVLENS_CHROMIUM` if set (it must exist), else the first of
    `CHROMIUM_NAMES` found; None when there is none."""
    chosen = os.environ.get("AVLENS_CHROMIUM")
    if chosen:
        path = shutil.which(chosen) or (chosen if Path(chosen).is_file() else None)
        if path is None:
            browser_missing(f"AVLENS_CHROMIUM={chosen!r} is not an executable file")
        return path
    for name in CHROMIUM_NAMES:
        path = shutil.which(name) or (name if os.path.isabs(name) and Path(name).is_file() else None)
        if path:
            return path
    return None


@contextlib.contextmanager
def launch() -> Iterator["object"]:
    """A headless Chromium (a playwright `Browser`), closed on exit; skips or fails (see
    `browser_missing`) where playwright or Chromium is missing or Chromium does not start."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        browser_missing(f"playwright for python is not installed ({e})")
    exe = find_chromium()
    if exe is None:
        browser_missing(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)})")
    pw = sync_playwright().start()
    try:
        try:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=list(CHROMIUM_ARGS))
        except Exception as e:  # playwright raises its own Error for a binary that will not start
            browser_missing(f"Chromium at {exe} did not start: {str(e).strip().splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


@dataclass
class OpenedPage:
    """A page opened in its own browser context, with what went wrong while it ran."""

    page: "object"  # playwright Page
    context: "object"  # playwright BrowserContext
    url: str
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, dialogs, failed loads
    external: list[str] = field(default_factory=list)  # http(s)/ws URLs it asked for (answered locally, empty)

    def assert_no_errors(self) -> None:
        """Fail, listing them, if the page logged a console error, threw, opened a dialog or failed
        to load a resource."""
        assert not self.errors, f"{self.url}: {len(self.errors)} JavaScript problem(s):\n" + "\n".join(
            f"  - {e[:600]}" for e in self.errors)

    def assert_offline(self) -> None:
        """Fail, listing them, if the page asked for anything from the network."""
        assert not self.external, f"{self.url} asked the network for:\n" + "\n".join(f"  - {u}" for u in self.external)

    def close(self) -> None:
        self.context.close()


_NETWORK = re.compile(r"^(https?|wss?|ftp)://", re.I)


def open_page(browser, url: str, wait_for: Optional[str] = None, timeout_ms: int = TIMEOUT_MS) -> OpenedPage:
    """Open `url` (usually `path.as_uri()`) in a fresh context and wait for its `load` event, then
    for the JavaScript expression `wait_for` (if given) to be truthy, then for two animation frames
    (so scripts that draw after load have drawn)."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    opened = OpenedPage(page, context, url)

    def on_console(msg):
        if msg.type == "error":
            loc = msg.location or {}
            where = f" ({loc.get('url', '')[-60:]}:{loc.get('lineNumber', '?')})" if loc.get("url") else ""
            opened.errors.append(f"console.error: {msg.text}{where}")

    def on_route(route):
        opened.external.append(route.request.url)
        route.fulfill(status=200, body="", content_type="text/javascript")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: opened.errors.append(f"uncaught exception: {exc}"))
    page.on("crash", lambda _: opened.errors.append("the page crashed"))
    page.on("requestfailed", lambda req: opened.errors.append(f"failed to load {req.url[:200]}: {req.failure}"))

    def on_dialog(dialog):
        opened.errors.append(f"a {dialog.type} dialog opened: {dialog.message!r}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    context.route(_NETWORK, on_route)
    page.set_default_timeout(timeout_ms)
    page.goto(url, wait_until="load", timeout=timeout_ms)
    if wait_for:
        page.wait_for_function(wait_for, timeout=timeout_ms)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return opened


def ink(png: bytes) -> tuple[int, float]:
    """(number of distinct colours, fraction of pixels not of the most common colour) of a PNG."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    colours = im.getcolors(maxcolors=im.width * im.height)
    total = im.width * im.height
    return len(colours), 1.0 - max(c for c, _ in colours) / total


def assert_rendered(locator, what: str, min_colours: int = 4, min_ink: float = 0.01) -> tuple[int, float]:
    """Screenshot one element and fail unless it is drawn: at least `min_colours` distinct colours
    and at least `min_ink` of its pixels differing from its background (most common) colour.
    Returns (colours, ink fraction)."""
    box = locator.bounding_box()
    assert box is not None and box["width"] >= 4 and box["height"] >= 4, f"{what} has no size on the page: {box}"
    n, frac = ink(locator.screenshot(animations="disabled"))
    assert n >= min_colours and frac >= min_ink, (
        f"{what} looks blank: {n} distinct colour(s), {frac:.2%} of pixels off the background "
        f"(need >= {min_colours} and >= {min_ink:.0%}); element box {box}")
    return n, frac


def toc_problems(page) -> list[str]:
    """In-page links (`a[href^='#']`) whose target does not exist. As a browser does (HTML's
    "find a potential indicated element"), a fragment names the element whose id is the
    fragment as written or, failing that, percent-decoded (nbconvert writes both id and href
    percent-encoded for headings with non-ASCII text)."""
    return page.evaluate("""() => [...document.querySelectorAll("a[href^='#']")]
        .map(a => a.getAttribute('href').slice(1))
        .filter(f => {
            if (!f || document.getElementById(f)) return false;
            let decoded = null;
            try { decoded = decodeURIComponent(f); } catch (e) { return true; }
            return !document.getElementById(decoded);
        })""")
