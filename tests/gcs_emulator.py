"""A Google Cloud Storage bucket on this machine, reached by TensorFlow's own `gs://` filesystem.

TensorFlow's GCS filesystem talks to fixed endpoints (https://www.googleapis.com and
https://storage.googleapis.com) and has no endpoint setting, but it sends its requests through
libcurl, which honours HTTPS_PROXY and CURL_CA_BUNDLE. So the bucket here is a GCS JSON API emulator
(gcp-storage-emulator) behind a small proxy on loopback that answers CONNECT for Google's storage
hosts with a certificate of a throwaway certificate authority, and hands the decrypted requests to
the emulator. Processes given `GcsEmulator.environment()` write and read `gs://<bucket>/...` with
TensorFlow, Keras and TensorBoard unchanged, as they would a real bucket; nothing leaves this machine.
"""

from __future__ import annotations

import atexit
import datetime
import importlib.util
import shutil
import socket
import ssl
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
"""What TensorFlow's GCS filesystem connects to: the JSON API, and the host its reads go to."""
_HEAD_LIMIT = 64 * 1024
_shared: GcsEmulator | None = None
_shared_lock = threading.Lock()


def shared_emulator() -> GcsEmulator:
    """The one emulator of this test process (started on first use, stopped at exit), or a skip saying
    what is missing. One per process: TensorFlow keeps one GCS file system per process, with its caches."""
    global _shared
    missing = [name for name in ("gcp_storage_emulator", "cryptography") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the GCS emulator needs {' and '.join(missing)} (the dev extra: pip install -e '.[dev]')")
    with _shared_lock:
        if _shared is None:
            folder = Path(tempfile.mkdtemp(prefix="gcs-emulator-"))
            _shared = GcsEmulator(folder).__enter__()
            atexit.register(_shared.__exit__)
            atexit.register(shutil.rmtree, folder, True)
        return _shared


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> GcsEmulator:
    """The shared emulator, with this process's environment pointing TensorFlow's gs:// at it for one test."""
    emulator = shared_emulator()
    for name, value in emulator.environment().items():
        monkeypatch.setenv(name, value)
    import tensorflow as tf

    if "gs" not in tf.io.gfile.get_registered_schemes():
        pytest.skip("this TensorFlow build has no gs:// file system")
    return emulator


def unique_prefix() -> str:
    """A folder name no other test uses: every test shares the one bucket."""
    return f"test-{uuid.uuid4().hex[:12]}"


class GcsEmulator:
    """A bucket served on loopback, with the proxy and certificate that lead TensorFlow to it.

    Use as a context manager; `url(...)` names objects in the bucket, `environment()` is what a process
    needs to reach it (and nothing to reach anything else).
    """

    def __init__(self, folder: Path, bucket: str = "sweeper-test"):
        from gcp_storage_emulator.server import create_server

        _accept_empty_uploads()
        self.bucket = bucket
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._emulator_port = _free_port()
        self._server = create_server("127.0.0.1", self._emulator_port, in_memory=True, default_bucket=bucket)
        # Its serving thread is not a daemon, so a test process would wait for it forever before running
        # the exit handler that stops it.
        serving = getattr(self._server, "_api", None)
        if serving is not None:
            serving.daemon = True
        self.ca_file = folder / "test-ca.pem"
        self._tls = _tls_context(self.ca_file, folder)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.proxy_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="gcs-proxy", daemon=True)

    def url(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])

    def environment(self) -> dict[str, str]:
        """Environment variables that send a process's `gs://` traffic here, with a token that the
        emulator accepts (TensorFlow then asks no metadata server or credentials file for one)."""
        return {
            "HTTPS_PROXY": self.proxy_url, "https_proxy": self.proxy_url,
            "CURL_CA_BUNDLE": str(self.ca_file),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",
            "NO_GCE_CHECK": "true",
            # A request that fails is retried a few times, quickly, not ten times over minutes.
            "GCS_RETRY_CONFIG_MAX_RETRIES": "3", "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000",
            "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
        }

    def __enter__(self) -> GcsEmulator:
        self._server.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._listener.close()
        self._server.stop()

    # -- the proxy ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), name="gcs-proxy-tunnel", daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        """One CONNECT: terminate TLS for a Google storage host, then relay one request to the emulator."""
        try:
            with client:
                head, _ = _read_head(client)
                method, target = head.split(b" ", 2)[:2]
                host = target.decode().rsplit(":", 1)[0]
                if method != b"CONNECT" or host not in GCS_HOSTS:
                    client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                with self._tls.wrap_socket(client, server_side=True) as secure:
                    self._relay(secure)
        except (OSError, ValueError, ssl.SSLError):
            pass  # a client that went away; it retries

    def _relay(self, secure: ssl.SSLSocket) -> None:
        # The emulator answers HTTP/1.0, one request per connection: relay one, then close.
        head, rest = _read_head(secure)
        if not head:
            return
        lines = head.split(b"\r\n")
        body = _read_body(secure, lines, rest)
        # The body goes on whole, with its length: libcurl sends uploads chunked (with a Content-Length
        # too, which HTTP says to ignore, and the emulator reads instead). No `Expect: 100-continue`
        # either: the emulator never answers it, and libcurl would wait a second for it.
        dropped = (b"expect:", b"transfer-encoding:", b"content-length:")
        lines = [line for line in lines if not line.lower().startswith(dropped)]
        lines.append(b"Content-Length: %d" % len(body))
        with socket.create_connection(("127.0.0.1", self._emulator_port)) as upstream:
            upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            answer, rest = _read_head(upstream)
            if not answer:
                return  # the emulator failed without an answer: the client sees the connection close
            # The emulator names an upload session by the Host header, as http://: make it https:// again,
            # so the upload comes through this proxy too.
            answer = answer.replace(b"Location: http://", b"Location: https://")
            secure.sendall(answer + b"\r\n\r\n" + rest)
            while chunk := upstream.recv(65536):
                secure.sendall(chunk)


def _read_body(sock: socket.socket, head_lines: list[bytes], received: bytes) -> bytes:
    """A request's body, from what followed its head and the socket: chunked, or Content-Length bytes."""
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(b":") for line in head_lines[1:])}
    stream = _Buffered(sock, received)
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while size := int(stream.line().split(b";")[0], 16):
            body += stream.read(size)
            stream.line()  # the CRLF after the chunk
        while stream.line():  # trailers, up to the blank line
            pass
        return body
    return stream.read(int(headers.get(b"content-length", b"0")))


class _Buffered:
    """Reads lines and exact byte counts from a socket, starting with bytes already received."""

    def __init__(self, sock: socket.socket, received: bytes):
        self._sock, self._data = sock, received

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ValueError("the client closed the connection in the middle of a request")
        self._data += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self._data:
            self._fill()
        line, _, self._data = self._data.partition(b"\r\n")
        return line

    def read(self, size: int) -> bytes:
        while len(self._data) < size:
            self._fill()
        data, self._data = self._data[:size], self._data[size:]
        return data


def _accept_empty_uploads() -> None:
    """Let the emulator store empty objects, as GCS does: TensorFlow marks a folder with one (`dir/`),
    which the emulator (2026.7.19) fails on, since it reads an empty body as no body."""
    from gcp_storage_emulator.handlers import objects

    upload = getattr(objects, "_media_upload", None)
    if upload is None or getattr(upload, "accepts_empty", False):
        return  # another version of the emulator: it handles uploads its own way

    def media_upload(request, response, storage):  # noqa: ANN001, ANN202 - the emulator's handler signature
        if request.data is None:
            request._data = b""
        return upload(request, response, storage)

    media_upload.accepts_empty = True  # type: ignore[attr-defined]
    objects._media_upload = media_upload


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Bytes up to the blank line that ends an HTTP head (without it), and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
        if len(data) > _HEAD_LIMIT:
            raise ValueError("an HTTP head longer than 64 KiB")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _tls_context(ca_file: Path, folder: Path) -> ssl.SSLContext:
    """A server context with a certificate for Google's storage hosts, signed by a new CA written to `ca_file`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sweeper test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GCS_HOSTS[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host) for host in GCS_HOSTS]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = folder / "gcs-proxy-chain.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                      + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return context


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
