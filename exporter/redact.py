"""What may be printed: a stream's or a server's credentials never reach a message, a summary
or a log line, and a message stays one line of plain text whatever a user or a peer put in it.

Cameras are commonly opened as ``rtsp://admin:password@host/...`` or with the password in
the query (``?user=admin&loginpas=...``); OpenCV's, FFmpeg's and the transports' own messages
may repeat the URL, sometimes mangled (a URL taken for a path loses a slash). Every path
that shows a source or a server passes it through ``redact_url``, which also remembers its
secrets, so that ``redact`` masks them in any later text even where no pattern finds them (a
password with a space); the CLI passes every line it prints to stderr through ``printable``.
"""

from __future__ import annotations

import re
import threading

__all__ = ["MASK", "MAX_PRINTED", "printable", "redact", "redact_url"]

MASK = "***"

# scheme:// (or scheme:/, as a URL taken for a path prints) then the userinfo, which runs to
# the last "@" before the host's path: an unescaped "@" in a password still belongs to it.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*:/{1,3})(?P<userinfo>[^\s/?#]*)@")
# Query parameters whose name says they carry a secret: vendors spell them freely (password,
# user_password, loginpas, pwd, token, api_key, X-Amz-Signature, X-Amz-Credential, ...). The
# words stand whole between "_", "-" or "." (so keyframe, author and design are not secrets);
# "pas" and "pass" also end a name (loginpas).
_SECRET_WORDS = (
    r"(?:pas|pass|passwd|password|passphrase|pwd|token|secret|key|apikey|auth|sig|signature|cred|credential)"
)
_SECRET_PARAM = re.compile(
    rf"(?P<key>[?&;](?:[\w.\-]*[_.\-])?{_SECRET_WORDS}(?:[_.\-][\w.\-]*)?=|[?&;]\w*pas=)(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)
# A remembered secret shorter than this is left to the patterns: masking a short password
# wherever its letters occur ("abc" in "wrote abc frames") would garble the messages.
_MIN_REMEMBERED = 6
_remembered: set[str] = set()
_lock = threading.Lock()

# The longest line printed: a message naming a key, a path or a peer's answer holds what the
# file or the peer put there (a 10 MB key name was seen); the start and the end tell the rest.
MAX_PRINTED = 2000
# C0 and C1 controls (newlines, escapes that retitle a terminal or move its cursor), DEL, and
# the Unicode line separators and bidirectional overrides that make text read as other text.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    # A user alone (no ":") may itself be a token (https://TOKEN@host): masked too.
    shown = f"{user}:{MASK}" if colon else MASK
    return f"{match['scheme']}{shown}@"


def _secrets(url: str) -> list[str]:
    """The password and secret query values of one URL, read as a URL (so a password may hold
    spaces: the authority ends only at the first "/", "?" or "#" after "://")."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return []
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    found = []
    if at:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    # Query values are not remembered: the pattern masks them wherever the URL shows again.
    return [secret for secret in found if len(secret) >= _MIN_REMEMBERED]


def redact(text: str) -> str:
    """``text`` with every secret ``redact_url`` has seen, the password of every URL in it and
    every secret query value masked."""
    with _lock:
        remembered = sorted(_remembered, key=len, reverse=True)
    for secret in remembered:
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(_userinfo, text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_url(url: str) -> str:
    """One URL as it may be printed (``rtsp://admin:***@camera/stream``); its secrets are
    remembered, so that ``redact`` masks them in any message that repeats them."""
    secrets = _secrets(url)
    with _lock:
        _remembered.update(secrets)
    return redact(url)


def _escape(match: re.Match[str]) -> str:
    return match[0].encode("unicode_escape").decode("ascii")


def printable(text: str, limit: int = MAX_PRINTED) -> str:
    """``text`` redacted, as one line of plain text of at most about ``limit`` characters:
    control characters (a newline in a file name, a terminal escape in a peer's answer) shown
    as escapes, never acted on, and the middle of an overlong text left out."""
    text = _CONTROLS.sub(_escape, redact(text))
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... ({len(text) - 2 * half:,} characters left out) ... {text[-half:]}"
