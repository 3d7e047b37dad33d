"""TLS between a real gRPC server and client on a loopback port, with the development PKI."""

from concurrent import futures

import grpc
import pytest

from fedrl.wire.tls import (
    channel_credentials,
    ensure_plaintext_allowed,
    is_loopback,
    server_credentials,
    write_dev_pki,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A development set with an extra LAN name and one client; and a second, unrelated set."""
    ours = tmp_path_factory.mktemp("pki")
    write_dev_pki(ours, hosts=["edge-server.lan"], clients=["robot-1"])
    other = tmp_path_factory.mktemp("other")
    write_dev_pki(other, clients=["intruder"])
    return ours, other


def _echo_peer_name(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Answer with the common name of the client's certificate, or the request when there is none."""
    names = context.auth_context().get("x509_common_name", [])
    return names[0] if names else request


@pytest.fixture
def start_server():
    """Start an echo server with the given credentials on a free loopback port; returns the port."""
    servers = []

    def start(credentials: grpc.ServerCredentials) -> int:
        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo_peer_name)}
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(grace=None)


def _call(target: str, credentials: grpc.ChannelCredentials, options=()) -> bytes:
    with grpc.secure_channel(target, credentials, options=list(options)) as channel:
        return channel.unary_unary("/test.Echo/Echo")(b"hello", timeout=10)


def _refused(target: str, credentials: grpc.ChannelCredentials, options=()) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(target, credentials, options)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_trusting_the_ca_talks_to_the_server_by_name_and_by_ip(pki, start_server):
    ours, _ = pki
    port = start_server(server_credentials(ours / "server.pem", ours / "server.key"))
    trusting = channel_credentials(ours / "ca.pem")
    assert _call(f"localhost:{port}", trusting) == b"hello"
    assert _call(f"127.0.0.1:{port}", trusting) == b"hello"


def test_the_server_certificate_names_the_extra_hosts_and_no_others(pki, start_server):
    ours, _ = pki
    port = start_server(server_credentials(ours / "server.pem", ours / "server.key"))
    trusting = channel_credentials(ours / "ca.pem")
    as_lan_name = [("grpc.ssl_target_name_override", "edge-server.lan")]
    assert _call(f"127.0.0.1:{port}", trusting, as_lan_name) == b"hello"
    _refused(f"127.0.0.1:{port}", trusting, [("grpc.ssl_target_name_override", "elsewhere.lan")])


def test_a_client_trusting_another_ca_is_refused(pki, start_server):
    ours, other = pki
    port = start_server(server_credentials(ours / "server.pem", ours / "server.key"))
    _refused(f"localhost:{port}", channel_credentials(other / "ca.pem"))


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(pki, start_server):
    ours, other = pki
    port = start_server(server_credentials(ours / "server.pem", ours / "server.key", client_ca=ours / "ca.pem"))
    target = f"localhost:{port}"
    _refused(target, channel_credentials(ours / "ca.pem"))
    _refused(target, channel_credentials(ours / "ca.pem", other / "client-intruder.pem", other / "client-intruder.key"))
    robot = channel_credentials(ours / "ca.pem", ours / "client-robot-1.pem", ours / "client-robot-1.key")
    assert _call(target, robot) == b"robot-1"  # the server sees the client's name in its certificate


def test_loaders_name_the_file_that_is_missing_or_wrong(pki, tmp_path):
    ours, other = pki
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(FileNotFoundError, match="nowhere.pem"):
        channel_credentials(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="garbage.pem.*not a PEM certificate"):
        server_credentials(garbage, ours / "server.key")
    with pytest.raises(ValueError, match="garbage.pem.*private key"):
        server_credentials(ours / "server.pem", garbage)
    with pytest.raises(ValueError, match="server.key is not the private key of"):
        server_credentials(other / "server.pem", ours / "server.key")
    with pytest.raises(ValueError, match="both"):
        channel_credentials(ours / "ca.pem", cert=ours / "client-robot-1.pem")


@pytest.mark.parametrize(
    "address",
    [
        "localhost:50051",
        "127.0.0.1:0",
        "127.0.0.5:80",
        "[::1]:50051",
        "::1",
        "dns:///localhost:50051",
        "ipv4:127.0.0.1:9",
        "unix:/tmp/fedrl.sock",
    ],
)
def test_plain_text_is_allowed_on_loopback_when_asked_for(address):
    assert is_loopback(address)
    ensure_plaintext_allowed(address, allow_plaintext=True)
    with pytest.raises(ValueError, match="no TLS certificates"):
        ensure_plaintext_allowed(address, allow_plaintext=False)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:50051",
        "[::]:50051",
        "192.168.1.20:50051",
        "server.lan:50051",
        "dns:///server.lan:443",
        "localhost.evil.com:1",
    ],
)
def test_plain_text_is_refused_off_loopback_even_when_asked_for(address):
    assert not is_loopback(address)
    with pytest.raises(ValueError, match="not a loopback address"):
        ensure_plaintext_allowed(address, allow_plaintext=True)
