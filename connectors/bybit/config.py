"""Bybit connector settings, the ``[bybit]`` section of the application config.

Secrets never live here: the config only names the environment variables that hold them, so a
config file can be committed, printed or attached to a report without leaking a key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Category = Literal["spot", "linear", "inverse"]

MAINNET_REST = "https://api.bybit.com"
TESTNET_REST = "https://api-testnet.bybit.com"
MAINNET_WS = "wss://stream.bybit.com"
TESTNET_WS = "wss://stream-testnet.bybit.com"


class BybitConfig(BaseModel):
    """Where Bybit is, which market, and how patient to be with it.

    Empty URLs mean "Bybit mainnet, or testnet when ``testnet`` is true"; any other URL (such as
    the fake server in the tests) is used as given. ``ws_public_url`` may contain ``{category}``;
    when it does not, it is used for every category.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    testnet: bool = Field(False, description="use Bybit testnet hosts when no URL is given")
    category: Category = Field("linear", description="spot, linear (USDT/USDC perps) or inverse")
    rest_url: str = Field("", description="REST base URL; empty: mainnet or testnet")
    ws_public_url: str = Field("", description="public stream URL, may contain {category}")
    ws_private_url: str = Field("", description="private stream URL; empty: mainnet or testnet")
    api_key_env: str = Field("BYBIT_API_KEY", description="environment variable holding the API key")
    api_secret_env: str = Field("BYBIT_API_SECRET", description="environment variable holding the secret")
    recv_window: int = Field(5000, ge=100, le=60_000, description="ms a signed request stays valid")
    request_timeout: float = Field(10.0, gt=0, description="seconds per REST request")
    max_retries: int = Field(5, ge=0, le=50, description="retries on timeouts, 5xx and rate limits")
    backoff_initial: float = Field(0.5, gt=0, description="first retry/reconnect delay, seconds")
    backoff_max: float = Field(30.0, gt=0, description="cap on retry/reconnect delays, seconds")
    ban_backoff: float = Field(600.0, ge=0, description="pause after HTTP 403 (IP limit), seconds")
    requests_per_second: float = Field(10.0, gt=0, description="client-side REST throttle")
    ping_interval: float = Field(20.0, gt=0, description="JSON ping period; silence for two is death")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a websocket")
    healthy_after: float = Field(
        60.0, gt=0, description="s a websocket must stay up before the reconnect backoff resets"
    )
    topic_timeout: float = Field(
        0.0, ge=0, description="s a kline topic may be silent before it is resubscribed; 0: interval + 30 s"
    )
    time_sync_interval: float = Field(300.0, gt=0, description="seconds between server-time syncs")

    @model_validator(mode="after")
    def _urls_look_like_urls(self) -> BybitConfig:
        for name in ("rest_url", "ws_public_url", "ws_private_url"):
            value = getattr(self, name)
            if value and "://" not in value:
                raise ValueError(f"{name} {value!r} is not a URL (expected scheme://host...)")
        return self

    def rest_base(self) -> str:
        if self.rest_url:
            return self.rest_url.rstrip("/")
        return TESTNET_REST if self.testnet else MAINNET_REST

    def public_ws(self, category: str | None = None) -> str:
        cat = category or self.category
        if self.ws_public_url:
            return self.ws_public_url.replace("{category}", cat)
        return f"{TESTNET_WS if self.testnet else MAINNET_WS}/v5/public/{cat}"

    def private_ws(self) -> str:
        if self.ws_private_url:
            return self.ws_private_url
        return f"{TESTNET_WS if self.testnet else MAINNET_WS}/v5/private"
