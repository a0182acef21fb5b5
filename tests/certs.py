"""Throwaway credentials for the security tests: a CA with server and client certificates,
NKeys, and an operator / account / user JWT chain with a ``.creds`` file.

Everything is generated per test in a temporary directory; nothing here is a fixture
file checked into the repository, so no key ever outlives its test.

* TLS: an EC P-256 CA signs a server certificate for ``127.0.0.1`` (an IP SAN, which is
  what a client connecting to ``nats://127.0.0.1:<port>`` checks) and a client
  certificate with the ``clientAuth`` usage, for ``verify: true`` servers.
* NKeys: a random 32-byte Ed25519 seed encoded with the ``nkeys`` package's own encoder.
* JWT: NATS JWTs are ordinary JWS compact tokens with ``alg: ed25519-nkey``: base64url
  (no padding) of the header and of the claims, signed with the issuer's NKey. The
  claims are the standard ones (``jti``, ``iat``, ``iss``, ``sub``, ``name``) plus a
  ``nats`` object whose ``type`` (operator, account, user) and ``version: 2`` the server
  checks. ``jti`` is, as in the Go library, the base32 SHA-512/256 of the claims
  serialised with an empty ``jti``. The server is given the operator JWT and the account
  JWTs in its config file (``resolver: MEMORY``), so no ``nsc`` is needed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# -- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: list[x509.ObjectIdentifier] | None = None,
    ips: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if not ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    names += [x509.DNSName(name) for name in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls(directory: Path, *, ip: str = "127.0.0.1") -> TlsFiles:
    """A fresh CA, a server certificate for ``ip`` (and ``localhost``), a client
    certificate; PEM files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("usage-outbox test CA", ca_key, _name("usage-outbox test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        "nats-server",
        server_key,
        ca_cert.subject,
        ca_key,
        ca=False,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
        ips=(ip,),
        dns=("localhost",),
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(
        "usage-client",
        client_key,
        ca_cert.subject,
        ca_key,
        ca=False,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    return TlsFiles(
        ca_file=_write_cert(ca_cert, directory / "ca.pem"),
        server_cert=_write_cert(server_cert, directory / "server.pem"),
        server_key=_write_key(server_key, directory / "server-key.pem"),
        client_cert=_write_cert(client_cert, directory / "client.pem"),
        client_key=_write_key(client_key, directory / "client-key.pem"),
    )


def other_ca(directory: Path) -> Path:
    """A CA file that did not sign anything the server presents."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue("some other CA", key, _name("some other CA"), key, ca=True)
    return _write_cert(cert, directory / "other-ca.pem")


# -- NKeys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NKey:
    seed: bytes  # b"SU..." / b"SA..." / b"SO..."
    public: str  # "U..." / "A..." / "O..."

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))

    def write_seed(self, path: Path) -> Path:
        path.write_bytes(self.seed + b"\n")
        path.chmod(0o600)
        return path


def new_nkey(prefix: int = nkeys.PREFIX_BYTE_USER) -> NKey:
    seed = bytes(nkeys.encode_seed(os.urandom(32), prefix))
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return NKey(seed=seed, public=public)


# -- JWT ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_jwt(claims: dict[str, Any], issuer: NKey) -> str:
    """Sign ``claims`` (``iss``, ``iat`` and ``jti`` are filled in) as ``issuer``."""
    body = {"jti": "", "iat": int(time.time()), "iss": issuer.public, **claims}
    unhashed = json.dumps(body, separators=(",", ":")).encode()
    digest = hashlib.new("sha512_256", unhashed).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


def decode_jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def creds_text(user_jwt: str, user: NKey) -> str:
    """A ``.creds`` file as ``nsc`` writes it: the user JWT, then the user's seed."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass
class Operator:
    """An operator, a system account and one application account with JetStream, for
    an operator-mode nats-server; users of the application account get ``.creds``."""

    operator: NKey = field(default_factory=lambda: new_nkey(nkeys.PREFIX_BYTE_OPERATOR))
    system: NKey = field(default_factory=lambda: new_nkey(nkeys.PREFIX_BYTE_ACCOUNT))
    account: NKey = field(default_factory=lambda: new_nkey(nkeys.PREFIX_BYTE_ACCOUNT))

    def operator_jwt(self) -> str:
        return encode_jwt(
            {
                "sub": self.operator.public,
                "name": "usage-test-operator",
                "nats": {
                    "system_account": self.system.public,
                    "type": "operator",
                    "version": 2,
                },
            },
            self.operator,
        )

    def account_jwt(self, account: NKey, name: str, *, jetstream: bool) -> str:
        limits: dict[str, Any] = {
            "subs": -1,
            "data": -1,
            "payload": -1,
            "imports": -1,
            "exports": -1,
            "wildcards": True,
            "conn": -1,
            "leaf": -1,
        }
        if jetstream:
            limits.update(
                {
                    "mem_storage": -1,
                    "disk_storage": -1,
                    "streams": -1,
                    "consumer": -1,
                    "max_ack_pending": -1,
                    "mem_max_stream_bytes": 0,
                    "disk_max_stream_bytes": 0,
                    "max_bytes_required": False,
                }
            )
        return encode_jwt(
            {
                "sub": account.public,
                "name": name,
                "nats": {
                    "limits": limits,
                    "default_permissions": {"pub": {}, "sub": {}},
                    "type": "account",
                    "version": 2,
                },
            },
            self.operator,
        )

    def server_config(self) -> str:
        """The lines of a nats-server config file that trust this operator."""
        return (
            f"operator: {self.operator_jwt()}\n"
            f"system_account: {self.system.public}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {self.system.public}: {self.account_jwt(self.system, 'SYS', jetstream=False)}\n"
            f"  {self.account.public}: {self.account_jwt(self.account, 'APP', jetstream=True)}\n"
            "}\n"
        )

    def user_creds(
        self,
        path: Path,
        name: str,
        *,
        pub_allow: list[str] | None = None,
        sub_allow: list[str] | None = None,
        signer: NKey | None = None,
    ) -> Path:
        """Write a ``.creds`` file for a new user of the application account."""
        user = new_nkey(nkeys.PREFIX_BYTE_USER)
        permissions: dict[str, Any] = {"subs": -1, "data": -1, "payload": -1}
        permissions["pub"] = {"allow": pub_allow} if pub_allow is not None else {}
        permissions["sub"] = {"allow": sub_allow} if sub_allow is not None else {}
        token = encode_jwt(
            {
                "sub": user.public,
                "name": name,
                "nats": {**permissions, "type": "user", "version": 2},
            },
            signer or self.account,
        )
        path.write_text(creds_text(token, user))
        path.chmod(0o600)
        return path


# -- nats-server configuration -----------------------------------------------------------


def nats_conf(**blocks: Any) -> str:
    """nats-server config text from Python values (its format reads JSON; quoted strings
    keep a ``$`` literal, so JetStream API subjects need no escaping)."""
    return "".join(f"{name}: {json.dumps(value)}\n" for name, value in blocks.items())


def permissions(publish: list[str], subscribe: list[str]) -> dict[str, Any]:
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def tls_block(tls: TlsFiles, *, verify_clients: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)}
    if verify_clients:
        block.update({"ca_file": str(tls.ca_file), "verify": True})
    return block
