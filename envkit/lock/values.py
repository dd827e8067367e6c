"""Checks of the single values users hand to envkit in specs and lockfiles, shared by both parsers.

A spec or a lock may come from someone else, and its values reach file paths (the wheel cache), the image config, the
requirements file and image labels. So every pattern here is applied with ``fullmatch`` (a ``$`` would let a
trailing newline through, and a newline there adds a line), and error messages show values through :func:`shown`,
which keeps them on one line (it lives in :mod:`envkit.errors` so that the record parser uses it too).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import VERSION_PATTERN, Version

from envkit.errors import shown

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # a spec's or lock's name: it becomes an image tag
PYTHON = re.compile(r"3\.\d{1,2}")  # major.minor
PLATFORM = re.compile(r"(x86_64|aarch64)-manylinux_2_(\d{1,2})")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROJECT = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")  # PEP 508 project names
VERSION = re.compile(VERSION_PATTERN, re.VERBOSE | re.IGNORECASE)  # PEP 440
SHA256 = re.compile(r"[0-9a-f]{64}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")  # name[:tag][@digest] or an image ID
FULL_PYTHON = re.compile(r"[0-9][0-9A-Za-z.+]{0,31}")  # the base's Python, e.g. 3.11.2 or 3.13.0rc1
URL_SCHEMES = ("https", "http", "file", "")  # "" is a bare local path
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

__all__ = ["shown"]  # with the patterns and checks below; shown lives in envkit.errors, for every parser


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (a newline, an escape sequence's ESC, NUL...)."""
    return _CONTROL.search(text) is not None


def python_problem(value: Any) -> str | None:
    """Why ``value`` is not a ``major.minor`` Python version, or None; a YAML float gets its own reason."""
    if isinstance(value, float):
        # An unquoted 3.10 is the float 3.1: the same text would name another Python.
        return f'{value} is a YAML number (an unquoted 3.10 reads as 3.1); quote it ("3.10")'
    if not isinstance(value, str) or not PYTHON.fullmatch(value):
        return f'{shown(value)} must be a major.minor version such as "3.11"'
    return None


def wheel_filename_problem(filename: str, name: str, version: str) -> str | None:
    """Why ``filename`` is not the bare wheel file name of ``name`` ``version``, or None.

    The name becomes a path in the wheel cache and in the build context, so a path separator, ``..``, a leading
    dot or a control character is refused before the wheel-name grammar is checked.
    """
    bad = (not filename or filename.startswith(".") or ".." in filename or has_control(filename)
           or any(c in filename for c in "/\\\0"))
    try:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(filename) if not bad else (None, None, None, None)
    except ValueError:  # InvalidWheelFilename, InvalidVersion
        bad = True
    if bad:
        return (f"file name {shown(filename)} is not a valid wheel file name "
                f"(a bare name such as {canonicalize_name(name).replace('-', '_')}-{version}-py3-none-any.whl)")
    if wheel_name != canonicalize_name(name):
        return f"file name {shown(filename)} is for {wheel_name}, not {name}"
    if wheel_version != Version(version):
        return f"file name {shown(filename)} is version {wheel_version}, not {version}"
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a wheel's source, or None: only https, http, file URLs and bare paths."""
    if has_control(url) or any(c.isspace() for c in url):
        return f"url {shown(url)} contains a control character or a space"
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError:
        scheme = None
    if scheme not in URL_SCHEMES:
        return f"url {shown(url)} must be an https, http or file URL"
    return None
