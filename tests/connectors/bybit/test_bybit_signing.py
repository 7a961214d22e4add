"""The signer against vectors computed with pybit (Bybit's official SDK), and key hygiene."""

from __future__ import annotations

import json

import pytest
from pybit import _http_manager

from connectors.bybit.errors import AuthError, SignatureError
from connectors.bybit.rest import BybitRest
from connectors.bybit.signing import Credentials, auth_headers, query_string, sign_payload, ws_auth_args
from tests.connectors.bybit.conftest import KEY, fast_config
from tests.fake_bybit import FakeBybit

CREDS = Credentials("XXXXXXXXXXXXXXXXXX", "YYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY")
TS = 1_658_384_314_791
RECV = 5000


def pybit_sign(payload: str, ts: int = TS, recv: int = RECV) -> str:
    param_str = f"{ts}{CREDS.api_key}{recv}{payload}"
    return _http_manager.generate_signature(False, CREDS.api_secret, param_str)


@pytest.mark.parametrize(
    "params",
    [
        {"category": "linear", "symbol": "BTCUSDT", "interval": "60", "start": 1670601600000, "limit": 1000},
        {"category": "spot", "orderLinkId": "sma-BTCUSDT-1700000000000", "symbol": "BTCUSDT"},
        {"category": "linear", "settleCoin": None, "openOnly": 0},
    ],
)
def test_get_signature_matches_pybit(params: dict) -> None:
    ours = query_string(params)
    theirs = _http_manager._V5HTTPManager.prepare_payload("GET", dict(params))
    assert ours == theirs
    assert sign_payload(CREDS, TS, RECV, ours) == pybit_sign(theirs)


@pytest.mark.parametrize(
    "body",
    [
        {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.012"},
        {
            "category": "spot",
            "symbol": "ETHUSDT",
            "side": "Sell",
            "orderType": "Limit",
            "qty": "0.5",
            "price": "3100.25",
            "timeInForce": "GTC",
            "orderLinkId": "qn-0123456789abcdef",
        },
    ],
)
def test_post_signature_matches_pybit_over_the_exact_body(body: dict) -> None:
    pybit_body = _http_manager._V5HTTPManager.prepare_payload("POST", dict(body))  # json.dumps spacing
    compact = json.dumps(body, separators=(",", ":"))  # what this client sends
    assert sign_payload(CREDS, TS, RECV, pybit_body) == pybit_sign(pybit_body)
    assert sign_payload(CREDS, TS, RECV, compact) == pybit_sign(compact)
    assert pybit_body != compact  # different bytes, different signature: sign what is sent
    assert sign_payload(CREDS, TS, RECV, compact) != pybit_sign(pybit_body)


def test_headers_and_ws_auth_match_pybit() -> None:
    headers = auth_headers(CREDS, TS, RECV, "category=linear")
    assert headers["X-BAPI-SIGN"] == pybit_sign("category=linear")
    assert headers["X-BAPI-TIMESTAMP"] == str(TS) and headers["X-BAPI-RECV-WINDOW"] == "5000"
    expires = 1_662_350_400_000
    key, exp, sig = ws_auth_args(CREDS, expires)
    assert (key, exp) == (CREDS.api_key, expires)
    assert sig == _http_manager.generate_signature(False, CREDS.api_secret, f"GET/realtime{expires}")


def test_query_values_that_would_need_encoding_are_refused() -> None:
    with pytest.raises(ValueError, match="encoding"):
        query_string({"symbol": "BTC USDT"})


def test_credentials_never_show_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials("abcdefgh1234", "s3cr3t-value")
    assert "s3cr3t" not in repr(creds) and "s3cr3t" not in str(creds)
    assert "abcdefgh" not in repr(creds)
    monkeypatch.delenv("QN_TEST_KEY", raising=False)
    monkeypatch.setenv("QN_TEST_SECRET", "s3cr3t-value")
    with pytest.raises(AuthError) as err:
        Credentials.from_env("QN_TEST_KEY", "QN_TEST_SECRET")
    assert "QN_TEST_KEY" in str(err.value) and "s3cr3t" not in str(err.value)
    monkeypatch.setenv("QN_TEST_KEY", "k")
    assert Credentials.from_env("QN_TEST_KEY", "QN_TEST_SECRET").api_secret == "s3cr3t-value"


async def test_bad_signature_is_10004_and_the_echoed_key_is_redacted(fake: FakeBybit) -> None:
    wrong = Credentials(KEY, "not-the-secret")
    async with BybitRest(fast_config(fake), credentials=wrong) as rest:
        with pytest.raises(SignatureError) as err:
            await rest.request("GET", "/v5/order/realtime", {"category": "linear"}, signed=True)
    text = str(err.value)
    assert err.value.ret_code == 10004 and "origin_string[" in text
    assert KEY not in text and "<redacted>" in text and "category=linear" in text


async def test_unknown_key_and_skewed_clock(fake: FakeBybit, creds: Credentials) -> None:
    async with BybitRest(fast_config(fake), credentials=Credentials("nobody", "x")) as rest:
        with pytest.raises(AuthError, match="10003"):
            await rest.request("GET", "/v5/order/realtime", {"category": "linear"}, signed=True)
    fake.skew_ms = 4_000  # venue clock 4 s ahead: unsynced requests are stale, then resynced
    async with BybitRest(fast_config(fake, recv_window=1000), credentials=creds) as rest:
        result = await rest.request("GET", "/v5/order/realtime", {"category": "linear"}, signed=True)
        assert result["list"] == []
        assert 3_500 < rest.offset_ms < 4_500
    fake.skew_ms = -4_000  # venue behind: a timestamp more than 1 s ahead of it is refused
    async with BybitRest(fast_config(fake), credentials=creds) as rest:
        await rest.request("GET", "/v5/order/realtime", {"category": "linear"}, signed=True)
        assert -4_500 < rest.offset_ms < -3_500


async def test_signed_query_is_sent_byte_for_byte(fake: FakeBybit, creds: Credentials) -> None:
    """Bybit's cursors come percent-encoded and go back as they are; the client must not
    re-quote them after signing."""
    cursor = "page_args%3Dfd4300ae-7847%26symbol%3D6%26"
    async with BybitRest(fast_config(fake), credentials=creds) as rest:
        result = await rest.request(
            "GET", "/v5/order/realtime", {"category": "linear", "cursor": cursor}, signed=True
        )
    assert result["list"] == []
