"""One pass for all markets of a training step.

The per-market encoders and decoders run as stacked weights (markets × ...), so a step costs a fixed
number of tensor operations per time step whatever the number of markets, instead of one chain of
kernels per market and layer.

Why not ``nn.LSTM`` per market: on CPU in float32 its fused (oneDNN) kernel costs about 15 µs per
time step and layer at these widths (5-10 units, 32 windows) *for each market*, and it cannot take a
different weight matrix per market. :class:`_ChainLSTM` instead runs every LSTM layer of every market
in one recurrence, as a wavefront: at iteration τ layer l advances time step τ - l, so all layers of
all markets take one batched hidden-to-gate product and a handful of elementwise operations per
iteration, T + L - 1 iterations for L layers. Linear blocks between LSTM layers (the released
model's shared 5→5 layer) are folded into the next layer's input weights; narrower layers are
zero-padded, which is exact (padded units stay zero). The backward pass is written out (BPTT over
the same wavefront), so autograd records one node per chain rather than a dozen per time step, and
weight gradients are single batched products over the window.

Exact by construction: the arithmetic per market is ``nn.LSTM``'s (gates i, f, g, o, zero initial
state, dropout between stacked layers in training), so losses and gradients equal the per-market path
to rounding (tested). State dicts are untouched: the stacked weights are built from the markets' own
modules on every call, so gradients land on the usual parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.network import Dense, QuantNet, Recurrent

# Activations between blocks: ragged (one (T, B, n_i) time-major input per market, their own widths)
# until the first layer, then stacked feature-major (G, F, T, B).
Hidden = list[Tensor] | Tensor


class _ChainLSTM(torch.autograd.Function):
    """L stacked LSTM layers of G markets (each with its own weights), zero initial states, as a
    wavefront over T + L - 1 iterations. All layers padded to width H.

    Inputs: ``xw`` (G, 4H, T, B), layer 0's input projection including its biases; ``w_hh``
    (L, G, 4H, H); ``w_ih`` (L-1, G, 4H, H) and ``bias`` (L-1, G, 4H) of layers 1..L-1; ``mask``
    (T + L, (L-1)·G, H, B) or None: dropout multipliers on the input of layers 1..L-1 (row τ
    applies at iteration τ). Gate order i, f, g, o with the g rows doubled: tanh(z) =
    2·sigmoid(2z) - 1, and torch's float32 tanh costs about four sigmoids here. The loop keeps 2c,
    so the cell's tanh is one sigmoid and one affine operation. Returns the last layer's h,
    (G, H, T, B).

    Buffers are iteration-major, (iteration, layer·market, feature, window), so every operation of
    an iteration runs on contiguous memory; y and 2c carry a leading zero row (row τ holds
    iteration τ - 1).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        xw: Tensor,
        w_hh: Tensor,
        w_ih: Tensor,
        bias: Tensor,
        mask: Tensor | None,
    ) -> Tensor:
        g_, h4, t_, b_ = xw.shape
        l_ = w_hh.shape[0]
        h_ = h4 // 4
        tw = t_ + l_ - 1
        n_all = l_ * g_
        acts = xw.new_empty(tw, n_all, h4, b_)
        acts[:t_, :g_] = xw.permute(2, 0, 1, 3)
        if l_ > 1:
            acts[:, g_:] = bias.reshape(-1, h4, 1)
        y = xw.new_zeros(tw + 1, n_all, h_, b_)
        cs = xw.new_zeros(tw + 1, n_all, h_, b_)  # 2c
        tcs = xw.new_empty(tw, n_all, h_, b_)
        fc = xw.new_empty(n_all, h_, b_)
        minus1 = xw.new_full((1, 1, 1), -1.0)
        minus2 = xw.new_full((1, 1, 1), -2.0)
        whh = w_hh.reshape(n_all, h4, h_).contiguous()
        wih = w_ih.reshape(-1, h4, h_).contiguous()
        a_t, y_t, c_t, tc_t = acts.unbind(0), y.unbind(0), cs.unbind(0), tcs.unbind(0)
        m_t = mask.unbind(0) if mask is not None else None
        for tau in range(tw):
            lo, hi = max(0, tau - t_ + 1), min(l_, tau + 1)
            r0, r1, n = lo * g_, hi * g_, (hi - lo) * g_
            act = a_t[tau][r0:r1]  # holds the input projection or the bias
            pre = torch.baddbmm(act, whh[r0:r1], y_t[tau][r0:r1])
            a = max(lo, 1)
            if a < hi:
                src = y_t[tau][(a - 1) * g_ : (hi - 1) * g_]
                if m_t is not None:
                    src = src * m_t[tau][(a - 1) * g_ : (hi - 1) * g_]
                pre[(a - lo) * g_ :].baddbmm_(wih[(a - 1) * g_ : (hi - 1) * g_], src)
            torch.sigmoid(pre, out=act)
            i, f, g2, o = act.view(n, 4, h_, b_).unbind(1)
            torch.add(minus2, g2, alpha=4.0, out=g2)  # 2·tanh(pre_g)
            c = c_t[tau + 1][r0:r1]
            torch.mul(f, c_t[tau][r0:r1], out=fc[:n])
            torch.addcmul(fc[:n], i, g2, out=c)
            tc = tc_t[tau][r0:r1]
            torch.sigmoid(c, out=tc)
            torch.add(minus1, tc, alpha=2.0, out=tc)  # tanh(c)
            torch.mul(o, tc, out=y_t[tau + 1][r0:r1])
        ctx.save_for_backward(acts, cs, tcs, y, w_hh, w_ih, mask)
        ctx.shape = (g_, h_, t_, b_, l_)  # type: ignore[attr-defined]
        return y[l_:, n_all - g_ :].permute(1, 2, 0, 3).contiguous()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        acts, cs, tcs, y, w_hh, w_ih, mask = ctx.saved_tensors  # type: ignore[attr-defined]
        g_, h_, t_, b_, l_ = ctx.shape  # type: ignore[attr-defined]
        h4 = 4 * h_
        tw = t_ + l_ - 1
        n_all = l_ * g_
        i, f, g2, o = acts.view(tw, n_all, 4, h_, b_).unbind(2)  # g2 = 2g
        one, zero = acts.new_ones(1), acts.new_zeros(1)
        # d(loss)/d(pre-activation) = dc · q for gates i, f, g and dh · r for gate o
        s = torch.addcmul(one, tcs, tcs, value=-1.0).mul_(o)
        r = torch.addcmul(o, o, o, value=-1.0).mul_(tcs)
        q = acts.new_empty(tw, n_all, 3, h_, b_)
        qi, qf, qg = q.unbind(2)
        torch.addcmul(i, i, i, value=-1.0, out=qi)
        torch.addcmul(zero, qi, g2, value=0.5, out=qi)
        torch.addcmul(f, f, f, value=-1.0, out=qf)
        torch.addcmul(zero, qf, cs[:tw], value=0.5, out=qf)
        torch.addcmul(one, g2, g2, value=-0.25, out=qg)  # 1 - g²; d g / d(2·pre_g) = (1 - g²) / 2
        torch.addcmul(zero, qg, i, value=0.5, out=qg)
        dyt = dy.permute(2, 0, 1, 3).contiguous()  # (T, G, H, B)
        dgates = acts.new_zeros(tw + 1, n_all, h4, b_)
        dc_next = acts.new_zeros(n_all, h_, b_)
        d_whh = acts.new_zeros(n_all, h4, h_)
        d_wih = acts.new_zeros(max(0, n_all - g_), h4, h_)
        whh_t = w_hh.reshape(n_all, h4, h_).transpose(1, 2).contiguous()
        wih_t = w_ih.reshape(-1, h4, h_).transpose(1, 2).contiguous()
        dg_t, y_t, s_t, r_t, q_t, f_t = (
            dgates.unbind(0), y.unbind(0), s.unbind(0), r.unbind(0), q.unbind(0), f.unbind(0)
        )  # fmt: skip
        m_t = mask.unbind(0) if mask is not None else None
        for tau in range(tw - 1, -1, -1):
            lo, hi = max(0, tau - t_ + 1), min(l_, tau + 1)
            r0, r1, n = lo * g_, hi * g_, (hi - lo) * g_
            nxt = dg_t[tau + 1]
            dh = torch.bmm(whh_t[r0:r1], nxt[r0:r1])
            if hi == l_ and tau >= l_ - 1:
                dh[n - g_ :] += dyt[tau - l_ + 1]
            e = min(hi, l_ - 1)
            if lo < e:  # layer l's output is layer l + 1's input one iteration later
                back = torch.bmm(wih_t[r0 : e * g_], nxt[r0 + g_ : (e + 1) * g_])
                if m_t is not None:
                    back.mul_(m_t[tau + 1][r0 : e * g_])
                dh[: (e - lo) * g_] += back
            dc = torch.addcmul(dc_next[r0:r1], dh, s_t[tau][r0:r1])
            dv = dg_t[tau][r0:r1].view(n, 4, h_, b_)
            torch.mul(dc.unsqueeze(1), q_t[tau][r0:r1], out=dv[:, :3])
            torch.mul(dh, r_t[tau][r0:r1], out=dv[:, 3])
            torch.mul(dc, f_t[tau][r0:r1], out=dc_next[r0:r1])
            d_whh[r0:r1].baddbmm_(dg_t[tau][r0:r1], y_t[tau][r0:r1].transpose(1, 2))
            a = max(lo, 1)
            if a < hi:
                src = y_t[tau][(a - 1) * g_ : (hi - 1) * g_]
                if m_t is not None:
                    src = src * m_t[tau][(a - 1) * g_ : (hi - 1) * g_]
                d_wih[(a - 1) * g_ : (hi - 1) * g_].baddbmm_(dg_t[tau][a * g_ : r1], src.transpose(1, 2))
        d_bias = dgates[:tw, g_:].sum(dim=(0, 3)).view(l_ - 1, g_, h4)
        d_xw = dgates[:t_, :g_].permute(1, 2, 0, 3)
        return d_xw, d_whh.view_as(w_hh), d_wih.view_as(w_ih), d_bias, None


# -- building the pass from the model ----------------------------------------------------------------


@dataclass(slots=True)
class _Lstm:
    """One LSTM layer for all G markets: per-market lists or one shared tensor (broadcast)."""

    w_ih: list[Tensor] | Tensor
    w_hh: list[Tensor] | Tensor
    bias: list[Tensor] | Tensor  # b_ih + b_hh
    hidden: int


@dataclass(slots=True)
class _Affine:
    w: list[Tensor] | Tensor
    b: list[Tensor] | Tensor


@dataclass(slots=True)
class _Drop:
    p: float


Op = _Lstm | _Affine | _Drop


def _program(model: QuantNet, nets: Sequence[nn.Module], training: bool) -> list[Op]:
    ops: list[Op] = []
    shared = model.shared
    parts: list[list[Dense | Recurrent] | Dense | Recurrent] = []
    if nets[0].encoder is not None:
        parts.append([net.encoder for net in nets])  # type: ignore[misc]
    if shared is not None:
        parts.append(shared)
    if nets[0].decoder is not None:
        parts.append([net.decoder for net in nets])  # type: ignore[misc]
    for part in parts:
        blocks = part if isinstance(part, list) else [part]
        first = blocks[0]

        def pick(
            get: object, blocks: list[Dense | Recurrent] = blocks, per_market: bool = isinstance(part, list)
        ):
            vals = [get(b) for b in blocks]  # type: ignore[operator]
            return vals if per_market else vals[0]

        if isinstance(first, Recurrent):
            p = float(first.lstm.dropout)
            for k in range(first.lstm.num_layers):
                if k and p and training:
                    ops.append(_Drop(p))
                ops.append(
                    _Lstm(
                        pick(lambda b, k=k: getattr(b.lstm, f"weight_ih_l{k}")),
                        pick(lambda b, k=k: getattr(b.lstm, f"weight_hh_l{k}")),
                        pick(
                            lambda b, k=k: getattr(b.lstm, f"bias_ih_l{k}") + getattr(b.lstm, f"bias_hh_l{k}")
                        ),
                        first.lstm.hidden_size,
                    )
                )
        else:
            for k in range(len(first.layers)):
                if k and first.dropout and training:
                    ops.append(_Drop(first.dropout))
                ops.append(
                    _Affine(pick(lambda b, k=k: b.layers[k].weight), pick(lambda b, k=k: b.layers[k].bias))
                )
    return ops


def _stack(v: list[Tensor] | Tensor, g: int) -> Tensor:
    return torch.stack(v) if isinstance(v, list) else v.expand(g, *v.shape)


def _project(h: Hidden, w: list[Tensor] | Tensor, b: list[Tensor] | Tensor) -> Tensor:
    """w·x + b per market, returning (G, out, T, B): ``h`` ragged time-major (T, B, n_i) with one
    weight per market, or stacked (G, in, T, B) with per-market or shared weights."""
    if isinstance(h, list):
        t_, b_ = h[0].shape[:2]
        ws = w if isinstance(w, list) else [w] * len(h)
        bs = b if isinstance(b, list) else [b] * len(h)
        out = [
            torch.addmm(bi.unsqueeze(1), wi, x.reshape(t_ * b_, -1).t())
            for x, wi, bi in zip(h, ws, bs, strict=True)
        ]
        return torch.stack(out).view(len(h), -1, t_, b_)
    g_, f_, t_, b_ = h.shape
    if isinstance(w, Tensor) and w.dim() == 2:
        assert isinstance(b, Tensor)
        out = torch.addmm(b.unsqueeze(1), w, h.transpose(0, 1).reshape(f_, g_ * t_ * b_))
        return out.view(-1, g_, t_, b_).transpose(0, 1)
    ws, bs = _stack(w, g_), _stack(b, g_)
    return torch.baddbmm(bs.unsqueeze(2), ws, h.reshape(g_, f_, t_ * b_)).view(g_, -1, t_, b_)


def _dropout(h: Hidden, p: float) -> Hidden:
    if isinstance(h, list):
        return [nn.functional.dropout(x, p, True) for x in h]
    return nn.functional.dropout(h, p, True)


_GATE_SCALE = (1.0, 1.0, 2.0, 1.0)


def _pad_gates(w: Tensor, hidden: int, width: int | None) -> Tensor:
    """(..., 4h, in) -> (..., 4·hidden, width or in): each gate's rows zero-padded to ``hidden``, g
    rows doubled, columns zero-padded to ``width``."""
    lead, rows, cols = w.shape[:-2], w.shape[-2], w.shape[-1]
    h = rows // 4
    w = w.reshape(*lead, 4, h, cols) * w.new_tensor(_GATE_SCALE).view(4, 1, 1)
    w = nn.functional.pad(w, (0, (width or cols) - cols, 0, hidden - h))
    return w.reshape(*lead, 4 * hidden, width or cols)


def _pad_bias(b: Tensor, hidden: int) -> Tensor:
    lead, h = b.shape[:-1], b.shape[-1] // 4
    b = b.reshape(*lead, 4, h) * b.new_tensor(_GATE_SCALE).view(4, 1)
    return nn.functional.pad(b, (0, hidden - h)).reshape(*lead, 4 * hidden)


def _compose(affines: list[_Affine], g: int) -> tuple[Tensor, Tensor] | None:
    """One (G, out, in) map and (G, out) bias equal to applying ``affines`` in order."""
    if not affines:
        return None
    w, b = _stack(affines[0].w, g), _stack(affines[0].b, g)
    for a in affines[1:]:
        aw, ab = _stack(a.w, g), _stack(a.b, g)
        w, b = torch.bmm(aw, w), torch.baddbmm(ab.unsqueeze(2), aw, b.unsqueeze(2)).squeeze(2)
    return w, b


def _run_chain(h: Hidden, first: _Lstm, links: list[tuple[list[_Affine], float, _Lstm]], g_: int) -> Tensor:
    """LSTM layers ``first`` and, for each link, (affine maps then dropout p) then the next layer."""
    layers = [first] + [lay for _, _, lay in links]
    hid = max(lay.hidden for lay in layers)
    # layer 0: its input projection, over the ragged or stacked input
    if isinstance(first.w_ih, list):
        assert isinstance(first.bias, list)
        w0 = [_pad_gates(w, hid, None) for w in first.w_ih]
        b0: list[Tensor] | Tensor = [_pad_bias(b, hid) for b in first.bias]
    else:
        assert isinstance(first.bias, Tensor)
        w0, b0 = _pad_gates(first.w_ih, hid, None), _pad_bias(first.bias, hid)
    xw = _project(h, w0, b0)
    t_, b_ = xw.shape[2:]
    w_hh = torch.stack([_pad_gates(_stack(lay.w_hh, g_), hid, hid) for lay in layers])
    w_ih, bias, masks = [], [], []
    for affines, p, lay in links:
        w, b = _stack(lay.w_ih, g_), _stack(lay.bias, g_)
        folded = _compose(affines, g_)
        if folded is not None:
            b = torch.baddbmm(b.unsqueeze(2), w, folded[1].unsqueeze(2)).squeeze(2)
            w = torch.bmm(w, folded[0])
        w_ih.append(_pad_gates(w, hid, hid))
        bias.append(_pad_bias(b, hid))
        masks.append(p)
    if w_ih:
        wih_t, bias_t = torch.stack(w_ih), torch.stack(bias)
    else:
        wih_t, bias_t = xw.new_zeros(0, g_, 4 * hid, hid), xw.new_zeros(0, g_, 4 * hid)
    mask = None
    if any(masks):
        keep = xw.new_tensor([1.0 - p for p in masks]).view(1, -1, 1, 1, 1)
        keep = keep.view(1, -1, 1, 1, 1)
        shape = (t_ + len(layers), len(masks), g_, hid, b_)
        mask = (torch.bernoulli(keep.expand(shape)) / keep).view(t_ + len(layers), -1, hid, b_)
    out = _ChainLSTM.apply(xw, w_hh, wih_t, bias_t, mask)
    return out[:, : layers[-1].hidden]


def _execute(h: Hidden, ops: list[Op], g_: int) -> Hidden:
    k = 0
    while k < len(ops):
        op = ops[k]
        if isinstance(op, _Drop):
            h = _dropout(h, op.p)
            k += 1
        elif isinstance(op, _Affine):
            h = _project(h, op.w, op.b)
            k += 1
        else:
            links: list[tuple[list[_Affine], float, _Lstm]] = []
            k += 1
            while True:  # extend the chain while the next LSTM layer is reachable through folds
                j, affines, p = k, [], 0.0
                while j < len(ops) and not isinstance(ops[j], _Lstm):
                    nxt = ops[j]
                    if isinstance(nxt, _Drop):
                        p = nxt.p
                    else:
                        affines.append(nxt)  # type: ignore[arg-type]
                    j += 1
                if j == len(ops) or (p and affines) or sum(isinstance(o, _Drop) for o in ops[k:j]) > 1:
                    break
                links.append((affines, p, ops[j]))  # type: ignore[arg-type]
                k = j + 1
            h = _run_chain(h, op, links, g_)
    return h


def forward_batched(model: QuantNet, items: Sequence[tuple[int, Tensor]]) -> list[Tensor]:
    """Signals for several markets from zero state in one pass.

    ``items`` holds (market index, inputs) pairs with inputs **time-major** (T, B, n_i), all with
    the same T and B; returns the (T, B, n_i) signals in the same order (views into one tensor).
    Equals ``model(i, x)`` per market (batch-first there) to rounding.
    """
    if not items:
        return []
    t_, b_ = items[0][1].shape[:2]
    if any(x.dim() != 3 or x.shape[:2] != (t_, b_) for _, x in items):
        raise ValueError("forward_batched: every market's windows need the same (T, B)")
    nets = [model.markets[i] for i, _ in items]
    g_ = len(nets)
    ops = _program(model, nets, model.training)
    scales = [net.input_scale for net in nets]
    head_w = [net.head.weight for net in nets]
    # the input divisors fold into the first weights that see the raw returns
    first = next((op for op in ops if not isinstance(op, _Drop)), None)
    if first is None:
        head_w = [w / s for w, s in zip(head_w, scales, strict=True)]
    elif isinstance(first, _Lstm):
        assert isinstance(first.w_ih, list)
        first.w_ih = [w / s for w, s in zip(first.w_ih, scales, strict=True)]
    else:
        assert isinstance(first.w, list)
        first.w = [w / s for w, s in zip(first.w, scales, strict=True)]
    h = _execute([x for _, x in items], ops, g_)
    if isinstance(h, list):
        xs = [x.reshape(t_ * b_, -1) for x in h]
    else:
        xs = [x.reshape(x.shape[0], t_ * b_).t() for x in h.unbind(0)]
    # tanh(z) = 2·sigmoid(2z) - 1, the factor 2 folded into the head
    out = [
        torch.addmm(net.head.bias * 2.0, x, (w * 2.0).t()) for x, w, net in zip(xs, head_w, nets, strict=True)
    ]
    widths = [o.shape[1] for o in out]
    sig = torch.sigmoid(torch.cat(out, dim=1))
    sig = torch.add(sig.new_full((1, 1), -1.0), sig, alpha=2.0).view(t_, b_, -1)
    return list(sig.split(widths, dim=2))


def forward_many_batched(model: QuantNet, items: Sequence[tuple[int, Tensor]]) -> list[Tensor]:
    """``model.forward_many(items)`` (batch-first (B, T, n_i) inputs and signals, zero state) with
    the markets whose windows share (B, T) in one :func:`forward_batched` pass."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, (_, x) in enumerate(items):
        groups.setdefault(tuple(x.shape[:2]), []).append(k)
    signals: list[Tensor] = [items[0][1]] * len(items)
    for ks in groups.values():
        out = forward_batched(model, [(items[k][0], items[k][1].transpose(0, 1)) for k in ks])
        for k, sig in zip(ks, out, strict=True):
            signals[k] = sig.transpose(0, 1)
    return signals
