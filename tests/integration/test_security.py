"""TLS, mTLS and bearer tokens against a real in-process server (certificates made here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import SegmenterClient
from polypstream.config import ServerConfig, TlsFiles
from polypstream.frames import FrameOptions
from polypstream.pipeline import Pipeline
from polypstream.security import SecurityConfigError, client_credentials, load_token
from polypstream.server import serve_in_thread
from tests.conftest import square_image

TOKEN = "s3cret-token-for-tests"


def _one_frame(client: SegmenterClient) -> str:
    from polypstream.client import encode_frame

    frame = encode_frame(square_image(), "sec", 0, FrameOptions(no_drop=True))
    return next(iter(client.segment(iter([frame])))).status


def test_tls_serves_clients_that_trust_the_ca_only(pipeline: Pipeline, pki: dict[str, Path]) -> None:
    config = ServerConfig(address="127.0.0.1:0", tls=TlsFiles(pki["server_cert"], pki["server_key"]))
    with serve_in_thread(pipeline, config) as running:
        with SegmenterClient(running.address, credentials=client_credentials(pki["ca"])) as client:
            assert _one_frame(client) == "OK"
        with SegmenterClient(running.address) as plaintext, pytest.raises(grpc.RpcError) as err:
            plaintext.model_info()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate(pipeline: Pipeline, pki: dict[str, Path]) -> None:
    tls = TlsFiles(pki["server_cert"], pki["server_key"], client_ca=pki["ca"])
    with serve_in_thread(pipeline, ServerConfig(address="127.0.0.1:0", tls=tls)) as running:
        with_cert = client_credentials(pki["ca"], pki["client_cert"], pki["client_key"])
        with SegmenterClient(running.address, credentials=with_cert) as client:
            assert client.model_info().name == "tiny-brightness"
        anonymous = SegmenterClient(running.address, credentials=client_credentials(pki["ca"]))
        with anonymous, pytest.raises(grpc.RpcError) as err:
            anonymous.model_info()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_token_is_required_except_for_health(pipeline: Pipeline, registry: CollectorRegistry) -> None:
    with serve_in_thread(pipeline, ServerConfig(address="127.0.0.1:0", token=TOKEN)) as running:
        for token in (None, "wrong-token"):
            with SegmenterClient(running.address, token=token) as client:
                with pytest.raises(grpc.RpcError) as err:
                    client.model_info()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as err:
                    _one_frame(client)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert client.health() == "SERVING"  # probes need no token
        with SegmenterClient(running.address, token=TOKEN) as client:
            assert _one_frame(client) == "OK"
    refused = registry.get_sample_value
    assert (
        refused("polypstream_unauthenticated_requests_total", {"method": "/polypstream.v1.Segmenter/GetModelInfo"}) == 2
    )
    assert refused("polypstream_unauthenticated_requests_total", {"method": "/polypstream.v1.Segmenter/Segment"}) == 2


def test_the_token_counts_only_as_the_authorization_header(pipeline: Pipeline) -> None:
    config = ServerConfig(address="127.0.0.1:0", token=TOKEN)
    with serve_in_thread(pipeline, config) as running, SegmenterClient(running.address) as client:
        for key in ("a-token", "x-authorization", "authorizatio", "authorizations"):  # the right token, elsewhere
            with pytest.raises(grpc.RpcError) as err:
                client.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=[(key, f"Bearer {TOKEN}")])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, key
        assert client.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=[("authorization", f"Bearer {TOKEN}")])


def test_a_client_certificate_and_its_key_come_together(pki: dict[str, Path]) -> None:
    for cert, key in ((pki["client_cert"], None), (None, pki["client_key"])):
        with pytest.raises(SecurityConfigError, match="a client certificate needs its key, and a key its certificate"):
            client_credentials(pki["ca"], cert, key)
    assert client_credentials(pki["ca"], pki["client_cert"], pki["client_key"]) is not None


def test_tokens_come_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLYPSTREAM_TOKEN", raising=False)
    assert load_token(None) is None
    monkeypatch.setenv("POLYPSTREAM_TOKEN", "from-env")
    assert load_token(None) == "from-env"
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert load_token(path) == "from-file"
    path.write_text("\n")
    with pytest.raises(SecurityConfigError, match="token file is empty"):
        load_token(path)
    with pytest.raises(SecurityConfigError, match="cannot read token file"):
        load_token(tmp_path / "missing")


def test_server_config_repr_hides_the_token() -> None:
    assert TOKEN not in repr(ServerConfig(token=TOKEN))


def test_the_health_port_serves_health_only_in_plaintext(pipeline: Pipeline, pki: dict[str, Path]) -> None:
    tls = TlsFiles(pki["server_cert"], pki["server_key"])
    config = ServerConfig(address="127.0.0.1:0", tls=tls, token=TOKEN, health_address="127.0.0.1:0")
    with serve_in_thread(pipeline, config) as running, SegmenterClient(running.health_address) as probe:
        assert probe.health() == "SERVING"
        with pytest.raises(grpc.RpcError) as err:
            probe.model_info()  # nothing but health there, token or not
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_refused_call_returns_only_once_no_frame_is_being_made(pipeline: Pipeline) -> None:
    # gRPC takes the frames on a thread of its own. A call that ends at once (refused here)
    # must not leave that thread inside the making of a frame (in the CLI: reading a video,
    # OpenCV's native code), nor let it start another: a thread in native code when the
    # interpreter exits aborts the process ("FATAL: exception not rethrown", exit 134).
    from polypstream.client import encode_frame

    made, making = [], threading.Event()

    def frames() -> Iterator[pb.Frame]:
        for index in range(100):
            making.set()
            time.sleep(0.3)  # a slow read
            made.append(index)
            making.clear()
            yield encode_frame(square_image(), "slow", index, FrameOptions(no_drop=True))

    with serve_in_thread(pipeline, ServerConfig(address="127.0.0.1:0", token=TOKEN)) as running:
        with SegmenterClient(running.address, token="wrong-token") as client, pytest.raises(grpc.RpcError) as err:
            list(client.segment(frames()))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not making.is_set()  # the frame being made when the call ended was waited for
        done = len(made)
        time.sleep(0.5)
        assert len(made) == done and not making.is_set()  # and no other was started


def test_a_client_without_tls_at_a_tls_server_is_told_to_pass_the_ca(
    pipeline: Pipeline, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from polypstream import cli

    config = ServerConfig(address="127.0.0.1:0", tls=TlsFiles(pki["server_cert"], pki["server_key"]))
    with serve_in_thread(pipeline, config) as running:
        assert cli.main(["health", "--server", running.address, "--timeout", "1"]) == 1
        assert capsys.readouterr().out == (
            f"UNREACHABLE: no polypstream server answered at {running.address} within 1 s (something listens there "
            "but answers no plaintext gRPC: if the server uses TLS, pass --tls-ca (and --tls-cert/--tls-key where it "
            "asks for client certificates))\n"
        )
        # TLS on, but trusting another CA (the client's own certificate stands in for one)
        other_ca = ["--tls-ca", str(pki["client_cert"])]
        assert cli.main(["health", "--server", running.address, "--timeout", "1", *other_ca]) == 1
        assert "something listens there, but the TLS handshake failed" in capsys.readouterr().out
        with SegmenterClient(running.address, credentials=client_credentials(pki["ca"])) as client:
            assert client.health() == "SERVING"  # the right CA: it answers
    assert "is `polypstream serve` running there?" in cli.unanswered(running.address, tls=False)  # gone now
    assert not cli.something_listens("unix:/tmp/no-such.sock")
