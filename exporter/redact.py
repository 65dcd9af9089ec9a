"""What may be printed of a URL: a stream's or a server's credentials never reach a message,
a summary or a log line.

Cameras are commonly opened as ``rtsp://admin:password@host/...`` or with the password in
the query (``?user=admin&password=...``); OpenCV's and the transports' own messages may repeat
the URL. Every path that prints or logs a source or a server passes its text through
``redact``; ``redact_url`` is the same for one URL.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redact", "redact_url"]

MASK = "***"

# scheme://userinfo@ — the userinfo runs to the last "@" before the host's path: an unescaped
# "@" inside a password still belongs to it (as FFmpeg reads it).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#]*)@")
# Query parameters that carry a secret (camera vendors' URLs, signed links).
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|passphrase|token|access_token|auth|key|api_key|apikey|secret|"
    r"signature|sig|x-amz-signature|x-amz-credential|x-amz-security-token)=)(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


def _userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    # A user alone (no ":") may itself be a token (https://TOKEN@host): masked too.
    shown = f"{user}:{MASK}" if colon else MASK
    return f"{match['scheme']}{shown}@"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it, and every secret query value, masked."""
    text = _USERINFO.sub(_userinfo, text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_url(url: str) -> str:
    """One URL as it may be printed (``rtsp://admin:***@camera/stream``)."""
    return redact(url)
