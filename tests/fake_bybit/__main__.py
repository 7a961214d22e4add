"""Run the fake Bybit by hand: ``python -m tests.fake_bybit [--port 8765] [--fast]``.

It prints the URLs and a demo API key pair, then serves until Ctrl-C. Try::

    quantnet data fetch --symbols BTCUSDT,ETHUSDT --interval 60 --start 2024-01-01 \\
        --end 2024-02-01 --out /tmp/bars --rest-url http://127.0.0.1:8765
    quantnet stream --symbols BTCUSDT --interval 1 --rest-url http://127.0.0.1:8765 \\
        --ws-url 'ws://127.0.0.1:8765/v5/public/{category}' --max-bars 5

The market clock runs in real time (the example's 1-minute bars close on the minute, so its first
line can take up to a minute; ``stream`` logs "connected, waiting for the first closed bar"
meanwhile). With ``--fast`` it runs 1000 times faster (a 1-minute bar closes every 60 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from tests.fake_bybit.server import FakeBybit, real_ms

DEMO_KEY = "demo-key"
DEMO_SECRET = "demo-secret"  # a fake venue's fake key: it opens nothing anywhere


async def serve(port: int, fast: bool) -> None:
    server = FakeBybit(port=port, keys={DEMO_KEY: DEMO_SECRET})
    await server.start()
    # real time by default (a 1-minute bar closes on the minute); --fast: 1000x
    server.start_market(real_ms(), step_ms=1_000, tick=0.001 if fast else 1.0)
    print(f"fake Bybit on {server.rest_url}")
    print(f"  public ws:  {server.ws_public_url}")
    print(f"  private ws: {server.ws_private_url}")
    print(f"  demo credentials: BYBIT_API_KEY={DEMO_KEY} BYBIT_API_SECRET={DEMO_SECRET}")
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake Bybit v5 venue")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fast", action="store_true", help="run the market clock 1000x faster")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.fast))


if __name__ == "__main__":
    main()
