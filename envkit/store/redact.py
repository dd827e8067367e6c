"""Secrets out of run records: which names are secret, and what of a value can be kept.

A record travels (``envkit export``, bundles handed to reviewers), so every value it holds from the user is cleaned
on the way in: the job's environment, the envkit command line and the script's arguments.

- **Names** are split into parts (on ``_``, ``-``, ``.`` and camelCase) and a name is secret when one part is in
  :data:`SECRET_PARTS` (``HF_TOKEN``, ``DB_PASS``, ``GITHUB_PAT``), ends with one of :data:`SECRET_SUFFIXES`
  (``PGPASSWORD``), or the whole name matches :data:`SECRET_NAMES` (``*CONNECTION_STRING``). Substrings do not
  count: ``TOKENIZERS_PARALLELISM``, ``MAX_TOKENS`` and ``KEYBOARD`` are kept, so a replay gets them back.
- **Values** of other names keep what is useful: a URL's password is replaced (``http://me:<redacted>@proxy``; a
  user name alone is replaced too when it is longer than a user name, as tokens are put there:
  ``https://<redacted>@github.com``, while ``ssh://git@host`` is kept), and so is the value of a secret key inside
  a value (``Password=<redacted>;``, ``?access_token=<redacted>``).
- **Arguments**: ``--token VALUE``, ``--api-key=VALUE`` and ``NAME=VALUE`` with a secret name (``--env
  HF_TOKEN=...``), and every value cleaned as above.

Everything is idempotent, so a record read and written again does not change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REDACTED = "<redacted>"

SECRET_PARTS = frozenset({
    "TOKEN", "SECRET", "SECRETS", "KEY", "KEYS", "APIKEY", "PASSWORD", "PASSWORDS", "PASSWD", "PASS", "PWD",
    "PASSPHRASE", "CRED", "CREDS", "CREDENTIAL", "CREDENTIALS", "AUTH", "AUTHORIZATION", "DSN", "PAT", "PRIVATE",
    "COOKIE", "JWT", "BEARER",
})
# Parts glued to another word, as in PGPASSWORD or GITHUBTOKEN.
SECRET_SUFFIXES = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "APIKEY")
# Whole names (upper-cased), for secrets whose parts are ordinary words.
SECRET_NAMES = (re.compile(r".*CONNECTION_?STRING"), re.compile(r".*CONN_?STR"))
# The shell's working directories: PWD there is not a password.
NOT_SECRET = frozenset({"PWD", "OLDPWD"})

_PARTS = re.compile(r"[_\-.]+|(?<=[a-z0-9])(?=[A-Z])")
# scheme://userinfo@ : greedy up to the authority's last '@', as an unencoded '@' in a password is common.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")
# key=value inside a value: connection strings (;), query strings (& ?), space-separated options.
_PAIR = re.compile(r"(?P<pre>^|[;&?,\s])(?P<key>[A-Za-z][A-Za-z0-9_.\- ]*?)(?P<eq>\s*=\s*)(?P<val>[^;&,\s]*)")
_MAX_USER = 20  # a URL user name longer than this, without a password, is taken for a token (ghp_..., hf_...)
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)=(?P<val>.*)", re.DOTALL)


def is_secret_name(name: str) -> bool:
    """Whether a variable, option or key name names a secret (see the module's docstring for the rule)."""
    upper = name.strip().upper()
    if upper in NOT_SECRET:
        return False
    if any(p.fullmatch(upper) for p in SECRET_NAMES):
        return True
    parts = [p.upper() for p in _PARTS.split(name.strip()) if p]
    return any(p in SECRET_PARTS or p.endswith(SECRET_SUFFIXES) for p in parts)


def scrub_value(value: str) -> str:
    """``value`` with URL credentials and the values of secret keys inside it replaced by :data:`REDACTED`."""
    def userinfo(m: re.Match[str]) -> str:
        user, colon, _ = m["userinfo"].partition(":")
        if colon:
            return f"{m['scheme']}{user}:{REDACTED}@"
        return m.group(0) if len(user) <= _MAX_USER else f"{m['scheme']}{REDACTED}@"

    def pair(m: re.Match[str]) -> str:
        if not m["val"] or not is_secret_name(m["key"]):
            return m.group(0)
        return f"{m['pre']}{m['key']}{m['eq']}{REDACTED}"

    return _PAIR.sub(pair, _URL_USERINFO.sub(userinfo, value))


def redact_value(name: str, value: str) -> str:
    """The recorded form of ``name=value``: all of it hidden for a secret name (an empty value is kept: replay can
    restore it), else :func:`scrub_value`."""
    if is_secret_name(name):
        return REDACTED if value else value
    return scrub_value(value)


def redact_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with every value as :func:`redact_value` records it."""
    return {k: redact_value(k, v) for k, v in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with secret option values and assignments hidden (see the module's docstring)."""
    out: list[str] = []
    hide_next = False
    for token in argv:
        if hide_next:
            hide_next = False
            if not token.startswith("-"):
                out.append(REDACTED if token else token)
                continue
        if token.startswith("-") and token.lstrip("-"):
            option, eq, value = token.partition("=")
            if eq:
                secret = is_secret_name(option.lstrip("-"))
                out.append(f"{option}={redact_value(option, value) if secret else _assignment(value)}")
            else:
                hide_next = is_secret_name(option.lstrip("-"))
                out.append(token)
            continue
        out.append(_assignment(token))
    return out


def is_redacted(value: str) -> bool:
    """Whether a recorded value lost something to redaction (a replay cannot restore it)."""
    return REDACTED in value


def redaction_note(environment: Mapping[str, str], before: Mapping[str, str], command_changed: bool,
                   args_changed: bool) -> str | None:
    """The record's note saying what was redacted, or None when nothing was."""
    names = [k for k, v in environment.items() if v != before.get(k)]
    what = [f"environment {', '.join(names)}"] if names else []
    what += ["the envkit command line"] if command_changed else []
    what += ["the script's arguments"] if args_changed else []
    if not what:
        return None
    return f"secrets redacted before recording (a replay cannot restore them): {'; '.join(what)}"


def _assignment(token: str) -> str:
    m = _ASSIGNMENT.fullmatch(token)
    if m and "://" not in m["key"]:
        return f"{m['key']}={redact_value(m['key'], m['val'])}"
    return scrub_value(token)
