"""Incremental inference: advance every market one bar at a time from kept LSTM states.

The trained :class:`~models.network.QuantNet` stores one small module per market, which is right for
training but would cost one kernel launch per market and layer on every bar. The stepper instead
packs each LSTM layer's weights for all markets into zero-padded stacked tensors (markets × in × out)
so one bar of *all* markets is a handful of batched products, whatever the number of markets; linear
layers (no activation) and the input scaling are folded into the next projection. Zero padding is
exact: padded inputs are zero and padded outputs are dropped. The per-bar step runs in numpy on one
state vector (torch's per-op dispatch cost dwarfs the arithmetic at these sizes); small problems
take each layer as a single block-diagonal product over all markets (see ``_DENSE_MAX_MACS``).

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


# Below this many multiply-adds per layer, one dense product with block-diagonal weights (all markets
# at once, gates laid out gate-major so every elementwise op runs on a contiguous vector) beats a
# batched product per market: numpy's per-op cost on strided views is ~3× that on contiguous ones.
_DENSE_MAX_MACS = 150_000


@dataclass(frozen=True, slots=True)
class _Layer:
    """One LSTM layer of all markets as numpy views into the stepper's state vector (linear layers
    are folded away when packing). One bar: ``z = x @ w + h @ u + b`` with the sigmoid gates'
    weights pre-halved, ``t = tanh(z)``, sigmoid gates ``(1 + t) / 2``, then the cell and hidden
    updates (sigmoid(z) = (1 + tanh(z / 2)) / 2)."""

    dense: bool
    xh: np.ndarray  # dense: [x of all markets, h of all markets (, 1)]; batched: (M, 1, in) input
    w: np.ndarray  # dense: (M·in + M·H (+ 1), 4·M·H) block-diagonal; batched: (M, in, 4H)
    h_in: np.ndarray | None  # batched: (M, 1, H) hidden state
    u: np.ndarray | None  # batched: (M, H, 4H)
    b: np.ndarray | None  # added bias (None when folded into w through a constant-1 input)
    gates: np.ndarray  # scratch: dense (4·M·H,) gate-major; batched (M, 1, 4H)
    rec: np.ndarray | None  # batched: (M, 1, 4H) scratch for the recurrent product
    sig: np.ndarray  # the three sigmoid gates
    i: np.ndarray  # (M, 1, H) views of the gates
    f: np.ndarray
    o: np.ndarray
    g: np.ndarray
    tmp: np.ndarray  # (M, 1, H) scratch
    c: np.ndarray  # (M, 1, H) view: cell state
    h: np.ndarray  # (M, 1, H) view: hidden state (the next layer's input)


class SignalStepper:
    """Per-market recurrent state plus packed weights; ``step`` advances markets by one bar.

    Build with :meth:`from_checkpoint` (or from a model in memory; later changes to the model's
    weights are not seen). Not thread-safe: one owner calls it, as the strategy does per bar.
    ``threads`` is torch's intra-op thread count during ``warm_up`` (restored after; None:
    untouched); ``step`` runs in numpy (the packed tensors are tiny: per-op dispatch dominates).
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
            packed: list[tuple[Tensor, Tensor, Tensor]] = []
            for w, u, b in units:
                w, b = _fit_rows(a, w), torch.baddbmm(b, c, _fit_rows(c, w))
                w = torch.bmm(a, w)
                if u is None:
                    a, c = w, b
                    continue
                packed.append((w, u, b))
                hd = u.shape[1]
                a = torch.eye(hd, dtype=torch.float64).expand(m, hd, hd)
                c = torch.zeros(m, 1, hd, dtype=torch.float64)
            head_b = torch.baddbmm(head_b, c, _fit_rows(c, head_w))
            head_w = torch.bmm(a, _fit_rows(a, head_w))
        self._build(packed, head_w, head_b)
        self.reset()

    def _build(self, packed: list[tuple[Tensor, Tensor, Tensor]], head_w: Tensor, head_b: Tensor) -> None:
        """Lay out all per-market state in one vector and bind the numpy views ``step`` uses.

        Layout, each block market-major: ``[x | h_0 | … | h_{L-1} | 1 | c_0 | … | c_{L-1} | signals]``,
        so layer l's input and own state ``[h_{l-1}, h_l]`` (x for l = 0) are one contiguous slice:
        small problems do each layer as one dense product with block-diagonal weights (the last layer
        and the head also read the constant 1, which carries their bias); large ones as batched
        per-market products. New states are written in place, where the next layer reads them.
        """
        m = len(self.markets)
        dt = torch.empty(0, dtype=self.dtype).numpy().dtype
        hidden = [u.shape[1] for _, u, _ in packed]
        n_layers = len(hidden)
        off = [m * self._n_max]  # start of x (0), then of each h block
        for hd in hidden:
            off.append(off[-1] + m * hd)
        off.insert(0, 0)
        one = off[-1]
        c_off = [one + 1 + m * sum(hidden[:k]) for k in range(n_layers)]
        last = one + 1 + m * sum(hidden)
        state = np.zeros(last + m * self._n_max, dtype=dt)
        owner = np.full(len(state), -1, dtype=np.intp)  # market of each entry (-1: the constant 1)
        spans = [*zip(off[1:-1], hidden, strict=True), *zip(c_off, hidden, strict=True)]
        for lo, width in [(0, self._n_max), *spans, (last, self._n_max)]:
            owner[lo : lo + m * width] = np.repeat(np.arange(m), width)

        def blocks(lo: int, width: int) -> np.ndarray:
            return state[lo : lo + m * width].reshape(m, 1, width)

        layers = []
        for k, ((w, u, b), hd) in enumerate(zip(packed, hidden, strict=True)):
            scale = torch.ones(4 * hd, dtype=torch.float64)
            scale[: 3 * hd] = 0.5  # exact: halves the sigmoid gates' pre-activations
            w, u, b = w * scale, u * scale, b * scale
            n_in = w.shape[1]
            fold = k == n_layers - 1
            dense = m * (n_in + hd) * 4 * m * hd <= _DENSE_MAX_MACS
            h, c = blocks(off[k + 1], hd), blocks(c_off[k], hd)
            tmp = np.zeros((m, 1, hd), dtype=dt)
            if dense:
                # rows: x of market j, then h of market j (then 1); columns: gate q of market j
                wd = torch.zeros(m * (n_in + hd) + int(fold), 4, m, hd, dtype=torch.float64)
                for j in range(m):
                    wd[j * n_in : (j + 1) * n_in, :, j] = w[j].reshape(n_in, 4, hd)
                    r = m * n_in + j * hd
                    wd[r : r + hd, :, j] = u[j].reshape(hd, 4, hd)
                bd = b.reshape(m, 4, hd).transpose(0, 1).reshape(-1)
                if fold:
                    wd[-1] = bd.reshape(4, m, hd)
                gates = np.zeros(4 * m * hd, dtype=dt)
                q = gates.reshape(4, m, 1, hd)
                layers.append(
                    _Layer(
                        dense=True,
                        xh=state[off[k] : off[k + 2] + int(fold)],
                        w=wd.reshape(len(wd), -1).numpy().astype(dt),
                        h_in=None,
                        u=None,
                        b=None if fold else bd.numpy().astype(dt),
                        gates=gates,
                        rec=None,
                        sig=gates[: 3 * m * hd],
                        i=q[0],
                        f=q[1],
                        o=q[2],
                        g=q[3],
                        tmp=tmp,
                        c=c,
                        h=h,
                    )
                )
                continue
            gates = np.zeros((m, 1, 4 * hd), dtype=dt)
            layers.append(
                _Layer(
                    dense=False,
                    xh=blocks(off[k], n_in),
                    w=w.numpy().astype(dt),
                    h_in=h,
                    u=u.numpy().astype(dt),
                    b=b.numpy().astype(dt),
                    gates=gates,
                    rec=np.zeros_like(gates),
                    sig=gates[:, :, : 3 * hd],
                    i=gates[:, :, :hd],
                    f=gates[:, :, hd : 2 * hd],
                    o=gates[:, :, 2 * hd : 3 * hd],
                    g=gates[:, :, 3 * hd :],
                    tmp=tmp,
                    c=c,
                    h=h,
                )
            )
        self._layers = tuple(layers)
        self._one_half = (np.ones((), dtype=dt), np.full((), 0.5, dtype=dt))
        self._state = state
        self._owner = owner
        self._one = one
        n_in, n_out = head_w.shape[1], self._n_max
        self._head_dense = m * n_in * m * n_out <= _DENSE_MAX_MACS
        if self._head_dense:
            wd = torch.zeros(m * n_in + 1, m, n_out, dtype=torch.float64)
            for j in range(m):
                wd[j * n_in : (j + 1) * n_in, j] = head_w[j]
            wd[-1] = head_b[:, 0]
            self._head_in = state[off[-2] : one + 1]
            self._head_w = wd.reshape(len(wd), -1).numpy().astype(dt)
            self._head_b = None
        else:
            self._head_in = blocks(off[-2], n_in)
            self._head_w = head_w.numpy().astype(dt)
            self._head_b = head_b.numpy().astype(dt)
        self._sig = state[last:]
        self._in = state[: m * self._n_max].reshape(m, self._n_max)
        self._out = self._sig.reshape(m, self._n_max)
        # torch views of the same memory (warm-up loads, snapshots, per-market resets)
        self._h = [torch.from_numpy(layer.h) for layer in layers]
        self._c = [torch.from_numpy(layer.c) for layer in layers]
        self._last = torch.from_numpy(self._out)

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
        if markets is None:
            self._state.fill(0)
            self._state[self._one] = 1
            self._bars = [0] * len(self.markets)
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
        if len(active) == len(self.markets):
            self._advance()
        else:  # markets not named keep their state: compute all rows, then put theirs back
            idle = np.ones(len(self.markets) + 1, dtype=bool)  # last entry: owner -1, the constant
            idle[active] = False
            saved = self._state.copy()
            self._advance()
            np.copyto(self._state, saved, where=idle[self._owner])
        out = self._out.astype(np.float64)
        result = {}
        for i in active:
            self._bars[i] += 1
            result[self.markets[i]] = out[i, : n[i]]
        return result

    def step_many(self, returns: Mapping[str, np.ndarray], active: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`step` for each of T bars in turn, without its per-call cost: ``returns`` maps every
        market to its (T, n) returns (NaN: missing), ``active`` (T × markets, in ``markets``
        order) says which markets each bar feeds (the others keep their state, as markets left
        out of ``step`` do). Returns each market's (T, n) signals after each bar: the same numbers
        ``step`` gives (a bar that does not feed a market: its signals as they stood)."""
        active = np.asarray(active, dtype=bool)
        n_bars, m = active.shape[0], len(self.markets)
        if active.shape != (n_bars, m):
            raise ValueError(f"active must be (T, {m}), got {active.shape}")
        x = np.zeros((n_bars, m, self._n_max), dtype=self._in.dtype)
        for name, r in returns.items():
            i = self._market_pos(name)
            x[:, i, : self._n[i]] = r  # cast as step() casts into its input buffer
        x[~np.isfinite(x)] = 0.0
        x[~active] = 0.0
        out = np.empty_like(x)
        buf, state, owner, last = self._in, self._state, self._owner, self._out
        everyone = active.all(axis=1)
        idle = np.ones(m + 1, dtype=bool)  # last entry: owner -1, the constant
        for t in range(n_bars):
            np.copyto(buf, x[t])
            if everyone[t]:
                self._advance()
            else:
                idle[:m] = ~active[t]
                saved = state.copy()
                self._advance()
                np.copyto(state, saved, where=idle[owner])
            out[t] = last
        fed = active.sum(axis=0)
        for i in range(m):
            self._bars[i] += int(fed[i])
        signals = out.astype(np.float64)
        return {name: signals[:, i, : self._n[i]] for i, name in enumerate(self.markets)}

    def step_market(self, market: str, returns: ReturnsLike) -> np.ndarray:
        """``step`` for one market."""
        return self.step({market: returns})[market]

    def _advance(self) -> None:
        """One bar of every market, in place (inputs already in ``self._in``).

        Lean on purpose (about 45 numpy calls on vectors of a few hundred entries, so per-call cost
        is the bill): ``np.dot`` for the dense products (the same BLAS call as ``matmul``, less
        dispatch) and 0-d constants of the state's dtype, since a Python float operand costs a
        scalar conversion per call."""
        mul, add, tanh, dot, matmul = np.multiply, np.add, np.tanh, np.dot, np.matmul
        one, half = self._one_half
        for layer in self._layers:
            gates = layer.gates
            if layer.dense:
                dot(layer.xh, layer.w, gates)
            else:
                matmul(layer.xh, layer.w, out=gates)
                matmul(layer.h_in, layer.u, out=layer.rec)
                add(gates, layer.rec, gates)
            if layer.b is not None:
                add(gates, layer.b, gates)
            tanh(gates, gates)
            sig = layer.sig
            add(sig, one, sig)
            mul(sig, half, sig)
            c, tmp = layer.c, layer.tmp
            mul(layer.i, layer.g, tmp)
            mul(c, layer.f, c)
            add(c, tmp, c)
            tanh(c, tmp)
            mul(layer.o, tmp, layer.h)
        sig = self._sig
        if self._head_dense:
            dot(self._head_in, self._head_w, sig)
        else:
            out = sig.reshape(self._head_b.shape)  # type: ignore[union-attr]
            matmul(self._head_in, self._head_w, out=out)
            add(out, self._head_b, out)
        tanh(sig, sig)

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
        saved = (*data["h"], *data["c"], data["last"])
        for dst, src in zip((*self._h, *self._c, self._last), saved, strict=True):
            dst.copy_(src)  # in place: the tensors are views of the state vector
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
