"""HTTPS listeners: certificates by SNI, protocol versions, reload from the files while
connections stay open, client certificates, redirects to HTTPS, and `config check`.

Certificates come from a test CA made by trustme; clients are Python's ssl module."""

from __future__ import annotations

import datetime
import json
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from bunancer.client import ApiClient
from tests.conftest import Backend, Proxy, StartProxy, single_process_only
from tests.helpers import Process, RawClient, run_cli, spawn, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(ca: trustme.CA, directory: Path, stem: str, *names: str, **dates: object) -> str:
    """A certificate for `names` as `stem.pem` and `stem.key`; the TOML table naming them."""
    leaf = ca.issue_cert(*names, **dates)  # type: ignore[arg-type]
    leaf.cert_chain_pems[0].write_to_path(directory / f"{stem}.pem")
    leaf.private_key_pem.write_to_path(directory / f"{stem}.key")
    return f'{{ cert = "{directory / stem}.pem", key = "{directory / stem}.key" }}'


def client_context(ca: trustme.CA, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # some tests send no name, or a name for the default
    ca.configure_trust(context)
    for name, version in versions.items():
        setattr(context, name, version)
    return context


def https(proxy: Proxy, context: ssl.SSLContext, name: str | None) -> RawClient:
    return RawClient(proxy.port, tls=context, server_name=name)


@pytest.fixture(scope="module")
def sni_proxy(
    start_proxy: StartProxy, backends: list[Backend], ca: trustme.CA, tmp_path_factory
) -> Proxy:
    directory = tmp_path_factory.mktemp("certs")
    first = write_pair(ca, directory, "default", "default.example")
    other = write_pair(ca, directory, "other", "other.example")
    wild = write_pair(ca, directory, "wild", "*.wild.example")
    return start_proxy(
        [backends[0].url],
        listener=f"tls = {{ certificates = [{first}, {other}, {wild}] }}",
    )


@pytest.mark.parametrize(
    ("name", "served"),
    [
        ("other.example", "other.example"),
        ("OTHER.example", "other.example"),
        ("a.wild.example", "*.wild.example"),
        ("unknown.example", "default.example"),
        ("a.b.wild.example", "default.example"),  # a wildcard covers one label
        (None, "default.example"),
    ],
)
def test_the_server_name_picks_the_certificate(
    sni_proxy: Proxy, ca: trustme.CA, name: str | None, served: str
) -> None:
    client = https(sni_proxy, client_context(ca), name)
    assert client.peer_names() == [served]
    response = client.request("GET", "/echo-headers")
    assert response.status == 200
    seen = dict(json.loads(response.body)["headers"])
    assert seen["X-Forwarded-Proto"] == "https"
    assert "proto=https" in seen["Forwarded"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_2_and_1_3_are_served_and_older_versions_refused(
    sni_proxy: Proxy, ca: trustme.CA
) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = client_context(ca, maximum_version=version)
        client = https(sni_proxy, context, "other.example")
        assert client.sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        assert client.request("GET", "/").status == 200
    old = client_context(
        ca, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1
    )
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client can offer TLS 1.1 at all
    # The server ends the handshake (a client unable to offer 1.1 would fail otherwise).
    with pytest.raises(ssl.SSLError, match=r"UNEXPECTED_EOF|(?i:protocol version|unsupported)"):
        https(sni_proxy, old, "other.example")


def test_alpn_offers_http_1_1(sni_proxy: Proxy, ca: trustme.CA) -> None:
    context = client_context(ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    client = https(sni_proxy, context, "other.example")
    assert client.sock.selected_alpn_protocol() == "http/1.1"


def test_changed_files_are_used_for_new_handshakes_and_open_connections_go_on(
    start_proxy: StartProxy, backends: list[Backend], ca: trustme.CA, tmp_path: Path
) -> None:
    table = write_pair(ca, tmp_path, "site", "before.example")
    proxy = start_proxy([backends[0].url], listener=f"tls = {table}")
    context = client_context(ca)
    kept = https(proxy, context, "before.example")
    assert kept.request("GET", "/").status == 200
    assert kept.peer_names() == ["before.example"]

    # A bad pair first (the key of another certificate): refused, the current one stays.
    other = ca.issue_cert("after.example")
    other.cert_chain_pems[0].write_to_path(tmp_path / "site.pem")
    proxy.process.wait_line(r"certificate files refused, the current ones stay: .*does not match")
    assert https(proxy, context, None).peer_names() == ["before.example"]

    other.private_key_pem.write_to_path(tmp_path / "site.key")
    wait_for(lambda: https(proxy, context, None).peer_names() == ["after.example"], timeout=10)
    assert kept.request("GET", "/").status == 200  # opened before: its session goes on
    assert kept.peer_names() == ["before.example"]


def test_client_certificates_signed_by_the_ca_are_required(
    start_proxy: StartProxy, backends: list[Backend], ca: trustme.CA, tmp_path: Path
) -> None:
    table = write_pair(ca, tmp_path, "site", "mtls.example")
    clients = trustme.CA()
    clients.cert_pem.write_to_path(tmp_path / "clients.pem")
    client_ca = f'client_ca = "{tmp_path / "clients.pem"}"'
    subject = 'client_subject_header = "X-Client-Subject"'
    proxy = start_proxy(
        [backends[0].url],
        listener=f"tls = {{ certificates = [{table}], {client_ca}, {subject} }}",
    )
    good = client_context(ca)
    clients.issue_cert("alice@example.org", common_name="Alice, Ops").configure_cert(good)
    client = https(proxy, good, "mtls.example")
    # The verified subject goes upstream; one the client sent itself does not.
    answer = client.request("GET", "/echo-headers", headers={"X-Client-Subject": "CN=admin"})
    assert answer.status == 200
    seen = [v for n, v in json.loads(answer.body)["headers"] if n.lower() == "x-client-subject"]
    assert len(seen) == 1
    assert seen[0].startswith("CN=Alice\\2C Ops,")  # RFC 4514: the comma escaped
    assert ",O=trustme" in seen[0]

    stranger = client_context(ca)
    trustme.CA().issue_cert("mallory@example.org").configure_cert(stranger)
    for refused in (client_context(ca), stranger):  # no certificate; one from another CA
        with pytest.raises((ssl.SSLError, ConnectionError)):
            # TLS 1.3: the server's verdict arrives after the client's handshake ends
            https(proxy, refused, "mtls.example").request("GET", "/")


def test_a_reload_turns_client_certificates_on_and_off(
    start_proxy: StartProxy, backends: list[Backend], ca: trustme.CA, tmp_path: Path
) -> None:
    table = write_pair(ca, tmp_path, "site", "mtls.example")
    clients = trustme.CA()
    clients.cert_pem.write_to_path(tmp_path / "clients.pem")
    proxy = start_proxy([backends[0].url], listener=f"tls = {table}")
    config = proxy.state_dir.parent / "bunancer.toml"
    plain_tls = config.read_text()
    good = client_context(ca)
    clients.issue_cert("alice@example.org").configure_cert(good)

    def answers(context: ssl.SSLContext) -> bool:
        try:
            return https(proxy, context, "mtls.example").request("GET", "/").status == 200
        except (ssl.SSLError, ConnectionError):
            return False

    def reload() -> None:
        api = f"http://127.0.0.1:{proxy.api_port}"
        result = run_cli("reload", "--api", api, "--state-dir", str(proxy.state_dir))
        assert result.returncode == 0, result.stderr

    assert answers(client_context(ca))
    client_ca = f'tls = {{ certificates = [{table}], client_ca = "{tmp_path / "clients.pem"}" }}'
    config.write_text(plain_tls.replace(f"tls = {table}", client_ca))
    reload()
    assert not answers(client_context(ca))  # no certificate: refused now
    assert answers(good)
    config.write_text(plain_tls)
    reload()
    assert answers(client_context(ca))


def test_a_plain_listener_can_send_everything_to_https(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([backends[0].url], listener="redirect_https = true")
    client = proxy.client()
    client.send(b"GET /a/b?c=1 HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n")
    response = client.read_response()
    assert response.status == 308
    assert response.header("Location") == "https://shop.example/a/b?c=1"
    assert client.request("GET", "/again").status == 308  # the connection stays open


def test_config_check_reads_the_pairs(ca: trustme.CA, tmp_path: Path) -> None:
    config = tmp_path / "bunancer.toml"
    good = write_pair(ca, tmp_path, "good", "good.example", "www.good.example")
    config.write_text(f'[[listeners]]\naddress = "127.0.0.1:8443"\ntls = {good}\n')
    result = run_cli("config", "check", str(config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "good.example, www.good.example; expires" in result.stdout
    assert "days left" in result.stdout

    ca.issue_cert("other.example").private_key_pem.write_to_path(tmp_path / "good.key")
    result = run_cli("config", "check", str(config), timeout=60)
    assert result.returncode == 2
    assert "listeners[0].tls" in result.stderr
    assert "the key does not match the certificate" in result.stderr

    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired = write_pair(
        ca,
        tmp_path,
        "old",
        "old.example",
        not_before=past - datetime.timedelta(days=30),
        not_after=past,
    )
    config.write_text(f'[[listeners]]\naddress = "127.0.0.1:8443"\ntls = {expired}\n')
    result = run_cli("config", "check", str(config), timeout=60)
    assert result.returncode == 2
    assert "old.pem: expired on" in result.stderr


@single_process_only  # each worker has its own ticket keys: the next connection may reach another
def test_sessions_resume(sni_proxy: Proxy, ca: trustme.CA) -> None:
    context = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    first = https(sni_proxy, context, "other.example")
    assert first.request("GET", "/").status == 200
    assert isinstance(first.sock, ssl.SSLSocket)
    session = first.sock.session
    again = RawClient(sni_proxy.port)
    resumed = context.wrap_socket(again.sock, server_hostname="other.example", session=session)
    assert resumed.session_reused


def test_a_tcp_listener_terminates_tls_and_tunnels_the_plain_bytes(
    start_proxy: StartProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    echo = spawn(["-m", "tests.echo_backend", "0"])
    try:
        port = int(echo.wait_line(r"^PORT (\d+)$").group(1))
        table = write_pair(ca, tmp_path, "tcp", "tcp.example")
        proxy = start_proxy([f"tcp://127.0.0.1:{port}"], listener=f'mode = "tcp"\ntls = {table}')
        client = https(proxy, client_context(ca), "tcp.example")
        payload = bytes(range(256)) * 64
        client.send(payload)
        assert client._take(len(payload)) == payload
    finally:
        echo.stop()


def test_the_command_line_serves_https(
    backends: list[Backend], ca: trustme.CA, tmp_path: Path
) -> None:
    write_pair(ca, tmp_path, "cli", "cli.example")
    pem, key = tmp_path / "cli.pem", tmp_path / "cli.key"
    args = ["--tls-cert", str(pem), "--tls-key", str(key), "--backend", backends[0].url]
    for flag in ("--listen", "--api-listen", "--dashboard-listen"):
        args += [flag, "127.0.0.1:0"]
    process = spawn(["-m", "bunancer", "serve", *args, "--state-dir", str(tmp_path / "state")])
    try:
        port = int(process.wait_line(r"ready: proxy listening on 127\.0\.0\.1:(\d+)").group(1))
        client = RawClient(port, tls=client_context(ca), server_name="cli.example")
        assert client.peer_names() == ["cli.example"]
        assert client.request("GET", "/").status == 200
    finally:
        process.stop()


# -- TLS to the servers ---------------------------------------------------------------------


StartTlsBackend = Callable[..., int]


@pytest.fixture
def tls_backend() -> Iterator[StartTlsBackend]:
    """Start tests.backend over TLS with a certificate from a CA for names (and dates):
    its port; every one started is stopped after the test."""
    started: list[Process] = []

    def start(ca: trustme.CA, directory: Path, *names: str, **dates: object) -> int:
        write_pair(ca, directory, "backend", *names, **dates)
        pem, key = str(directory / "backend.pem"), str(directory / "backend.key")
        started.append(spawn(["-m", "tests.backend", "0", pem, key]))
        return int(started[-1].wait_line(r"^PORT (\d+)$").group(1))

    yield start
    for process in started:
        process.stop()


def pool_tls(directory: Path, ca: trustme.CA, options: str = "") -> str:
    ca.cert_pem.write_to_path(directory / "ca.pem")
    return f'[pools.default.tls]\nca_file = "{directory / "ca.pem"}"\n{options}\n'


def test_https_servers_are_checked_verified_and_pooled(
    start_proxy: StartProxy, tls_backend: StartTlsBackend, ca: trustme.CA, tmp_path: Path
) -> None:
    port = tls_backend(ca, tmp_path, "127.0.0.1")
    # The server must pass its (TLS) check first: a plain one would fail and leave a 503.
    proxy = start_proxy([f"https://127.0.0.1:{port}"], extra=pool_tls(tmp_path, ca))
    client = proxy.client()
    for _ in range(5):
        assert client.request("GET", "/").body == b"ok %d\n" % port
    log = json.loads(client.request("GET", "/log").body)
    assert log["proxied_connections"] == 1  # one TLS connection, kept alive, reused


@pytest.mark.parametrize(
    ("names", "dates", "options", "reason"),
    [
        (("127.0.0.1",), {}, 'server_name = "other.example"', "Hostname mismatch"),
        (("127.0.0.1",), {"expired": True}, "", "certificate has expired"),
        (("127.0.0.1",), {"stranger": True}, "", "unable to get local issuer certificate"),
    ],
)
def test_a_server_certificate_not_accepted_is_a_502_with_the_reason(
    start_proxy: StartProxy,
    tls_backend: StartTlsBackend,
    ca: trustme.CA,
    tmp_path: Path,
    names: tuple[str, ...],
    dates: dict[str, bool],
    options: str,
    reason: str,
) -> None:
    issuer = trustme.CA() if dates.get("stranger") else ca
    validity = {}
    if dates.get("expired"):
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        validity = {"not_before": past - datetime.timedelta(days=30), "not_after": past}
    port = tls_backend(issuer, tmp_path, *names, **validity)
    checks_off = "[pools.default.health]\nenabled = false\n"  # so that requests go to it
    extra = pool_tls(tmp_path, ca, options) + checks_off
    proxy = start_proxy([f"https://127.0.0.1:{port}"], extra=extra)
    assert proxy.client().request("GET", "/").status == 502
    proxy.process.wait_line(rf"upstream 127\.0\.0\.1:{port}: TLS: .*{reason}")


def test_the_check_of_a_server_says_why_tls_failed(
    start_proxy: StartProxy, tls_backend: StartTlsBackend, ca: trustme.CA, tmp_path: Path
) -> None:
    port = tls_backend(ca, tmp_path, "127.0.0.1")
    extra = pool_tls(tmp_path, ca, 'server_name = "other.example"')
    proxy = start_proxy([f"https://127.0.0.1:{port}"], extra=extra)
    client = ApiClient(f"127.0.0.1:{proxy.api_port}", proxy.token)
    (server,) = client.pool("default")["servers"]
    assert "Hostname mismatch" in server["last_check"]["detail"]


def test_verify_false_takes_any_certificate_and_says_so(
    start_proxy: StartProxy, tls_backend: StartTlsBackend, tmp_path: Path
) -> None:
    port = tls_backend(trustme.CA(), tmp_path, "127.0.0.1")
    extra = "[pools.default.tls]\nverify = false\n"
    proxy = start_proxy([f"https://127.0.0.1:{port}"], extra=extra)
    proxy.process.wait_line(r"pool default: TLS to its servers is not verified")
    assert proxy.client().request("GET", "/").body == b"ok %d\n" % port


def test_metrics_show_when_each_certificate_expires(sni_proxy: Proxy) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{sni_proxy.api_port}/metrics") as answer:
        text = answer.read().decode()
    expiries = {
        line.split('names="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bunancer_tls_certificate_expiry_timestamp_seconds{")
    }
    assert set(expiries) == {"default.example", "other.example", "*.wild.example"}
    trustme_default = datetime.datetime(3000, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert set(expiries.values()) == {trustme_default}


# -- TCP: routed by the ClientHello's server name, passed through --------------------------


def test_a_tcp_listener_routes_tls_by_server_name_and_passes_it_through(
    start_proxy: StartProxy,
    tls_backend: StartTlsBackend,
    ca: trustme.CA,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ports = {}
    for name in ("a.example", "b.example", "default.example"):
        ports[name] = tls_backend(ca, tmp_path_factory.mktemp(name), name)
    routes = ", ".join(
        f'{{ host = "{host}", pool = "{pool}" }}'
        for host, pool in (("a.example", "a"), ("*.b.example", "b"))
    )
    extra = "".join(
        f'[pools.{pool}]\nservers = [{{ address = "tcp://127.0.0.1:{ports[name]}" }}]\n'
        for pool, name in (("a", "a.example"), ("b", "b.example"))
    )
    proxy = start_proxy(
        [f"tcp://127.0.0.1:{ports['default.example']}"],
        extra=extra,
        listener=f'mode = "tcp"\nsni_routes = [{routes}]',
    )
    context = client_context(ca)
    # The backend's own certificate comes back: the TLS went through untouched.
    for sni, served in [
        ("a.example", "a.example"),
        ("x.b.example", "b.example"),
        ("elsewhere.example", "default.example"),
        (None, "default.example"),
    ]:
        client = https(proxy, context, sni)
        assert client.peer_names() == [served], sni
        assert client.request("GET", "/").body == b"ok %d\n" % ports[served]
    plain = proxy.client()  # not TLS at all: the default pool, bytes as they came
    with pytest.raises(ConnectionError):
        plain.request("GET", "/")  # (the default backend speaks only TLS)


def test_the_api_and_dashboard_serve_https_and_the_cookie_is_secure(
    start_proxy: StartProxy, backends: list[Backend], ca: trustme.CA, tmp_path: Path
) -> None:
    table = write_pair(ca, tmp_path, "admin", "127.0.0.1")
    extra = (
        f'[api]\nlisten = "127.0.0.1:0"\ntls = {table}\n'
        f'[dashboard]\nlisten = "127.0.0.1:0"\ntls = {table}\n'
    )
    proxy = start_proxy([backends[0].url], extra=extra)
    context = client_context(ca)
    api = RawClient(proxy.api_port, tls=context, server_name="127.0.0.1")
    get = b"GET /api/pools HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    api.send(get)
    assert api.read_response().status == 200
    plain = RawClient(proxy.api_port)
    plain.send(get)
    with pytest.raises(ConnectionError):  # plain HTTP to a TLS listener: no answer
        plain.read_response()

    dashboard = RawClient(proxy.dashboard_port, tls=context, server_name="127.0.0.1")
    body = f"token={proxy.token}&next=%2F".encode()
    dashboard.send(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    cookie = str(dashboard.read_response().header("Set-Cookie"))
    assert cookie.endswith("; HttpOnly; SameSite=Strict; Secure")

    # A renewed pair is taken without a restart, by both; /metrics shows it for each.
    write_pair(ca, tmp_path, "admin", "127.0.0.1", "renewed.example")
    for port in (proxy.api_port, proxy.dashboard_port):
        wait_for(
            lambda port=port: RawClient(port, tls=context).peer_names() == ["renewed.example"],
            timeout=10,
        )
    with urllib.request.urlopen(
        f"https://127.0.0.1:{proxy.api_port}/metrics", context=context
    ) as answer:
        metrics = answer.read().decode()
    for section in ("api", "dashboard"):
        assert f'listener="{section}",' in metrics


def test_the_dashboard_shows_each_certificate_and_its_expiry(sni_proxy: Proxy) -> None:
    url = f"http://127.0.0.1:{sni_proxy.dashboard_port}/routing"
    with urllib.request.urlopen(url) as answer:
        page = answer.read().decode()
    assert f"https://127.0.0.1:{sni_proxy.port}" in page
    for name in ("default.example", "other.example", "*.wild.example"):
        assert f"<code>{name}</code> expires 3000-01-01" in page
