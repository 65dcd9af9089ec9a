"""Credentials in URLs never reach a message: the one helper every printing path uses."""

from __future__ import annotations

import pytest

from exporter.redact import MASK, redact, redact_url


@pytest.mark.parametrize(
    "url, shown",
    [
        ("rtsp://admin:s3cr3tPW@192.0.2.7:554/stream1", f"rtsp://admin:{MASK}@192.0.2.7:554/stream1"),
        ("http://admin:s3cr3tPW@cam.local/video.mjpg", f"http://admin:{MASK}@cam.local/video.mjpg"),
        # An unescaped "@" in the password: the userinfo runs to the last "@" before the path.
        ("rtsp://admin:p@ss@cam/x", f"rtsp://admin:{MASK}@cam/x"),
        ("https://TOKEN123@host/a", f"https://{MASK}@host/a"),  # a user alone may be a token
        ("rtsp://cam/x?user=admin&password=s3cr3t&ch=1", f"rtsp://cam/x?user=admin&password={MASK}&ch=1"),
        ("http://h/x?PWD=a;Token=b#f", f"http://h/x?PWD={MASK};Token={MASK}#f"),
        ("grpc://user:pw@[::1]:8001", f"grpc://user:{MASK}@[::1]:8001"),
        # Nothing secret: unchanged.
        ("udp://127.0.0.1:5000", "udp://127.0.0.1:5000"),
        ("http://127.0.0.1:8000/v2/models/m/infer?x=1", "http://127.0.0.1:8000/v2/models/m/infer?x=1"),
        ("camera:0", "camera:0"),
    ],
)
def test_a_url_is_shown_without_its_secrets(url, shown):
    assert redact_url(url) == shown


def test_every_url_in_a_message_is_masked():
    """Libraries' messages repeat the URL anywhere in their text, sometimes twice."""
    message = (
        "could not open rtsp://a:one@cam1/x (timeout); retried http://b:two@cam2:80/y?token=three, "
        "then rtsp://a:one@cam1/x"
    )
    masked = redact(message)
    assert not any(secret in masked for secret in ("one", "two", "three")), masked
    assert masked.count(MASK) == 4 and masked.startswith("could not open rtsp://a:***@cam1/x (timeout)")
