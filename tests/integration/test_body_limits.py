"""#15 §5: oversized bodies are refused with 413 before anything parses them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MB = 1024 * 1024


def test_a_50_mb_points_body_is_refused_before_parsing(
    live_server_proc: Server, alice_token: str
) -> None:
    body = b'{"points": [' + b" " * (50 * MB) + b"]}"
    response = httpx.post(
        f"{live_server_proc.url}/api/runs/1/points",
        content=body,
        headers={"Authorization": f"Bearer {alice_token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    assert "16 MiB" in response.json()["detail"]


def test_a_streamed_body_without_length_is_cut_at_the_limit(live_server_proc: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * MB

    response = httpx.post(
        f"{live_server_proc.url}/accounts/login/", content=chunks(), timeout=60
    )  # no Content-Length: chunked
    assert response.status_code == 413
    assert "too large" in response.text


def test_an_anonymous_huge_login_post_is_refused(live_server_proc: Server) -> None:
    response = httpx.post(
        f"{live_server_proc.url}/accounts/login/",
        content=b"a" * (20 * MB),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 413


def test_raw_logprob_uploads_keep_their_larger_limit(
    live_server_proc: Server, alice_token: str
) -> None:
    response = httpx.post(
        f"{live_server_proc.url}/api/runs/999999/logprobs.msgpack",
        content=b"\x00" * (20 * MB),
        headers={"Authorization": f"Bearer {alice_token}"},
        timeout=60,
    )
    assert response.status_code != 413
