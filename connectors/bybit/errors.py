"""Typed Bybit errors and the retCode table that picks them.

Callers branch on the type (retry, reconcile, give up) rather than on message text; the message
keeps Bybit's own words because they are what a user searches for.
"""

from __future__ import annotations


class BybitError(Exception):
    """Any failure talking to Bybit. ``ret_code`` is Bybit's retCode (or the HTTP status)."""

    retryable = False

    def __init__(self, message: str, *, ret_code: int | None = None, path: str = "") -> None:
        self.ret_code = ret_code
        self.path = path
        where = f"{path}: " if path else ""
        code = f" (retCode {ret_code})" if ret_code is not None else ""
        super().__init__(f"{where}{message}{code}")


class InvalidRequest(BybitError):
    """Bybit refused the parameters (unknown symbol, bad interval, ...): fix the input."""


class AuthError(BybitError):
    """Key missing, invalid, lacking permission or bound to another IP: fatal until fixed."""


class SignatureError(AuthError):
    """Bybit computed another signature (10004); the message carries the string it signed."""


class TimestampError(BybitError):
    """The request timestamp fell outside the recv window (10002): resync the clock, retry."""

    retryable = True


class RateLimited(BybitError):
    """10006 or HTTP 429: wait until ``reset_ms`` (venue time) and retry."""

    retryable = True

    def __init__(self, message: str, *, reset_ms: int = 0, **kw: object) -> None:
        self.reset_ms = reset_ms
        super().__init__(message, **kw)  # type: ignore[arg-type]


class IpBanned(BybitError):
    """HTTP 403: the IP limit was breached; everything must pause for minutes."""

    retryable = True


class ServerError(BybitError):
    """5xx, 10016 or a timeout: the outcome of a write is unknown and must be reconciled."""

    retryable = True


class OrderRejected(BybitError):
    """The venue refused an order for a business reason; ``reason`` is for the OrderUpdate."""


class InsufficientBalance(OrderRejected):
    """110004/110007/110012/170131: not enough margin or balance; resending cannot help."""


class DuplicateOrder(OrderRejected):
    """110072/170141: the orderLinkId exists already, i.e. an earlier attempt went through."""


class OrderNotFound(OrderRejected):
    """110001/170213: no such order (filled, cancelled, or never placed) to amend or cancel."""


class BelowMinimum(OrderRejected):
    """110094/170136/170140: the quantity or notional is under the instrument's minimum."""


_BY_CODE: dict[int, type[BybitError]] = {
    10001: InvalidRequest,
    10002: TimestampError,
    10003: AuthError,
    10004: SignatureError,
    10005: AuthError,
    10006: RateLimited,
    10010: AuthError,
    10016: ServerError,
    10017: InvalidRequest,
    10018: RateLimited,
    10429: RateLimited,
    110001: OrderNotFound,
    170213: OrderNotFound,
    110004: InsufficientBalance,
    110007: InsufficientBalance,
    110012: InsufficientBalance,
    170131: InsufficientBalance,
    110072: DuplicateOrder,
    170141: DuplicateOrder,
    110094: BelowMinimum,
    170140: BelowMinimum,
    170136: BelowMinimum,
}

AMBIGUOUS_CODES = frozenset({10000, 10006, 10016, 10019, 10403, 10429, 170001, 170005, 170007, 170032})
"""retCodes after which an order may or may not exist at the venue (NautilusTrader's list)."""


def error_for(ret_code: int, ret_msg: str, path: str = "", reset_ms: int = 0) -> BybitError:
    """The typed exception for a non-zero retCode; order-path codes not listed are rejections."""
    cls = _BY_CODE.get(ret_code)
    if cls is RateLimited:
        return RateLimited(ret_msg or "too many visits", ret_code=ret_code, path=path, reset_ms=reset_ms)
    if cls is None:
        cls = OrderRejected if path.startswith("/v5/order") else BybitError
        if ret_code in AMBIGUOUS_CODES:
            cls = ServerError
    return cls(ret_msg or "no message", ret_code=ret_code, path=path)
