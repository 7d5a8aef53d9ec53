"""The ready line the server prints once it listens, as blynk_server.testing reads it."""

from __future__ import annotations

import pytest

from blynk_server.testing import Ready, ServerStartError, parse_ready, server_argv, start_server


def test_ipv4_without_tls() -> None:
    line = "blynk-server ready hardware=127.0.0.1:41234 admin=127.0.0.1:41235"
    assert parse_ready(line) == Ready(("127.0.0.1", 41234), ("127.0.0.1", 41235), None)


def test_tls_part() -> None:
    line = "blynk-server ready hardware=0.0.0.0:8080 admin=127.0.0.1:7070 tls=0.0.0.0:8443\n"
    assert parse_ready(line) == Ready(("0.0.0.0", 8080), ("127.0.0.1", 7070), ("0.0.0.0", 8443))


def test_ipv6_brackets_are_dropped() -> None:
    line = "blynk-server ready hardware=[::1]:1234 admin=[::1]:1235 tls=[fe80::1%eth0]:8443"
    ready = parse_ready(line)
    assert ready == Ready(("::1", 1234), ("::1", 1235), ("fe80::1%eth0", 8443))


def test_found_inside_a_log_line() -> None:
    line = "2026-11-23 02:46:32 INFO blynk-server ready hardware=10.0.0.5:80 admin=[::]:9000"
    assert parse_ready(line) == Ready(("10.0.0.5", 80), ("::", 9000))


@pytest.mark.parametrize(
    "line",
    [
        "",
        '#define BLYNK_TEMPLATE_ID "TMPL123"',
        "blynk-server starting",
        "blynk-server ready hardware=127.0.0.1:1",
    ],
)
def test_other_lines(line: str) -> None:
    assert parse_ready(line) is None


def test_malformed_address_is_an_error() -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_ready("blynk-server ready hardware=127.0.0.1 admin=127.0.0.1:7070")


def test_argv_puts_extra_flags_last(tmp_path) -> None:
    argv = server_argv(tmp_path / "data", "--log-level", "WARNING")
    assert argv[1:] == [
        "-m", "blynk_server", "serve", "--data-dir", str(tmp_path / "data"),
        "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--log-level", "WARNING",
    ]  # fmt: skip


def test_a_server_that_exits_is_reported_with_its_stderr(tmp_path) -> None:
    log = tmp_path / "stderr.log"
    with pytest.raises(ServerStartError, match=r"(?s)exited \(exit code 2\).*--no-such-flag"):
        start_server(tmp_path / "data", "--no-such-flag", stderr=log, cwd=tmp_path, timeout=60)
