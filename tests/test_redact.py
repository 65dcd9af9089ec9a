"""Credentials in URLs never reach a message: the one helper every printing path uses."""

from __future__ import annotations

import pytest

from exporter.redact import MASK, MAX_PRINTED, printable, redact, redact_url


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


@pytest.mark.parametrize(
    "url, message",
    [
        # A password with a space: no pattern finds its end in free text, the URL's own reading does.
        ("http://admin:my pa ss@127.0.0.1:9/x", "opening http://admin:my pa ss@127.0.0.1:9/x failed (my pa ss)"),
        # A URL taken for a path prints with one slash.
        ("mms://admin:S3CRETpw@127.0.0.1/x", "source mms:/admin:S3CRETpw@127.0.0.1/x does not exist"),
        # Vendors' own names for the password (Foscam's loginpas).
        (
            "http://cam/v?loginuse=admin&loginpas=S3CRET&user_password=S3CRET2",
            "GET /v?loginpas=S3CRET&user_password=S3CRET2",
        ),
    ],
)
def test_a_shown_urls_secrets_are_masked_wherever_they_appear_later(url, message):
    shown = redact_url(url)
    assert "S3CRET" not in shown and "my pa ss" not in shown, shown
    masked = redact(message)
    assert "S3CRET" not in masked and "my pa ss" not in masked, masked


def test_printable_is_one_line_of_plain_text_and_bounded():
    assert printable("a\nb\r\x1b]0;title\x07\u202e\x00") == "a\\nb\\r\\x1b]0;title\\x07\\u202e\\x00"
    assert printable("rtsp://u:pw@h/x") == f"rtsp://u:{MASK}@h/x"
    long = printable("k" * 10_000_000)
    assert len(long) < MAX_PRINTED + 100 and "characters left out" in long


def test_ordinary_names_and_short_words_are_left_alone():
    """Only whole secret words name a secret parameter, and query values are not remembered:
    masking author=bob once masked every later "bob"."""
    shown = redact_url("http://h/v?keyframe=1&author=bob&design=d&X-Amz-Signature=zz&api_key=k&pwd=abc")
    assert shown == f"http://h/v?keyframe=1&author=bob&design=d&X-Amz-Signature={MASK}&api_key={MASK}&pwd={MASK}"
    assert redact("bob@example.com wrote abc frames") == "bob@example.com wrote abc frames"
