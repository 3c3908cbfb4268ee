"""One error tree for the whole service.

Everything `core` raises on purpose derives from :class:`ServiceError`. Errors from lower layers
(botocore, lance, PIL) are translated into this tree where they are caught; `functions/` maps the
tree to HTTP status codes in one table.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises deliberately."""


class NotFound(ServiceError):
    """A product, object or record that does not exist."""


class InvalidInput(ServiceError):
    """Something the caller sent is wrong; retrying the same input will fail again."""


class InvalidImage(InvalidInput):
    """Image bytes that cannot be decoded, or a format we do not accept."""


class PayloadTooLarge(InvalidInput):
    """Input over a configured byte or pixel limit (including decompression bombs)."""


class Unauthorized(ServiceError):
    """Missing credentials for an action that needs them."""


class Forbidden(ServiceError):
    """Credentials present but wrong."""


class RateLimited(ServiceError):
    """Too many requests from one client; ``retry_after`` seconds until the next is accepted."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """A dependency (object storage, the catalog) cannot be reached right now; retry later."""


class ModelLoadError(ServiceError):
    """Configured model weights cannot be loaded."""


class ConfigError(ServiceError):
    """The settings are inconsistent or incomplete."""
