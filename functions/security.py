"""Who may do what: the keys, the production start check, clients for rate limits, and signed
image URLs.

- ``API_KEY``: writes, shopper data (histories, ``/stats``, ``/uploads``) and ``/admin``.
- ``READ_API_KEY``: when set, reads (search, similar, recommendations, products, images) need it
  or ``API_KEY``; it can never write (403).
- ``WEBHOOK_TOKEN``: bucket notifications.
"""

import hashlib
import hmac
import logging
import time
from typing import Literal

from pydantic import SecretStr

from core import errors
from core.settings import Settings

log = logging.getLogger(__name__)

Need = Literal["read", "write"]


def check_deployment(settings: Settings) -> None:
    """In production, refuse to run without ``API_KEY`` and ``WEBHOOK_TOKEN`` (anyone could write,
    roll back the catalog or make the service spawn GPU work) unless ``ALLOW_ANONYMOUS_WRITES``
    says that is meant; that opt-out is logged."""
    missing = [name for name, v in (("API_KEY", settings.api_key), ("WEBHOOK_TOKEN", settings.webhook_token)) if not v]
    if settings.deployment != "production" or not missing:
        return
    names = " and ".join(missing)
    if settings.allow_anonymous_writes:
        log.warning("ALLOW_ANONYMOUS_WRITES=true: running in production without %s; writes are open to anyone", names)
        return
    raise errors.ConfigError(
        f"DEPLOYMENT=production needs {names}: set {'them' if len(missing) > 1 else 'it'} in the environment "
        f"(on Modal, in the app's Secret: modal secret create shelfsearch API_KEY=... WEBHOOK_TOKEN=... plus the "
        "S3 settings). To run with writes open on purpose, set ALLOW_ANONYMOUS_WRITES=true; for local work, "
        "DEPLOYMENT=development (what `python -m local serve` sets)."
    )


def _token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _is(token: str | None, secret: SecretStr | None) -> bool:
    """Constant-time comparison with a configured secret."""
    return (
        token is not None
        and secret is not None
        and hmac.compare_digest(token.encode(), secret.get_secret_value().encode())
    )


def check_bearer(authorization: str | None, secret: SecretStr | None, name: str) -> None:
    """``Authorization: Bearer <secret>`` when ``secret`` is configured: 401 without credentials,
    403 with wrong ones (the secret is never echoed)."""
    if secret is None:
        return
    token = _token(authorization)
    if token is None:
        raise errors.Unauthorized(f"this endpoint needs Authorization: Bearer <{name}>")
    if not _is(token, secret):
        raise errors.Forbidden(f"invalid {name}")


def authorize(settings: Settings, authorization: str | None, need: Need) -> None:
    """Reads pass with either key when ``READ_API_KEY`` is set (and freely when it is not);
    everything else needs ``API_KEY`` when it is set, and the read key gets 403 there."""
    if need == "read":
        if settings.read_api_key is None:
            return
        token = _token(authorization)
        if token is None:
            raise errors.Unauthorized("this endpoint needs Authorization: Bearer <READ_API_KEY or API_KEY>")
        if not (_is(token, settings.read_api_key) or _is(token, settings.api_key)):
            raise errors.Forbidden("invalid key")
        return
    if settings.api_key is None:
        return
    token = _token(authorization)
    if token is None:
        raise errors.Unauthorized("this endpoint needs Authorization: Bearer <API_KEY>")
    if _is(token, settings.api_key):
        return
    if _is(token, settings.read_api_key):
        raise errors.Forbidden("the read-only key (READ_API_KEY) cannot do this; it needs API_KEY")
    raise errors.Forbidden("invalid API_KEY")


def trusted(settings: Settings, authorization: str | None) -> bool:
    """Whether the request carries ``API_KEY``: the shop's own backend, which rate limits spare."""
    return _is(_token(authorization), settings.api_key)


class ImageSigner:
    """Image URLs that work in an ``<img>`` tag while reads need a key: ``?exp=<epoch>&sig=<hmac>``,
    valid until ``exp``. ``exp`` is rounded up to the next multiple of ``ttl`` seconds, so a URL
    stays the same (and cacheable) for a while, and lives between ``ttl`` and ``2 ttl``."""

    def __init__(self, secret: SecretStr, ttl: int) -> None:
        self._key = hashlib.sha256(b"image-url\0" + secret.get_secret_value().encode()).digest()
        self.ttl = ttl

    def _sig(self, product_id: str, exp: int) -> str:
        return hmac.new(self._key, f"{product_id}\0{exp}".encode(), hashlib.sha256).hexdigest()[:32]

    def query(self, product_id: str, now: float | None = None) -> str:
        t = time.time() if now is None else now
        exp = (int(t) // self.ttl + 2) * self.ttl
        return f"exp={exp}&sig={self._sig(product_id, exp)}"

    def valid(self, product_id: str, exp: int | None, sig: str | None, now: float | None = None) -> bool:
        if exp is None or sig is None or exp < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(sig, self._sig(product_id, exp))
