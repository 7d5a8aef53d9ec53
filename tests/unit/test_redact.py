"""No device token reaches a log line, whoever wrote the line."""

from __future__ import annotations

import logging

from blynk_server.model import new_token
from blynk_server.redact import MASK, RedactingFormatter, redact


def test_query_parameters_legacy_paths_and_bare_tokens_are_masked():
    token = new_token()
    lines = [
        f"GET /external/api/get?token={token}&v1 HTTP/1.1",
        f"http error path=/{token}/update/v1 status=400",
        f"http error path=/static8/get/v1 token={token}",
        f"device token {token} replaced",
        f"Bad request line b'GET /{token}/pin/V1' (token={token[:10]})",
    ]
    for line in lines:
        out = redact(line)
        assert token not in out and token[:10] not in out.split("token=")[-1], out
        assert MASK in out


def test_other_text_is_left_alone():
    md5 = "0123456789abcdef0123456789abcdef"
    line = f"firmware md5={md5} path=/external/api/update status=200 device=12"
    assert redact(line) == line


def test_the_formatter_masks_tracebacks_too():
    token = new_token()
    try:
        raise ValueError(f"bad url /external/api/get?token={token}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed for %s", (token,), exc_info=True)
        import sys

        record.exc_info = sys.exc_info()
    text = RedactingFormatter("%(message)s").format(record)
    assert token not in text
    assert "ValueError" in text
