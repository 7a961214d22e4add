"""Incremental inference: advance every market one bar at a time from kept LSTM states.

The trained :class:`~models.network.QuantNet` stores one small module per market, which is right for
training but would cost one kernel launch per market and layer on every bar. The stepper instead
packs each LSTM layer's weights for all markets into zero-padded stacked tensors (markets × in × out)
so one bar of *all* markets is a handful of batched products, whatever the number of markets; linear
layers (no activation) and the input scaling are folded into the next projection. Zero padding is
exact: padded inputs are zero and padded outputs are dropped.

Contract (same as the full-sequence forward pass, to 1e-6): feeding the return vector of bar t
(NaN = missing, fed as 0) yields the signal for bar t+1. ``warm_up`` runs a history through the
full-sequence pass and loads the final states, so a restart costs one pass, not one step per bar.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models._threads import torch_threads
from models.network import Dense, QuantNet, Recurrent

SNAPSHOT_FORMAT = "quantnet-stepper-state"
SNAPSHOT_VERSION = 1

ReturnsLike = np.ndarray | Sequence[float] | Mapping[str, float]


@dataclass(frozen=True, slots=True)
class _Layer:
    """One LSTM layer of all markets (linear layers are folded away when packing)."""

    w: Tensor  # (M, in, 4H) input weights, gates reordered i, f, o, g
    u: Tensor  # (M, H, 4H) recurrent weights
    b: Tensor  # (M, 1, 4H) both biases
    hidden: int
    slot: int  # index into the state lists
    split: tuple[int, int]  # (3H, H): sigmoid gates, cell candidate


class SignalStepper:
    """Per-market recurrent state plus packed weights; ``step`` advances markets by one bar.

    Build with :meth:`from_checkpoint` (or from a model in memory; later changes to the model's
    weights are not seen). Not thread-safe: one owner calls it, as the strategy does per bar.
    ``threads`` is torch's intra-op thread count during a call (restored after; None: untouched).
    """

    def __init__(
        self,
        model: QuantNet,
        *,
        markets: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        threads: int | None = 1,
    ) -> None:
        names = list(model.market_names if markets is None else markets)
        idx = [model.index(n) for n in names]
        if not names:
            raise ValueError("the stepper needs at least one market")
        p = next(model.parameters())
        self.dtype = dtype or p.dtype
        self.markets: tuple[str, ...] = tuple(names)
        self.assets: dict[str, tuple[str, ...]] = {n: model.assets[n] for n in names}
        self.fingerprint = model_fingerprint(model, names)
        self._pos = {n: i for i, n in enumerate(names)}
        self._asset_pos = {n: {a: j for j, a in enumerate(self.assets[n])} for n in names}
        self._n = [len(self.assets[n]) for n in names]
        self._n_max = max(self._n)
        self._model = model
        self._threads = threads
        self._idx = idx
        nets = [model.markets[i] for i in idx]
        m = len(names)
        with torch.no_grad():
            stages: list[list[nn.Module]] = []
            if nets[0].encoder is not None:
                stages.append([net.encoder for net in nets])
            if model.shared is not None:
                stages.append([model.shared] * m)
            if nets[0].decoder is not None:
                stages.append([net.decoder for net in nets])
            units = [unit for blocks in stages for unit in _pack_block(blocks)]
            head_w = _stack([net.head.weight.T for net in nets])
            head_b = _stack([net.head.bias.unsqueeze(0) for net in nets])
            # Linear layers have no activation, so each one (and the per-asset input divisor) is
            # folded into the next layer's input projection: per bar only the LSTM layers and one
            # output product remain (linear-linear becomes a single affine map).
            a = torch.zeros(m, self._n_max, self._n_max, dtype=torch.float64)
            for i, net in enumerate(nets):
                a[i, : self._n[i], : self._n[i]] = torch.diag(1.0 / net.input_scale.double().cpu())
            c = torch.zeros(m, 1, self._n_max, dtype=torch.float64)
            layers: list[_Layer] = []
            for w, u, b in units:
                w, b = _fit_rows(a, w), torch.baddbmm(b, c, _fit_rows(c, w))
                w = torch.bmm(a, w)
                if u is None:
                    a, c = w, b
                    continue
                hd = u.shape[1]
                dt = self.dtype
                layers.append(_Layer(w.to(dt), u.to(dt), b.to(dt), hd, len(layers), (3 * hd, hd)))
                a = torch.eye(hd, dtype=torch.float64).expand(m, hd, hd)
                c = torch.zeros(m, 1, hd, dtype=torch.float64)
            self._head_w = torch.bmm(a, _fit_rows(a, head_w)).to(self.dtype)
            self._head_b = torch.baddbmm(head_b, c, _fit_rows(c, head_w)).to(self.dtype)
        self._layers = tuple(layers)
        self._hidden = tuple(layer.hidden for layer in layers)
        self._in = np.zeros((m, self._n_max), dtype=torch.empty(0, dtype=self.dtype).numpy().dtype)
        self._x = torch.from_numpy(self._in).unsqueeze(1)
        self.reset()

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        markets: Sequence[str] | None = None,
        expect_assets: Mapping[str, Sequence[str]] | None = None,
        threads: int | None = 1,
    ) -> SignalStepper:
        """Load a checkpoint (``weights_only``) and pack it; ``expect_assets`` (market → asset names
        in the caller's order) is checked against the checkpoint and a mismatch is refused."""
        from models.checkpoint import check_assets, load_checkpoint

        ckpt = load_checkpoint(path, map_location="cpu")
        if expect_assets is not None:
            check_assets(ckpt.model, expect_assets)
        return cls(ckpt.model, markets=markets, threads=threads)

    # -- state ------------------------------------------------------------------------------------

    def reset(self, markets: Sequence[str] | None = None) -> None:
        """Zero the states (all markets, or the ones named), as at the start of a training window."""
        m = len(self.markets)
        if markets is None:
            self._h = [torch.zeros(m, 1, h, dtype=self.dtype) for h in self._hidden]
            self._c = [torch.zeros(m, 1, h, dtype=self.dtype) for h in self._hidden]
            self._last = torch.zeros(m, self._n_max, dtype=self.dtype)
            self._bars = [0] * m
            return
        for name in markets:
            i = self._market_pos(name)
            for t in (*self._h, *self._c):
                t[i].zero_()
            self._last[i].zero_()
            self._bars[i] = 0

    @property
    def bars_seen(self) -> dict[str, int]:
        """Bars consumed per market since the last reset (warm-up included)."""
        return dict(zip(self.markets, self._bars, strict=True))

    def latest(self, market: str) -> np.ndarray:
        """The most recent signals of a market (zeros before its first bar)."""
        i = self._market_pos(market)
        return self._last[i, : self._n[i]].numpy().astype(np.float64)

    # -- stepping ---------------------------------------------------------------------------------

    def step(self, returns: Mapping[str, ReturnsLike]) -> dict[str, np.ndarray]:
        """Feed the newest bar's returns of some or all markets; get each one's next signals.

        ``returns`` maps market → its return vector in the market's asset order (or a mapping
        symbol → return; absent symbols are missing). NaN marks a missing asset (fed as 0, as in
        training). Markets not named keep their state. All markets are computed in one batch.
        """
        buf, pos, n = self._in, self._pos, self._n
        buf.fill(0.0)
        active = []
        for name, r in returns.items():
            i = pos.get(name)
            if i is None:
                i = self._market_pos(name)  # raises, listing the markets
            if type(r) is np.ndarray and r.shape == (n[i],):
                buf[i, : n[i]] = r
            else:
                buf[i, : n[i]] = self._vector(name, i, r)
            active.append(i)
        np.copyto(buf, 0.0, where=~np.isfinite(buf))
        # No grad mode needed: packed tensors never require grad. Threads switched inline (hot path).
        prev = torch.get_num_threads()
        switch = bool(self._threads) and prev != self._threads
        if switch:
            torch.set_num_threads(self._threads)  # type: ignore[arg-type]
        try:
            h_new, c_new, sig = self._advance(self._x)
        finally:
            if switch:
                torch.set_num_threads(prev)
        if len(active) == len(self.markets):
            self._h, self._c, self._last = h_new, c_new, sig
        else:
            on = torch.zeros(len(self.markets), 1, 1, dtype=torch.bool)
            on[active] = True
            self._h = [torch.where(on, new, old) for new, old in zip(h_new, self._h, strict=True)]
            self._c = [torch.where(on, new, old) for new, old in zip(c_new, self._c, strict=True)]
            self._last = torch.where(on[:, 0], sig, self._last)
        out = sig.numpy().astype(np.float64)
        result = {}
        for i in active:
            self._bars[i] += 1
            result[self.markets[i]] = out[i, : n[i]]
        return result

    def step_market(self, market: str, returns: ReturnsLike) -> np.ndarray:
        """``step`` for one market."""
        return self.step({market: returns})[market]

    def _advance(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        h_new: list[Tensor] = []
        c_new: list[Tensor] = []
        for layer in self._layers:
            gates = torch.baddbmm(torch.baddbmm(layer.b, x, layer.w), self._h[layer.slot], layer.u)
            sig, g = gates.split_with_sizes(layer.split, 2)
            i, f, o = sig.sigmoid().chunk(3, 2)
            c = torch.addcmul(f * self._c[layer.slot], i, g.tanh())
            x = o * c.tanh()
            h_new.append(x)
            c_new.append(c)
        return h_new, c_new, torch.tanh(torch.baddbmm(self._head_b, x, self._head_w)).squeeze(1)

    def _vector(self, name: str, i: int, r: ReturnsLike) -> np.ndarray:
        if isinstance(r, Mapping):
            v = np.full(self._n[i], np.nan)
            pos = self._asset_pos[name]
            for sym, val in r.items():
                j = pos.get(sym)
                if j is None:
                    raise KeyError(f"market {name!r}: unknown asset {sym!r}")
                v[j] = val
            return v
        v = np.asarray(r, dtype=np.float64)
        if v.shape != (self._n[i],):
            raise ValueError(f"market {name!r}: expected {self._n[i]} returns, got shape {v.shape}")
        return v

    def _market_pos(self, name: str) -> int:
        try:
            return self._pos[name]
        except KeyError:
            raise KeyError(f"market {name!r} not in the stepper (has {', '.join(self.markets)})") from None

    # -- warm-up ----------------------------------------------------------------------------------

    def warm_up(self, histories: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Replace each named market's state by the state after its history (T × n returns, oldest
        first, NaN = missing) from zero, using the fast full-sequence pass; return the next signals.

        The model was trained on windows of ``seq_len`` bars from a zero state; a history of about
        that length reproduces the training conditions most closely.
        """
        model = self._model
        out = {}
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), torch_threads(self._threads):
                for name, hist in histories.items():
                    i = self._market_pos(name)
                    self.reset([name])
                    h = np.asarray(hist, dtype=np.float64)
                    if h.ndim != 2 or h.shape[1] != self._n[i]:
                        raise ValueError(f"market {name!r}: history must be (T, {self._n[i]}), got {h.shape}")
                    if len(h) == 0:
                        out[name] = self.latest(name)
                        continue
                    p = next(model.parameters())
                    x = torch.as_tensor(np.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0), dtype=p.dtype)
                    sig, states = model(self._idx[i], x.to(p.device).unsqueeze(0))
                    self._load_states(i, states)
                    self._last[i, : self._n[i]] = sig[0, -1].to("cpu", self.dtype)
                    self._bars[i] = len(h)
                    out[name] = self.latest(name)
        finally:
            model.train(was)
        return out

    def _load_states(self, i: int, states: tuple[object, ...]) -> None:
        slot = 0
        for st in states:
            if st is None:
                continue
            h, c = st  # type: ignore[misc]
            for layer in range(h.shape[0]):
                self._h[slot][i] = h[layer, 0].to("cpu", self.dtype).unsqueeze(0)
                self._c[slot][i] = c[layer, 0].to("cpu", self.dtype).unsqueeze(0)
                slot += 1

    # -- snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """All states as bytes (for crash recovery); restorable only into the same model."""
        buf = io.BytesIO()
        torch.save(
            {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "fingerprint": self.fingerprint,
                "markets": list(self.markets),
                "bars": list(self._bars),
                "h": [t.clone() for t in self._h],
                "c": [t.clone() for t in self._c],
                "last": self._last.clone(),
            },
            buf,
        )
        return buf.getvalue()

    def restore(self, blob: bytes) -> None:
        """Load states written by :meth:`snapshot`; refuses a snapshot of another model or market set."""
        try:
            data = torch.load(io.BytesIO(blob), weights_only=True)
        except Exception as exc:
            raise ValueError(f"not a stepper snapshot: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a stepper snapshot")
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {data.get('version')} unsupported (want {SNAPSHOT_VERSION})")
        if data["fingerprint"] != self.fingerprint or list(data["markets"]) != list(self.markets):
            raise ValueError("snapshot was taken with a different model or market set")
        self._h = [t.to(self.dtype) for t in data["h"]]
        self._c = [t.to(self.dtype) for t in data["c"]]
        self._last = data["last"].to(self.dtype)
        self._bars = [int(b) for b in data["bars"]]


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    """Zero-pad 2-D tensors to a common shape and stack them along a new market axis (float64)."""
    rows = max(t.shape[0] for t in tensors)
    cols = max(t.shape[1] for t in tensors)
    out = torch.zeros(len(tensors), rows, cols, dtype=torch.float64)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0], : t.shape[1]] = t.detach().to("cpu", torch.float64)
    return out


def _fit_rows(a: Tensor, w: Tensor) -> Tensor:
    """``w`` with as many input rows as ``a`` has columns (padding rows are zero)."""
    need = a.shape[2]
    if w.shape[1] == need:
        return w
    out = torch.zeros(w.shape[0], need, w.shape[2], dtype=w.dtype)
    k = min(need, w.shape[1])
    out[:, :k] = w[:, :k]
    return out


def _gate_order(t: Tensor, hidden: int) -> Tensor:
    # PyTorch stores LSTM gates as i, f, g, o; the stepper wants the sigmoid gates contiguous.
    return torch.cat([t[: 2 * hidden], t[3 * hidden :], t[2 * hidden : 3 * hidden]])


def _pack_block(blocks: Sequence[nn.Module]) -> list[tuple[Tensor, Tensor | None, Tensor]]:
    """Per layer of a component: (input weights (M, in, out), recurrent weights (M, H, 4H) or None
    for a linear layer, bias (M, 1, out)), stacked over markets, row-vector form."""
    first = blocks[0]
    if isinstance(first, Dense):
        return [
            (
                _stack([b.layers[k].weight.T for b in blocks]),  # type: ignore[union-attr,index]
                None,
                _stack([b.layers[k].bias.unsqueeze(0) for b in blocks]),  # type: ignore[union-attr,index]
            )
            for k in range(len(first.layers))
        ]
    assert isinstance(first, Recurrent)
    lstms = [b.lstm for b in blocks]  # type: ignore[union-attr]
    hd = first.lstm.hidden_size
    out = []
    for k in range(first.lstm.num_layers):
        w = [_gate_order(getattr(m, f"weight_ih_l{k}"), hd).T for m in lstms]
        u = [_gate_order(getattr(m, f"weight_hh_l{k}"), hd).T for m in lstms]
        b = [
            _gate_order(getattr(m, f"bias_ih_l{k}") + getattr(m, f"bias_hh_l{k}"), hd).unsqueeze(0)
            for m in lstms
        ]
        out.append((_stack(w), _stack(u), _stack(b)))
    return out


def model_fingerprint(model: QuantNet, markets: Sequence[str] | None = None) -> str:
    """SHA-256 over the variant, the market/asset names and every weight the markets use."""
    names = list(model.market_names if markets is None else markets)
    h = hashlib.sha256(model.config.model_dump_json().encode())
    for n in names:
        h.update(repr((n, model.assets[n])).encode())
        for p in model.markets[model.index(n)].state_dict().values():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    for p in model.shared_parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
