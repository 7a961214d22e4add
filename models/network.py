"""QuantNet (Koshiyama et al. 2022, section 3.3): per-market encoder and decoder around one transfer
layer shared by every market, and the no-transfer baselines.

For market i: e_t = enc_i(r_{t-1}, e_{t-1}); z_t = omega(e_t) (shared); d_t = dec_i(z_t, d_{t-1});
s_t = tanh(W_i d_t + b_i). Only omega is shared, so gradients from every market reach it while each
market's own parameters learn from that market alone. Linear components are affine maps (stacked
layers with dropout between them, no activation), LSTM components are ``nn.LSTM`` so training gets
the fused kernels; :class:`models.stepper.SignalStepper` repacks the same weights for per-bar use.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from models.config import ModelConfig

LSTMState = tuple[Tensor, Tensor]
# (encoder, transfer, decoder) states of one market; None for linear parts
MarketState = tuple[LSTMState | None, LSTMState | None, LSTMState | None]


class Dense(nn.Module):
    """Stack of affine layers (the paper's 'linear' component)."""

    kind = "linear"

    def __init__(self, n_in: int, n_out: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(n_in if i == 0 else n_out, n_out) for i in range(layers))
        self.dropout = dropout

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, None]:
        for i, layer in enumerate(self.layers):
            if i and self.dropout:
                x = nn.functional.dropout(x, self.dropout, self.training)
            x = layer(x)
        return x, None


class Recurrent(nn.Module):
    """``nn.LSTM`` (batch first) that returns its final (h, c)."""

    kind = "lstm"

    def __init__(self, n_in: int, n_out: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, n_out, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        y, (h, c) = self.lstm(x, state)
        return y, (h, c)


Block = Dense | Recurrent


def _block(kind: str | None, n_in: int, n_out: int, layers: int, dropout: float) -> Block | None:
    if kind is None:
        return None
    return (Recurrent if kind == "lstm" else Dense)(n_in, n_out, layers, dropout)


class MarketNet(nn.Module):
    """The market-specific parts: encoder, decoder and the tanh output layer W_i d_t + b_i."""

    def __init__(self, config: ModelConfig, n_assets: int) -> None:
        super().__init__()
        c = config
        self.encoder = _block(
            c.encoder_kind, n_assets, c.transfer_dim, c.encoder_layers, c.part_dropout("encoder")
        )
        dec_in = c.transfer_dim if self.encoder is not None else n_assets
        self.decoder = _block(
            c.decoder_kind, dec_in, c.decoder_dim, c.decoder_layers, c.part_dropout("decoder")
        )
        head_in = c.decoder_dim if self.decoder is not None else n_assets
        self.head = nn.Linear(head_in, n_assets)
        # Per-asset input divisor, fitted on training rows only (see QuantNet.fit_input_scale).
        self.register_buffer("input_scale", torch.ones(n_assets))
        self.register_buffer("scale_fitted", torch.zeros((), dtype=torch.bool))


class QuantNet(nn.Module):
    """All markets of one model. Markets are addressed by name or by their position (insertion order).

    ``forward(market, x)`` maps inputs ``x`` of shape ``(B, T, n_i)`` (row t holds the returns of
    t-1, missing as 0) to signals in (-1, 1) of the same shape.
    """

    def __init__(
        self,
        config: ModelConfig,
        markets: Mapping[str, Sequence[str]] | Iterable[tuple[str, Sequence[str]]],
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.market_names: list[str] = []
        self.assets: dict[str, tuple[str, ...]] = {}
        self.markets = nn.ModuleList()
        with _seeded(seed):
            self.shared = _block(
                config.transfer_kind,
                config.transfer_dim,
                config.transfer_dim,
                config.transfer_layers,
                config.part_dropout("transfer"),
            )
        items = markets.items() if isinstance(markets, Mapping) else markets
        for i, (name, assets) in enumerate(items):
            self.add_market(name, assets, seed=None if seed is None else seed + 1 + i)

    # -- markets ---------------------------------------------------------------------------------

    def add_market(self, name: str, assets: Sequence[str], *, seed: int | None = None) -> int:
        """Append a market with freshly initialised encoder, decoder and output layer (transfer to a
        new market keeps the shared layer as trained)."""
        if name in self.assets:
            raise ValueError(f"market {name!r} already in the model")
        assets = tuple(str(a) for a in assets)
        if not assets or len(set(assets)) != len(assets):
            raise ValueError(f"market {name!r}: asset names must be non-empty and unique")
        with _seeded(seed):
            net = MarketNet(self.config, len(assets))
        ref = next(self.parameters(), None)
        if ref is not None:
            net.to(device=ref.device, dtype=ref.dtype)
        self.markets.append(net)
        self.market_names.append(name)
        self.assets[name] = assets
        return len(self.market_names) - 1

    def index(self, market: str | int) -> int:
        if isinstance(market, int):
            return market
        try:
            return self.market_names.index(market)
        except ValueError:
            raise KeyError(
                f"market {market!r} not in the model (has {', '.join(self.market_names)})"
            ) from None

    def fit_input_scale(self, market: str | int, train_returns: np.ndarray) -> None:
        """Set a market's input divisor to each asset's return std over ``train_returns`` (training
        rows only, so validation data never shapes the inputs). Assets with fewer than two returns
        there take the median of the others. A no-op under ``input_scaling='none'``."""
        net = self.markets[self.index(market)]
        if self.config.input_scaling == "none":
            return
        r = np.asarray(train_returns, dtype=np.float64)
        count = np.isfinite(r).sum(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # columns with < 2 values: handled below
            std = np.nanstd(r, axis=0, ddof=1)
        ok = (count >= 2) & np.isfinite(std) & (std > 0)
        fallback = float(np.median(std[ok])) if ok.any() else 1.0
        std = np.where(ok, std, fallback)
        with torch.no_grad():
            net.input_scale.copy_(torch.as_tensor(std, dtype=net.input_scale.dtype))
            net.scale_fitted.fill_(True)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(()) if self.shared is None else self.shared.parameters()

    def market_parameters(self, market: str | int) -> Iterator[nn.Parameter]:
        return self.markets[self.index(market)].parameters()

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self, market: str | int, x: Tensor, state: MarketState | None = None
    ) -> tuple[Tensor, MarketState]:
        net = self.markets[self.index(market)]
        enc_s, tr_s, dec_s = state if state is not None else (None, None, None)
        h = x / net.input_scale
        if net.encoder is not None:
            h, enc_s = net.encoder(h, enc_s)
        if self.shared is not None:
            h, tr_s = self.shared(h, tr_s)
        if net.decoder is not None:
            h, dec_s = net.decoder(h, dec_s)
        return torch.tanh(net.head(h)), (enc_s, tr_s, dec_s)

    def forward_many(self, items: Sequence[tuple[int, Tensor]]) -> list[Tensor]:
        """Signals for several markets from zero state, running the shared layer once for all
        windows of equal length (one call instead of one per market)."""
        encoded = []
        for i, x in items:
            net = self.markets[i]
            x = x / net.input_scale
            encoded.append(net.encoder(x)[0] if net.encoder is not None else x)
        if self.shared is not None:
            by_len: dict[int, list[int]] = {}
            for k, e in enumerate(encoded):
                by_len.setdefault(e.shape[1], []).append(k)
            for ks in by_len.values():
                sizes = [encoded[k].shape[0] for k in ks]
                z = self.shared(torch.cat([encoded[k] for k in ks]))[0]
                for k, part in zip(ks, z.split(sizes), strict=True):
                    encoded[k] = part
        out = []
        for (i, _), h in zip(items, encoded, strict=True):
            net = self.markets[i]
            if net.decoder is not None:
                h = net.decoder(h)[0]
            out.append(torch.tanh(net.head(h)))
        return out

    @torch.no_grad()
    def signals(self, market: str | int, returns: np.ndarray) -> np.ndarray:
        """Positions for a (T × n) return history (NaN = missing), eval mode, zero initial state:
        row t is computed from rows before t and trades the return of row t; row 0 (no past) is 0.
        ``SignalStepper.step(returns[t])`` gives row t + 1."""
        p = next(self.parameters())
        r = np.asarray(returns, dtype=np.float64)
        out = np.zeros(r.shape)
        if len(r) < 2:
            return out
        x = torch.as_tensor(np.nan_to_num(r[:-1], nan=0.0, posinf=0.0, neginf=0.0), dtype=p.dtype)
        was = self.training
        self.eval()
        try:
            s, _ = self(market, x.to(p.device).unsqueeze(0))
        finally:
            self.train(was)
        out[1:] = s[0].cpu().numpy()
        return out

    @torch.no_grad()
    def encodings(
        self, market: str | int, returns: np.ndarray, *, part: Literal["encoder", "transfer"] = "encoder"
    ) -> np.ndarray:
        """A market's representations over a (T × n) return history (NaN = missing), eval mode,
        zero initial state: row t is e_t (``part="encoder"``) or z_t = omega(e_t) (``"transfer"``),
        computed from rows before t exactly as :meth:`signals` computes row t's signal; row 0 (no
        past) is NaN. Shape (T, N). What the paper clusters to compare markets; no-transfer models
        have no such layer."""
        net = self.markets[self.index(market)]
        if net.encoder is None or self.shared is None:
            raise ValueError(f"{self.config.variant} models have no encoder or transfer layer")
        p = next(self.parameters())
        x = np.nan_to_num(np.asarray(returns, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)[:-1]
        out = np.full((len(returns), self.config.transfer_dim), np.nan)
        if len(x) == 0:
            return out
        was = self.training
        self.eval()
        try:
            h = torch.as_tensor(x, dtype=p.dtype, device=p.device).unsqueeze(0) / net.input_scale
            h = net.encoder(h)[0]
            if part == "transfer":
                h = self.shared(h)[0]
        finally:
            self.train(was)
        out[1:] = h[0].cpu().numpy()
        return out


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Initialise under a fixed seed without disturbing the caller's global RNG stream."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
