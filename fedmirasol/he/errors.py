"""The named errors of homomorphic encryption (each message says what to fix)."""

from __future__ import annotations

from fedmirasol.errors import ConfigError


class HEError(ValueError):
    """A homomorphic-encryption failure; the class name says which."""

    def __str__(self) -> str:
        return f"{type(self).__name__}: {super().__str__()}"


class WrongContext(HEError):
    """The ciphertexts were made under another key or other CKKS parameters than this
    context's (a site with the wrong secret context, a server with the wrong public one)."""


class DecryptionFailed(HEError):
    """Ciphertexts under this context's key id do not decrypt to a valid sum (a corrupt file
    or message, or a key that does not match its key id)."""


class CapacityExceeded(HEError):
    """A value (times its weight, times the clients that may add to it) is too large for the
    CKKS scale: the sum would wrap around."""


class TooFewContributors(HEError):
    """A sum over fewer clients than this site accepts to decrypt (`he.min-contributors`)."""


class SecretKeyOnServer(HEError, ConfigError):
    """A file given as the server's context holds a site's secret key."""
