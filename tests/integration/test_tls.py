"""TLS: certificates are verified by default, and a caller's SSL context is honoured."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

import batch_audience as ba


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI), made before any loop runs."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[str]:
    """An https server on 127.0.0.1 answering 2.x view with a self-signed certificate."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def view(request: web.Request) -> web.Response:
        return web.json_response({"name": request.query["name"], "type": "CUSTOM_ID"})

    app = web.Application()
    app.router.add_get("/2.8/audiences/view", view)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_certificates_are_verified_by_default(tls_server: str) -> None:
    """A self-signed certificate is refused with a ConnectError, not trusted."""
    async with ba.AudienceClient(
        "rest-key", "project_x", base_url=tls_server, retry=ba.RetryPolicy(max_attempts=1)
    ) as client:
        with pytest.raises(ba.ConnectError) as caught:
            await client.view("a")
    assert "Certificate" in caught.value.cause or "SSL" in caught.value.cause


async def test_a_custom_ssl_context_is_honoured(
    tls_server: str, certificate: tuple[Path, Path]
) -> None:
    """An SSLContext that trusts the certificate makes the same call succeed."""
    context = ssl.create_default_context(cafile=str(certificate[0]))
    async with ba.AudienceClient("rest-key", "project_x", base_url=tls_server, ssl=context) as c:
        info = await c.view("a")
    assert info.name == "a"
