"""A session-wide S3 server on 127.0.0.1 (moto's ThreadedMotoServer), for s3:// tests.

    from tests.s3_fixture import moto_s3  # noqa: F401  (or list it in conftest.py)

    def test_x(moto_s3):
        moto_s3.create_bucket("b")
        moto_s3.client.put_object(Bucket="b", Key="k", Body=b"...")
        fs_opts = moto_s3.storage_options        # for fsspec / s3fs / data.storage_options

Fake credentials only ("testing"); the environment's AWS variables are restored afterwards.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import pytest

_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_DROP = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL")


@dataclass
class S3Server:
    endpoint_url: str
    port: int
    client: Any

    @property
    def storage_options(self) -> dict:
        return {"key": "testing", "secret": "testing", "endpoint_url": self.endpoint_url}

    def create_bucket(self, name: str) -> str:
        try:
            self.client.create_bucket(Bucket=name)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name


@contextlib.contextmanager
def _fake_aws_env():
    """Fake credentials in the environment (and none of the real ones) while a server runs; the
    environment's AWS variables are restored afterwards."""
    saved = {k: os.environ.get(k) for k in (*_ENV, *_DROP)}
    os.environ.update(_ENV)
    for k in _DROP:
        os.environ.pop(k, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _server(port: int) -> S3Server:
    import boto3
    ep = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    return S3Server(endpoint_url=ep, port=port, client=client)


@pytest.fixture(scope="session")
def moto_s3():
    pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    pytest.importorskip("boto3")
    with _fake_aws_env():
        from moto.server import ThreadedMotoServer

        srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        srv.start()
        try:
            yield _server(srv.get_host_and_port()[1])
        finally:
            srv.stop()


# ---- a server whose conditional writes are atomic, as S3's are (lease / compare-and-swap tests) ----
class _OneWriteAtATime:
    """WSGI middleware: one PUT/POST/DELETE at a time (reads run freely).

    moto 5.2.5 checks a conditional PUT's ``If-None-Match`` / ``If-Match`` and then stores the
    object without a lock (``moto/s3/responses.py`` ``put_object``), so two conditional PUTs in
    the same instant could in principle both pass, where S3 decides them atomically. Tests of code
    that relies on S3's guarantee run against this, so that they test that code and not moto.
    """

    def __init__(self, app):
        import threading
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))


@pytest.fixture(scope="session")
def moto_s3_atomic():
    """Like ``moto_s3`` (its own loopback server; buckets are shared with it, moto keeps them per
    process) but with atomic conditional writes (``_OneWriteAtATime``). Fake credentials only."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    pytest.importorskip("boto3")
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    with _fake_aws_env():
        srv = make_server("127.0.0.1", 0, _OneWriteAtATime(DomainDispatcherApplication(create_backend_app)), True,
                          request_handler=MotoRequestHandler)
        thread = threading.Thread(target=srv.serve_forever, name="moto-atomic", daemon=True)
        thread.start()
        try:
            yield _server(srv.server_address[1])
        finally:
            srv.shutdown()
            thread.join(timeout=10)
