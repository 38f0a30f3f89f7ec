"""TLS and mutual TLS from PEM files: gRPC server and channel credentials, and the checks behind them.

Every file is read and parsed (``cryptography``) before gRPC sees it, so a file that is missing,
unreadable or not what it should be stops the process at start-up with a :class:`ConfigError` naming
the setting (``GLIMPSE3D_TLS_CERT_FILE``, ``--ca``, ...), instead of a handshake failure later.
A private key must match the first certificate of its chain.

With :class:`~glimpse3d.core.config.ServerConfig`:

* ``tls_cert_file`` + ``tls_key_file``: the server accepts TLS only (:func:`server_credentials_from_config`);
* ``tls_client_ca_file`` as well: every caller must present a certificate signed by that CA (mTLS);
* ``tls_ca_file`` / ``tls_client_cert_file`` + ``tls_client_key_file``: the channels this process opens
  to other servers verify them against that CA and present that certificate
  (:func:`channel_credentials_from_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from glimpse3d.core.config import DEFAULT_PREFIX, ConfigError, ServerConfig

MAX_PEM_BYTES = 1 << 20  # a certificate bundle is a few KiB; refuse to read anything huge


def setting_name(field: str) -> str:
    """The environment variable of a :class:`ServerConfig` field (``tls_cert_file`` -> ``GLIMPSE3D_TLS_CERT_FILE``)."""
    return f"{DEFAULT_PREFIX}{field.upper()}"


def _read(path: Path | str, setting: str, what: str) -> bytes:
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {what} file {str(path)!r} does not exist", field=setting) from None
    except OSError as err:
        raise ConfigError(f"{setting}: cannot read {what} file {str(path)!r}: {err.strerror or err}",
                          field=setting) from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{setting}: {what} file {str(path)!r} is larger than {MAX_PEM_BYTES} bytes",
                          field=setting)
    return data


def read_certificates(path: Path | str, setting: str,
                      what: str = "certificate") -> tuple[bytes, list[x509.Certificate]]:
    """The PEM bytes of ``path`` and the certificates in it (at least one), else ConfigError naming ``setting``."""
    data = _read(path, setting, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"{setting}: {str(path)!r} holds no PEM certificate ({what} expected)", field=setting)
    return data, certificates


def read_private_key(path: Path | str, setting: str) -> bytes:
    """The PEM bytes of an unencrypted private key, else ConfigError naming ``setting``."""
    data = _read(path, setting, "private key")
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{setting}: the private key in {str(path)!r} is encrypted; give an unencrypted key",
                          field=setting) from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{setting}: {str(path)!r} holds no usable PEM private key ({type(err).__name__})",
                          field=setting) from None
    return data


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its private key, both PEM, checked to belong together."""

    chain: bytes
    key: bytes
    certificate: x509.Certificate

    @classmethod
    def load(cls, cert_file: Path | str, key_file: Path | str, cert_setting: str, key_setting: str) -> KeyPair:
        chain, certificates = read_certificates(cert_file, cert_setting)
        key = read_private_key(key_file, key_setting)
        leaf = certificates[0]
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        public = serialization.load_pem_private_key(key, password=None).public_key()
        if public.public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
            raise ConfigError(f"{key_setting}: the private key in {str(key_file)!r} does not match the certificate "
                              f"in {cert_setting} ({str(cert_file)!r})", field=key_setting)
        return cls(chain, key, leaf)


def server_credentials(cert_file: Path | str, key_file: Path | str, client_ca_file: Path | str | None = None, *,
                       settings: tuple[str, str, str] = ("tls_cert_file", "tls_key_file", "tls_client_ca_file"),
                       ) -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca_file`` every caller must present a certificate signed by it.
    ``settings`` name the three files in errors."""
    pair = KeyPair.load(cert_file, key_file, settings[0], settings[1])
    if client_ca_file is None:
        return grpc.ssl_server_credentials([(pair.key, pair.chain)])
    client_ca, _ = read_certificates(client_ca_file, settings[2], "client CA")
    return grpc.ssl_server_credentials([(pair.key, pair.chain)], root_certificates=client_ca,
                                       require_client_auth=True)


def channel_credentials(ca_file: Path | str | None = None, cert_file: Path | str | None = None,
                        key_file: Path | str | None = None, *,
                        settings: tuple[str, str, str] = ("tls_ca_file", "tls_client_cert_file", "tls_client_key_file"),
                        ) -> grpc.ChannelCredentials:
    """TLS channel credentials verifying servers against ``ca_file`` (None: the system roots) and, with
    ``cert_file`` and ``key_file``, presenting that client certificate."""
    if (cert_file is None) != (key_file is None):
        raise ConfigError(f"{settings[1]} and {settings[2]} must be given together", field=settings[1])
    roots = read_certificates(ca_file, settings[0], "CA")[0] if ca_file is not None else None
    if cert_file is None or key_file is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    pair = KeyPair.load(cert_file, key_file, settings[1], settings[2])
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=pair.key, certificate_chain=pair.chain)


def server_credentials_from_config(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The credentials of a server started with ``config``; None when it serves plaintext."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    return server_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file,
                              settings=(setting_name("tls_cert_file"), setting_name("tls_key_file"),
                                        setting_name("tls_client_ca_file")))


def channel_credentials_from_config(config: ServerConfig) -> grpc.ChannelCredentials | None:
    """The credentials of the channels this process opens to other servers; None for plaintext
    (neither ``tls_ca_file`` nor ``tls_client_cert_file`` set)."""
    if config.tls_ca_file is None and config.tls_client_cert_file is None:
        return None
    return channel_credentials(config.tls_ca_file, config.tls_client_cert_file, config.tls_client_key_file,
                               settings=(setting_name("tls_ca_file"), setting_name("tls_client_cert_file"),
                                         setting_name("tls_client_key_file")))


def check_server_files(config: ServerConfig) -> None:
    """Read and check every TLS file ``config`` names (ConfigError naming the first bad setting)."""
    server_credentials_from_config(config)
    channel_credentials_from_config(config)


def certificate_host_name(cert_file: Path | str, setting: str = setting_name("tls_cert_file")) -> str | None:
    """The first DNS name (not a wildcard) or IP address among the certificate's subject alternative names,
    else its common name: the name a client probing the server on loopback must expect; None when it
    names no host."""
    _, certificates = read_certificates(cert_file, setting)
    leaf = certificates[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [n for n in names.get_values_for_type(x509.DNSName) if "*" not in n]
        hosts += [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
        if hosts:
            return hosts[0]
    except x509.ExtensionNotFound:
        pass
    common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else None
