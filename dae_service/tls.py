"""
TLS for daemons and pool workers, terminated in the process that serves the
connection: a certificate chain and a private key (PEM files, the config's
C{tls = {cert, key}}) become Twisted's L{CertificateOptions} (pyOpenSSL), and
L{TLSServerEndpoint} wraps any server endpoint so that what it accepts
speaks TLS, exactly as Twisted's C{ssl:} endpoint does (the wrapped factory
sits inside a L{TLSMemoryBIOFactory}).  Wrapping an endpoint rather than
rewriting the endpoint string is what lets a pool worker serve TLS on the
socket it adopted from the manager.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["serverContextFactory", "TLSServerEndpoint"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def serverContextFactory(certPath: str, keyPath: str) -> Any:
    """
    The server side TLS options for the certificate chain in C{certPath}
    (the server's certificate first, then any intermediates) and the
    private key in C{keyPath}, both PEM.

    @raise OSError: if a file cannot be read.
    @raise ValueError: if they hold no certificate, or the key does not
        match it (pyOpenSSL's own errors are turned into this).
    """
    from OpenSSL import SSL, crypto
    from twisted.internet import ssl
    from twisted.internet.error import VerifyError

    with open(certPath, "rb") as f:
        certPEM = f.read()
    with open(keyPath, "rb") as f:
        keyPEM = f.read()
    blocks = _PEM_CERTIFICATE.findall(certPEM)
    if not blocks:
        raise ValueError(f"{certPath}: no PEM certificate in it")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(blocks[0] + b"\n" + keyPEM)
        chain = [ssl.Certificate.loadPEM(block).original for block in blocks[1:]]
        return ssl.CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            extraCertChain=chain or None,
        )
    except (SSL.Error, crypto.Error, VerifyError) as e:
        raise ValueError(f"{certPath}, {keyPath}: {e}") from None


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listens on C{wrapped} with every connection wrapped in TLS.

    @param contextFactory: from L{serverContextFactory}.
    """

    def __init__(self, wrapped: Any, contextFactory: Any) -> None:
        self.wrapped = wrapped
        self.contextFactory = contextFactory

    @property
    def countsConnections(self) -> bool:
        """
        Whether the ports it makes count their connections: as the wrapped
        endpoint's do (see L{dae_service.workerport.WorkerPort}).
        """
        return getattr(self.wrapped, "countsConnections", False)

    def listen(self, factory: Any) -> Deferred:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self.wrapped.listen(TLSMemoryBIOFactory(self.contextFactory, False, factory))
