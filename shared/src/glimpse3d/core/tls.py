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

Renewed files (cert-manager rewrites the mounted Secret) are taken without a restart:
:class:`ReloadingServerCredentials` (gRPC servers, through ``grpc.dynamic_ssl_server_credentials``),
:class:`ReloadingSSLContext` (the HTTPS facade) and :class:`ReloadingChannelCredentials` (channels to
other servers, opened again by their holder). A renewed file that cannot be used is logged as an error
naming its setting and the certificate read before stays in use.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from glimpse3d.core.config import DEFAULT_PREFIX, ConfigError, ServerConfig

logger = logging.getLogger(__name__)
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


SERVER_SETTINGS = (setting_name("tls_cert_file"), setting_name("tls_key_file"), setting_name("tls_client_ca_file"))
CHANNEL_SETTINGS = (setting_name("tls_ca_file"), setting_name("tls_client_cert_file"),
                    setting_name("tls_client_key_file"))


def server_credentials_from_config(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The credentials of a server started with ``config``, re-reading renewed files
    (:class:`ReloadingServerCredentials`); None when it serves plaintext."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    return ReloadingServerCredentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file,
                                      settings=SERVER_SETTINGS).credentials()


def reloading_channel_credentials_from_config(config: ServerConfig) -> ReloadingChannelCredentials | None:
    """Like :func:`channel_credentials_from_config`, re-read when the files are renewed."""
    if config.tls_ca_file is None and config.tls_client_cert_file is None:
        return None
    return ReloadingChannelCredentials(config.tls_ca_file, config.tls_client_cert_file, config.tls_client_key_file,
                                       settings=CHANNEL_SETTINGS)


def channel_credentials_from_config(config: ServerConfig) -> grpc.ChannelCredentials | None:
    """The credentials of the channels this process opens to other servers; None for plaintext
    (neither ``tls_ca_file`` nor ``tls_client_cert_file`` set)."""
    if config.tls_ca_file is None and config.tls_client_cert_file is None:
        return None
    return channel_credentials(config.tls_ca_file, config.tls_client_cert_file, config.tls_client_key_file,
                               settings=CHANNEL_SETTINGS)


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


# ---- reloading renewed certificates ----------------------------------------------------------------
#
# cert-manager (or any renewal) rewrites the mounted files in place; these classes notice a change by
# the files' (mtime, size, inode) and re-read them, so new connections get the new certificate without
# a restart. A renewed file that cannot be used is logged as an error naming its setting and the
# material read before stays in use: a bad renewal never takes a serving process down.


_Stamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(paths: Sequence[Path | None]) -> _Stamp:
    """What tells that one of ``paths`` changed (None for a file that cannot be stat'ed right now)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        if path is None:
            stamps.append(None)
            continue
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamps)


_T = TypeVar("_T")


class _Watched:
    """TLS files re-read when their stamps change; ``_load`` reads them (ConfigError for a bad one)."""

    def __init__(self, paths: Sequence[Path | None], what: str) -> None:
        self._paths = list(paths)
        self._what = what
        self._lock = threading.Lock()
        self._seen = _stamp(self._paths)
        self.reloads = 0  # how many times renewed files were taken into use

    def _changed(self) -> _Stamp | None:
        stamp = _stamp(self._paths)
        return None if stamp == self._seen else stamp

    def _reload(self, build: Callable[[], _T], setting: str) -> _T | None:
        """``build()`` when the files changed since last seen, else None. A bad file (ConfigError) is
        logged naming its setting (``setting`` when the error names none) once, not at every handshake,
        and gives None: the caller keeps what it had."""
        if self._changed() is None:
            return None
        with self._lock:
            stamp = self._changed()
            if stamp is None:
                return None
            self._seen = stamp
            try:
                return build()
            except ConfigError as err:
                field = err.field or setting
                logger.error("%s: the renewed TLS files cannot be used (%s); still serving the certificate read "
                             "before", field, err, extra={"setting": field, "tls": self._what})
                return None

    def _taken(self) -> None:
        self.reloads += 1
        logger.info("reloaded renewed TLS files", extra={"tls": self._what, "reloads": self.reloads})


class ReloadingServerCredentials(_Watched):
    """gRPC server credentials whose certificate, key and client CA are re-read when their files change
    (``grpc.dynamic_ssl_server_credentials``: gRPC asks :meth:`fetch` before every new handshake).
    With ``client_ca_file`` every caller must present a certificate signed by it, also after a reload."""

    def __init__(self, cert_file: Path | str, key_file: Path | str, client_ca_file: Path | str | None = None, *,
                 settings: tuple[str, str, str] = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")) -> None:
        self._files = (Path(cert_file), Path(key_file), None if client_ca_file is None else Path(client_ca_file))
        self._settings = settings
        super().__init__(self._files, "grpc server")
        self._material = self._read()  # a bad file at start-up is a ConfigError naming its setting

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        cert_file, key_file, ca_file = self._files
        pair = KeyPair.load(cert_file, key_file, self._settings[0], self._settings[1])
        client_ca = read_certificates(ca_file, self._settings[2], "client CA")[0] if ca_file is not None else None
        return pair.key, pair.chain, client_ca

    @staticmethod
    def _configuration(material: tuple[bytes, bytes, bytes | None]) -> grpc.ServerCertificateConfiguration:
        key, chain, client_ca = material
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=client_ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed and can be used, else None (keep the current)."""
        material = self._reload(self._read, self._settings[0])
        if material is None or material == self._material:
            return None
        self._material = material
        self._taken()
        return self._configuration(material)

    def credentials(self) -> grpc.ServerCredentials:
        # grpc documents a fetcher's None as "keep the current configuration"; typeshed omits it.
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._material), self.fetch,  # pyright: ignore[reportArgumentType]
            require_client_authentication=self._files[2] is not None)


class ReloadingChannelCredentials(_Watched):
    """Channel credentials (CA to verify servers, client certificate to present) rebuilt when their files
    change. gRPC channels cannot swap credentials, so a holder of channels compares :attr:`generation`
    after :meth:`current` and opens new channels when it moved (``ServiceClients`` does)."""

    def __init__(self, ca_file: Path | str | None = None, cert_file: Path | str | None = None,
                 key_file: Path | str | None = None, *,
                 settings: tuple[str, str, str] = ("tls_ca_file", "tls_client_cert_file", "tls_client_key_file"),
                 ) -> None:
        self._files = tuple(None if f is None else Path(f) for f in (ca_file, cert_file, key_file))
        self._settings = settings
        super().__init__(self._files, "grpc client")
        self._credentials = channel_credentials(*self._files, settings=settings)
        self.generation = 0

    def current(self) -> tuple[grpc.ChannelCredentials, int]:
        """The credentials to open channels with, and their generation (it moves at every reload)."""
        renewed = self._reload(lambda: channel_credentials(*self._files, settings=self._settings), self._settings[1])
        if renewed is not None:
            self._credentials = renewed
            self.generation += 1
            self._taken()
        return self._credentials, self.generation


class ReloadingSSLContext(_Watched):
    """The certificate of an ``ssl`` server context (the HTTPS facade) re-read when its files change.

    :meth:`install` hooks the context's ``sni_callback``, which OpenSSL runs at every ClientHello (with or
    without SNI); when the files changed it builds a context with the new chain and switches the
    handshake to it (``SSLObject.context``, the ``ssl`` module's documented way to pick a certificate
    per handshake), so that every new connection gets the new certificate at once. The client CA
    and verify mode stay those of the installed context."""

    def __init__(self, cert_file: Path | str, key_file: Path | str, client_ca_file: Path | str | None = None, *,
                 settings: tuple[str, str, str] = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")) -> None:
        self._files = (Path(cert_file), Path(key_file), None if client_ca_file is None else Path(client_ca_file))
        self._settings = settings
        super().__init__(self._files, "https server")
        self._current: ssl.SSLContext | None = None

    def install(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Reload into ``context`` from now on (its certificate was loaded from the same files)."""
        self._current = context
        self._seen = _stamp(self._paths)
        context.sni_callback = self._on_client_hello
        return context

    def _build(self) -> ssl.SSLContext:
        cert_file, key_file, ca_file = self._files
        KeyPair.load(cert_file, key_file, self._settings[0], self._settings[1])  # errors naming the setting
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert_file, key_file)
            if ca_file is not None:
                read_certificates(ca_file, self._settings[2], "client CA")
                context.load_verify_locations(cafile=ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, OSError) as err:  # the files changed again since they were checked
            raise ConfigError(f"{self._settings[0]}: cannot load {str(cert_file)!r}: {err}",
                              field=self._settings[0]) from None
        return context

    def current(self) -> ssl.SSLContext | None:
        """The context new handshakes should use (None before :meth:`install`)."""
        renewed = self._reload(self._build, self._settings[0])
        if renewed is not None:
            self._current = renewed
            self._taken()
        return self._current

    def _on_client_hello(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                         context: ssl.SSLContext) -> None:
        del server_name
        current = self.current()
        if current is not None and current is not context:
            connection.context = current
