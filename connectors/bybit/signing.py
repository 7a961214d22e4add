"""Request signing exactly as Bybit v5 specifies, and API credentials that cannot leak.

The signature covers the very bytes that go on the wire: callers serialise the query string or
JSON body once, sign that text and send that text, never a re-serialisation of it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

from connectors.bybit.errors import AuthError


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key pair. ``repr``/``str`` never show the secret and show only the key's tail."""

    api_key: str
    api_secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(api_key='...{self.api_key[-4:]}')"

    __str__ = __repr__

    @classmethod
    def from_env(cls, key_var: str = "BYBIT_API_KEY", secret_var: str = "BYBIT_API_SECRET") -> Credentials:
        """Read the pair from the environment; the error names the variables, never values."""
        key = os.environ.get(key_var, "").strip()
        secret = os.environ.get(secret_var, "").strip()
        missing = [name for name, value in ((key_var, key), (secret_var, secret)) if not value]
        if missing:
            raise AuthError(f"API credentials missing: set environment variable(s) {', '.join(missing)}")
        return cls(key, secret)


def hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_payload(creds: Credentials, timestamp_ms: int, recv_window: int, payload: str) -> str:
    """HMAC-SHA256 of ``timestamp + api_key + recv_window + payload`` (payload: the raw query
    string of a GET or the raw JSON body of a POST), lowercase hex."""
    return hmac_hex(creds.api_secret, f"{timestamp_ms}{creds.api_key}{recv_window}{payload}")


def auth_headers(creds: Credentials, timestamp_ms: int, recv_window: int, payload: str) -> dict[str, str]:
    return {
        "X-BAPI-API-KEY": creds.api_key,
        "X-BAPI-TIMESTAMP": str(timestamp_ms),
        "X-BAPI-RECV-WINDOW": str(recv_window),
        "X-BAPI-SIGN": sign_payload(creds, timestamp_ms, recv_window, payload),
        "X-BAPI-SIGN-TYPE": "2",
    }


def ws_auth_args(creds: Credentials, expires_ms: int) -> list[object]:
    """Arguments of the private websocket ``auth`` op: key, expiry (int ms, venue clock) and
    HMAC over ``"GET/realtime" + expires``."""
    return [creds.api_key, expires_ms, hmac_hex(creds.api_secret, f"GET/realtime{expires_ms}")]


def query_string(params: dict[str, object]) -> str:
    """The GET query as Bybit expects to verify it: keys sorted, None skipped, not URL-encoded
    (every value Bybit takes is URL-safe; anything that is not is refused here, loudly)."""
    parts = []
    for key in sorted(params):
        value = params[key]
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if any(c in text for c in "&=#+ ?"):
            raise ValueError(f"query parameter {key}={text!r} contains characters that need encoding")
        parts.append(f"{key}={text}")
    return "&".join(parts)
