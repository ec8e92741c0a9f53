"""A real Mosquitto broker on a loopback port, for tests, benchmarks and demos.

Generates a throw-away CA, a server certificate for ``localhost``/``127.0.0.1``, a client
certificate and a password file, writes a ``mosquitto.conf`` requiring TLS plus
username/password (and, optionally, a client certificate), and runs
``mosquitto -c <conf>`` as a child process killed by PID on :meth:`stop`. Nothing here is
meant for production brokers.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from transport.keys import write_secret

__all__ = ["MosquittoBroker", "find_mosquitto", "free_port"]

log = logging.getLogger(__name__)

_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


def find_mosquitto() -> tuple[str, str] | None:
    """(mosquitto, mosquitto_passwd) executables, or None when not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SEARCH])
    broker, passwd = shutil.which("mosquitto", path=path), shutil.which("mosquitto_passwd",
                                                                         path=path)
    return (broker, passwd) if broker and passwd else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool = False
          ) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class MosquittoBroker:
    """A running (or stopped) loopback Mosquitto with TLS and password auth.

    Attributes:
        host, port: where it listens (TLS).
        ca_file: CA that signed the server and client certificates.
        username, password: the account in its password file.
        client_cert, client_key: a client certificate signed by the CA.
    """

    workdir: Path
    port: int
    require_client_cert: bool = False
    host: str = "127.0.0.1"
    username: str = "tiersplit"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    _proc: subprocess.Popen | None = None

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def client_cert(self) -> Path:
        return self.workdir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.workdir / "client.key"

    @property
    def password_file(self) -> Path:
        """The password in a 0600 file (what ``MqttBrokerConfig.password_file`` takes)."""
        return self.workdir / "client.pass"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    @classmethod
    def start_new(cls, workdir: Path | None = None, port: int | None = None,
                  require_client_cert: bool = False) -> MosquittoBroker:
        """Generate certificates and a config in ``workdir`` and start the broker.

        Raises:
            FileNotFoundError: mosquitto is not installed.
            RuntimeError: it did not start listening.
        """
        exes = find_mosquitto()
        if exes is None:
            raise FileNotFoundError("mosquitto / mosquitto_passwd not found "
                                    "(Debian: apt-get install mosquitto)")
        wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tiersplit-mqtt-"))
        wd.mkdir(parents=True, exist_ok=True)
        broker = cls(workdir=wd, port=port or free_port(),
                     require_client_cert=require_client_cert)
        broker._write_files(exes[1])
        broker.restart()
        return broker

    def _write_files(self, passwd_exe: str) -> None:
        wd = self.workdir
        ca_key = _key()
        ca = _cert("tiersplit test CA", ca_key, None, ca_key, ca=True)
        srv_key, cli_key = _key(), _key()
        srv = _cert("localhost", srv_key, ca.subject, ca_key, ca=False, server=True)
        cli = _cert(self.username, cli_key, ca.subject, ca_key, ca=False)
        pem = serialization.Encoding.PEM
        self.ca_file.write_bytes(ca.public_bytes(pem))
        (wd / "server.pem").write_bytes(srv.public_bytes(pem))
        write_secret(wd / "server.key", _pem_key(srv_key))
        self.client_cert.write_bytes(cli.public_bytes(pem))
        write_secret(self.client_key, _pem_key(cli_key))
        write_secret(self.password_file, self.password.encode())
        pw = wd / "passwd"
        subprocess.run([passwd_exe, "-b", "-c", str(pw), self.username, self.password],
                       check=True, capture_output=True, timeout=30)
        os.chmod(pw, 0o600)
        lines = [
            f"listener {self.port} {self.host}",
            f"cafile {self.ca_file}",
            f"certfile {wd / 'server.pem'}",
            f"keyfile {wd / 'server.key'}",
            f"require_certificate {'true' if self.require_client_cert else 'false'}",
            "allow_anonymous false",
            f"password_file {pw}",
            "persistence false",
            "set_tcp_nodelay true",
            "max_queued_messages 10000",
            "max_inflight_messages 0",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user that cannot read wd
        (wd / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def restart(self, timeout: float = 10.0) -> None:
        """(Re)start on the same port; returns once it accepts TCP connections."""
        self.stop()
        exes = find_mosquitto()
        assert exes is not None
        self._proc = subprocess.Popen([exes[0], "-c", str(self.workdir / "mosquitto.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                logtail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
                self._proc = None
                raise RuntimeError(f"mosquitto exited at start: {err[-2000:]} {logtail}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout} s")

    def stop(self) -> None:
        """Kill the broker by PID (SIGTERM, then SIGKILL) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        """Stop and delete the working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
