"""Remote wheel sources by file name: a package index's page for a project (PEP 503 / PEP 691) or a find-links page.

A lock names each wheel by file name and sha256; where it is fetched from is found here, at build time, from the
spec's and the host's indexes. At lock time the same lookup turns a wheel found on the locking machine's disk into
its public URL (PyPI's, for the same file name and sha256), so that a lock never names the locking machine's paths.

URLs are written without credentials (:func:`strip_credentials`); a request carries no authentication of its own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser

from packaging.utils import canonicalize_name

from envkit.errors import FetchError

PYPI_SIMPLE = "https://pypi.org/simple"
LOOKUP_TIMEOUT = 30
_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
# Local version labels whose wheels the PyTorch project publishes on its own index (torch 2.13.0+cpu): the hint a
# lock gives for a wheel found on local disk that PyPI does not have.
PYTORCH_INDEX = "https://download.pytorch.org/whl"
PYTORCH_LABELS = ("cpu", "cu", "rocm", "xpu")


@dataclass(frozen=True)
class Found:
    """A file an index or page offers: its URL and the sha256 it states (None when it states none)."""

    url: str
    sha256: str | None


def strip_credentials(url: str) -> str:
    """``url`` without ``user:password@`` (a lock and its sources are shared; credentials stay in pip's config)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def is_remote(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in ("https", "http")


def find_in_index(index_url: str, project: str, filename: str) -> Found | None:
    """The file ``filename`` on ``index_url``'s page for ``project`` (PEP 691 JSON, else PEP 503 HTML), or None.

    Raises:
        FetchError: the index cannot be reached or answers with an error other than 404.
    """
    page = index_url.rstrip("/") + "/" + canonicalize_name(project) + "/"
    return _find(page, filename, json_ok=True)


def find_in_page(page_url: str, filename: str) -> Found | None:
    """The file ``filename`` among the links of a find-links page, or None.

    Raises:
        FetchError: the page cannot be reached.
    """
    return _find(page_url, filename, json_ok=False)


def _find(page: str, filename: str, json_ok: bool) -> Found | None:
    request = urllib.request.Request(page, headers={"Accept": _ACCEPT if json_ok else "text/html"})
    try:
        with urllib.request.urlopen(request, timeout=LOOKUP_TIMEOUT) as resp:
            kind = resp.headers.get("Content-Type", "")
            body = resp.read(64 * 1024 * 1024)
            final = resp.geturl()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise FetchError(f"{strip_credentials(page)} answered {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise FetchError(f"{strip_credentials(page)} is unreachable ({getattr(exc, 'reason', None) or exc})") from exc
    if "json" in kind:
        try:
            files = json.loads(body).get("files") or []
        except (ValueError, AttributeError):
            return None
        for f in files:
            if isinstance(f, dict) and f.get("filename") == filename and isinstance(f.get("url"), str):
                sha = (f.get("hashes") or {}).get("sha256")
                return Found(urllib.parse.urljoin(final, f["url"]), sha if isinstance(sha, str) else None)
        return None
    parser = Anchors()
    parser.feed(body.decode("utf-8", errors="replace"))
    for href in parser.hrefs:
        url, _, fragment = urllib.parse.urljoin(final, href).partition("#")
        if urllib.parse.unquote(url.rsplit("/", 1)[-1]) == filename:
            sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            return Found(url, sha)
    return None


class Anchors(HTMLParser):
    """The ``href`` of every ``<a>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def public_url(project: str, version: str, filename: str, sha256: str, index_url: str = PYPI_SIMPLE) -> str | None:
    """A public URL for a wheel found on local disk: the index's (PyPI's) file of that name and sha256, or for a
    PyTorch local build (``+cpu``, ``+cu128``...) its file on download.pytorch.org (a hint: not checked here), or None.

    Raises:
        FetchError: the index cannot be reached (the caller keeps no URL then).
    """
    found = find_in_index(index_url, project, filename)
    if found is not None and found.sha256 == sha256:
        return found.url
    label = version.partition("+")[2]
    if label and label.startswith(PYTORCH_LABELS):
        return f"{PYTORCH_INDEX}/{label}/{urllib.parse.quote(filename)}"
    return None
