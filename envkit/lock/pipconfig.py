"""This host's pip configuration (find-links, indexes), read through pip itself rather than guessed paths.

uv does not read pip's configuration, so a host whose wheels come through pip.conf (a local find-links folder, a
mirror) would resolve differently under uv. ``pip config list`` gives every layer (global, user, site, PIP_*
environment) in the precedence pip applies.
"""

from __future__ import annotations

import subprocess
import sys

from envkit.lock.resolver import Sources

_KEYS = {"index-url": "index_url", "extra-index-url": "indexes", "find-links": "find_links"}


def parse_pip_config_list(text: str) -> Sources:
    """Parse ``pip config list`` output (lines like ``global.find-links='/opt/wheels'``)."""
    found: dict[str, list[str]] = {"index_url": [], "indexes": [], "find_links": []}
    for line in text.splitlines():
        if "=" not in line or "." not in line.split("=", 1)[0]:
            continue
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[1].strip()
        if option not in _KEYS:
            continue
        value = value.strip().strip("'\"")
        for item in value.split():
            if item not in found[_KEYS[option]]:
                found[_KEYS[option]].append(item)
    return Sources(
        index_url=found["index_url"][-1] if found["index_url"] else None,
        indexes=tuple(found["indexes"]),
        find_links=tuple(found["find_links"]),
    )


def host_pip_sources(python: str = sys.executable) -> Sources:
    """The host's pip sources; empty when pip is unavailable (never fatal)."""
    try:
        proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return Sources()
    return parse_pip_config_list(proc.stdout) if proc.returncode == 0 else Sources()


def merge(first: Sources, second: Sources) -> Sources:
    """Spec sources first, then the host's; duplicates dropped, order kept."""
    def uniq(*seqs: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for seq in seqs:
            out += [s for s in seq if s not in out]
        return tuple(out)

    return Sources(
        index_url=first.index_url or second.index_url,
        indexes=uniq(first.indexes, second.indexes),
        find_links=uniq(first.find_links, second.find_links),
    )
