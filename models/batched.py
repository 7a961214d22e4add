"""One pass for all markets of a training step.

Where the compiled kernel of :mod:`models.native` is available (CPU, float32 or float64), each LSTM
layer of each market runs its whole recurrence, input products and dropout on its output included,
in one kernel call each way (:class:`_FusedLSTM`), and the output layer with the objective's sums in
one more (:class:`_FusedHead`). Otherwise the TorchScript wavefront below runs, as it did before the
kernel:

The per-market encoders and decoders run as stacked weights (markets × ...), so a step costs a fixed
number of tensor operations per time step whatever the number of markets, instead of one chain of
kernels per market and layer.

Why not ``nn.LSTM`` per market: on CPU in float32 its fused (oneDNN) kernel costs about 15 µs per
time step and layer at these widths (5-10 units, 32 windows) *for each market*, and it cannot take a
different weight matrix per market. :class:`_ChainLSTM` instead runs every LSTM layer of every market
in one recurrence, as a wavefront: at iteration τ layer l advances time step τ - l, so all layers of
all markets take one batched hidden-to-gate product and a handful of elementwise operations per
iteration, T + L - 1 iterations for L layers. A chain holds consecutive layers of one width (the
released model: the 5-wide encoder, then the 10-wide decoder; padding the encoder into one chain
with the decoder measured 10-15% slower than two chains); linear blocks between its layers are
folded into the next layer's input weights, and between chains they run as one batched product.
The backward pass is written out (BPTT over the same wavefront), so autograd records one node per
chain rather than a dozen per time step.

Exact by construction: the arithmetic per market is ``nn.LSTM``'s (gates i, f, g, o, zero initial
state, dropout between stacked layers in training), so losses and gradients equal the per-market path
to rounding (tested). State dicts are untouched: the stacked weights are built from the markets' own
modules on every call, so gradients land on the usual parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from models.loss import CarriedWindows, held_sums
from models.native import lstm_kernel, supports
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
    2·sigmoid(2z) - 1, and torch's float32 tanh costs about six sigmoids here. The loop keeps 2c,
    so the cell's tanh is one sigmoid and one affine operation. Returns the last layer's h,
    (G, H, T, B).

    Every layer of every market reads one (2H + 1)-row block per iteration, [its input from the
    layer below; its own h; 1], so one product [W_ih | W_hh | b]·block gives all pre-activations
    (layer 0's input rows are zero; its input projection is added). Layers that have not started
    (iteration τ < l) or have finished compute on harmless values: the former are reset to the zero
    state, the latter feed only other finished layers. The forward pass stores the derivative
    factors the backward needs (σ'(pre) times the gate's partner, o·(1 - tanh²c)/2), so the BPTT
    loop is two products (the weight gradient accumulates per iteration) and five elementwise
    operations. Every buffer is iteration-major, so each operation of an iteration runs on
    contiguous memory (a time-inner layout, for one weight-gradient product at the end, made the
    scattered per-iteration writes slower than the products they saved).
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
        n = l_ * g_
        k = 2 * h_ + 1
        w = xw.new_zeros(n, h4, k)
        w[:, :, h_ : 2 * h_] = w_hh.reshape(n, h4, h_)
        if l_ > 1:
            w[g_:, :, :h_] = w_ih.reshape(-1, h4, h_)
            w[g_:, :, 2 * h_] = bias.reshape(-1, h4)
        z = xw.new_empty(tw + 1, n, k, b_)  # [below; own h; 1] per iteration
        z[0].zero_()
        z[:, :, 2 * h_].fill_(1.0)
        z[:, :g_, :h_].zero_()
        acts = xw.new_empty(tw, n, h4, b_)
        u = xw.new_empty(tw, n, 4, h_, b_)
        s = xw.new_empty(tw, n, h_, b_)
        v = xw.new_empty(2, n, 4, h_, b_)  # scratch: [2g, 2c_prev, 4i, tanh c], two in turn
        v[0, :, 1].zero_()
        _loops()[0](w, z, acts, xw, u, s, v, mask, g_, h_, t_, l_)
        ctx.save_for_backward(acts, u, s, z, w, mask)
        ctx.shape = (g_, h_, t_, b_, l_)  # type: ignore[attr-defined]
        return z[l_:, n - g_ :, h_ : 2 * h_].permute(1, 2, 0, 3).contiguous()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        acts, u, s, z, w, mask = ctx.saved_tensors  # type: ignore[attr-defined]
        g_, h_, t_, b_, l_ = ctx.shape  # type: ignore[attr-defined]
        h4, tw, n = 4 * h_, t_ + l_ - 1, l_ * g_
        k = 2 * h_ + 1
        dg = acts.new_empty(tw + 1, n, h4, b_)
        dg[tw].zero_()
        dw = acts.new_zeros(n, h4, k)
        dch = acts.new_zeros(n, h_, b_)  # dL/dc / 2 (the loop keeps 2c)
        dz = acts.new_empty(n, k, b_)
        _loops()[1](w.transpose(1, 2).contiguous(), dg, dch, dz, dw, dy, acts, u, s, z, mask, g_, h_, t_, l_)
        d_whh = dw[:, :, h_ : 2 * h_].reshape(l_, g_, h4, h_)
        d_wih = dw[g_:, :, :h_].reshape(l_ - 1, g_, h4, h_)
        d_bias = dw[g_:, :, 2 * h_].reshape(l_ - 1, g_, h4)
        return dg[:t_, :g_].permute(1, 2, 0, 3), d_whh, d_wih, d_bias, None


def _forward_loop(
    w: Tensor,
    z: Tensor,
    acts: Tensor,
    xw: Tensor,
    u: Tensor,
    s: Tensor,
    v: Tensor,
    mask: Optional[Tensor],  # noqa: UP045 (TorchScript)
    g_: int,
    h_: int,
    t_: int,
    l_: int,
) -> None:
    """:class:`_ChainLSTM`'s forward iterations, filling ``z``, ``acts``, ``u`` and ``s``."""
    n, tw, b_ = l_ * g_, t_ + l_ - 1, xw.shape[3]
    minus1 = torch.full([1], -1.0, dtype=xw.dtype, device=xw.device)
    minus2 = torch.full([1], -2.0, dtype=xw.dtype, device=xw.device)
    half = torch.full([1], 0.5, dtype=xw.dtype, device=xw.device)
    own, z_t = z[:, :, h_ : 2 * h_].unbind(0), z.unbind(0)
    below_dst, below_src = z[:, g_:, :h_].unbind(0), z[:, : n - g_, h_ : 2 * h_].unbind(0)
    a_t, a0_t, x_t = acts.unbind(0), acts[:, :g_].unbind(0), xw.unbind(2)
    u_t, s_t, vs = u.unbind(0), s.unbind(0), v.unbind(0)
    for tau in range(tw):
        a = a_t[tau]
        torch.bmm(w, z_t[tau], out=a)
        if tau < t_:
            a0_t[tau].add_(x_t[tau])
        a.sigmoid_()
        av = a.view([n, 4, h_, b_])
        gates = av.unbind(1)
        i, f, g, o = gates[0], gates[1], gates[2], gates[3]
        vc, vn = vs[tau % 2], vs[(tau + 1) % 2]
        parts = vc.unbind(1)  # 2g, 2c_prev, 4i, tanh c
        g2, i4, tc = parts[0], parts[2], parts[3]
        cn = vn.select(1, 1)
        torch.add(minus2, g, alpha=4.0, out=g2)
        torch.mul(f, parts[1], out=cn)
        cn.addcmul_(i, g2)
        torch.sigmoid(cn, out=tc)
        torch.add(minus1, tc, alpha=2.0, out=tc)
        torch.mul(o, tc, out=own[tau + 1])
        torch.mul(i, 4.0, out=i4)
        ut = u_t[tau]
        torch.addcmul(av, av, av, value=-1.0, out=ut)
        ut.mul_(vc)
        st = s_t[tau]
        torch.addcmul(half, tc, tc, value=-0.5, out=st)
        st.mul_(o)
        if tau < l_ - 1:  # layers above tau have not started: back to the zero state
            r = (tau + 1) * g_
            own[tau + 1][r:].zero_()
            cn[r:].zero_()
        if l_ > 1:
            if mask is not None:
                torch.mul(below_src[tau + 1], mask[tau + 1], out=below_dst[tau + 1])
            else:
                below_dst[tau + 1].copy_(below_src[tau + 1])


def _backward_loop(
    wt: Tensor,
    dg: Tensor,
    dch: Tensor,
    dz: Tensor,
    dw: Tensor,
    dy: Tensor,
    acts: Tensor,
    u: Tensor,
    s: Tensor,
    z: Tensor,
    mask: Optional[Tensor],  # noqa: UP045 (TorchScript)
    g_: int,
    h_: int,
    t_: int,
    l_: int,
) -> None:
    """:class:`_ChainLSTM`'s BPTT iterations, filling ``dg`` (its last row already zero)."""
    n, tw, b_ = l_ * g_, t_ + l_ - 1, dy.shape[3]
    dyo = dz[:, h_ : 2 * h_]
    dyo_low, dyo_top, below = dyo[: n - g_], dyo[n - g_ :], dz[g_:, :h_]
    dg_t, dy_t, z_t = dg.unbind(0), dy.unbind(2), z.unbind(0)
    f_t = acts.view([tw, n, 4, h_, b_]).select(2, 1).unbind(0)
    u_t, s_t = u.unbind(0), s.unbind(0)
    for tau in range(tw - 1, -1, -1):
        torch.bmm(wt, dg_t[tau + 1], out=dz)
        if l_ > 1:
            if mask is not None:
                dyo_low.addcmul_(below, mask[tau + 1])
            else:
                dyo_low.add_(below)
        t = tau - l_ + 1
        if t >= 0 and t < t_:
            dyo_top.add_(dy_t[t])
        dch.addcmul_(dyo, s_t[tau])
        dgv = dg_t[tau].view([n, 4, h_, b_])
        ut = u_t[tau]
        torch.mul(dch.unsqueeze(1), ut[:, :3], out=dgv[:, :3])
        torch.mul(dyo, ut.select(1, 3), out=dgv.select(1, 3))
        if tau < l_ - 1:
            r = (tau + 1) * g_
            dgv[r:].zero_()
            dch[r:].zero_()
        dch.mul_(f_t[tau])
        dw.baddbmm_(dg_t[tau], z_t[tau].transpose(1, 2))


class _FusedLSTM(torch.autograd.Function):
    """One LSTM layer of one market, zero initial state, its whole recurrence (input products
    included) in one call of the compiled kernel (:mod:`models.native`) each way.

    Inputs: ``x`` (T, I, B) (read in place if windows are contiguous), ``w_ih`` (4H, I), ``bias``
    (4H,) (b_ih + b_hh) and ``w_hh`` (4H, H), gates i, f, g, o as in ``nn.LSTM``; ``mask`` (T, H, B)
    or None: dropout multipliers on the output, applied in the same pass (a separate product and its
    gradient cost more than the kernel's stores). Returns h, (T, H, B), times ``mask``. Time-major
    with windows innermost: every step reads and writes contiguous blocks, and one layer's output is
    the next one's input as it is. The gradient on ``x`` is computed only where it is needed (not for
    the raw returns)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        w_ih: Tensor,
        bias: Tensor,
        w_hh: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        t_, i_, b_ = x.shape
        h_ = w_hh.shape[1]
        if x.stride(2) != 1:
            x = x.contiguous()
        w_ih, bias, w_hh = w_ih.contiguous(), bias.contiguous(), w_hh.contiguous()
        hs, cs, tcs = (x.new_empty(t_, h_, b_) for _ in range(3))
        acts = x.new_empty(t_, 4 * h_, b_)
        out = None if mask is None else torch.empty_like(hs)
        if mask is not None and (mask.shape != hs.shape or mask.dtype != x.dtype or not mask.is_contiguous()):
            got = f"{tuple(mask.shape)} {mask.dtype}"
            raise ValueError(f"_FusedLSTM: dropout mask {got} for output {tuple(hs.shape)} {x.dtype}")
        lib = lstm_kernel()
        fn = lib.lstm_forward_f32 if x.dtype == torch.float32 else lib.lstm_forward_f64
        bufs = (w_ih, bias, w_hh, hs, cs, tcs, acts, x.new_empty(h_ * b_))
        fn(
            h_, i_, t_, b_, x.data_ptr(), x.stride(0), x.stride(1), *(v.data_ptr() for v in bufs),
            *((None, None) if out is None else (mask.data_ptr(), out.data_ptr())),  # type: ignore[union-attr]
        )  # fmt: skip
        ctx.save_for_backward(x, w_ih, w_hh, hs, cs, tcs, acts, mask)
        return hs if out is None else out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dh: Tensor
    ) -> tuple[Tensor | None, Tensor, Tensor, Tensor, None]:
        x, w_ih, w_hh, hs, cs, tcs, acts, mask = ctx.saved_tensors  # type: ignore[attr-defined]
        t_, i_, b_ = x.shape
        h_ = w_hh.shape[1]
        dh = dh.contiguous()
        dx = x.new_empty(x.shape) if ctx.needs_input_grad[0] else None  # type: ignore[attr-defined]
        d_wih, d_whh = torch.empty_like(w_ih), torch.empty_like(w_hh)
        d_bias = w_ih.new_empty(4 * h_)
        lib = lstm_kernel()
        fn = lib.lstm_backward_f32 if x.dtype == torch.float32 else lib.lstm_backward_f64
        size = lib.lstm_backward_scratch_f32 if x.dtype == torch.float32 else lib.lstm_backward_scratch_f64
        scratch = x.new_empty(size(h_, i_, b_))  # alive through the call
        ptrs = [v.data_ptr() for v in (w_ih, w_hh, dh, hs, cs, tcs, acts)]
        ptrs += [None if dx is None else dx.data_ptr()]
        ptrs += [v.data_ptr() for v in (d_wih, d_bias, d_whh, scratch)]
        ptrs += [None if mask is None else mask.data_ptr()]
        fn(h_, i_, t_, b_, x.data_ptr(), x.stride(0), x.stride(1), *ptrs)
        return dx, d_wih, d_bias, d_whh, None


def _pick(v: list[Tensor] | Tensor, g: int) -> Tensor:
    return v[g] if isinstance(v, list) else v


def _affine_steps(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """w·h_t + b for every step of time-major (T, F, B) ``h``: one batched product over time."""
    return torch.baddbmm(b.view(1, -1, 1), w.expand(h.shape[0], *w.shape), h)


class _FusedHead(torch.autograd.Function):
    """One market's output layer and the objective's per-window sums, :func:`models.loss.held_sums`
    of its logits over its carried returns, in one kernel call each way: the returns are read off
    the series' carry instead of an (n, B, T) tensor through memory, and the backward takes the
    signals the forward stored instead of a product and five elementwise passes per market.

    Inputs: ``h`` (H, B, T) the last layer's output, ``w`` (n, H) and ``b`` (n,) the head (signals
    tanh(w·h + b)), ``ret`` the returns each step's signal earns (:func:`models.loss.carried_windows`).
    Returns (Σ_t s·ret, Σ_t (s·ret)²), each (n, B)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, h: Tensor, w: Tensor, b: Tensor, ret: CarriedWindows
    ) -> tuple[Tensor, Tensor]:
        h, w, b = h.contiguous(), w.contiguous(), b.contiguous()
        (n, f), (b_, t_) = w.shape, h.shape[1:]
        carry = ret.carry.contiguous()
        if ret.steps != t_ or carry.shape[0] != n or ret.after.shape != (n, b_) or carry.dtype != h.dtype:
            shape = f"{tuple(ret.after.shape)} x {ret.steps} {carry.dtype}"
            raise ValueError(f"_FusedHead: returns {shape} for h {tuple(h.shape)} {h.dtype}")
        rows = carry.shape[1]
        if b_ and (int(ret.starts.min()) < 0 or int(ret.starts.max()) + t_ > rows):
            raise IndexError(f"_FusedHead: {t_}-row windows from {ret.starts.tolist()} past {rows} rows")
        fix = [v.contiguous() for v in (ret.starts, ret.after, ret.keep, ret.at, ret.value)]
        a, s2 = h.new_empty(n, b_), h.new_empty(n, b_)
        lib = lstm_kernel()
        fn = lib.head_forward_f32 if h.dtype == torch.float32 else lib.head_forward_f64
        src = (carry.data_ptr(), rows, *(v.data_ptr() for v in fix))
        sig = h.new_empty(n, b_, t_)
        bufs = (a, s2, sig, h.new_empty(8 * t_))
        fn(n, f, b_, t_, h.data_ptr(), w.data_ptr(), b.data_ptr(), *src, *(v.data_ptr() for v in bufs))
        ctx.save_for_backward(h, w, carry, sig, *fix)
        return a, s2

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, ga: Tensor, gs2: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, None]:
        h, w, carry, sig, *fix = ctx.saved_tensors  # type: ignore[attr-defined]
        (n, f), (b_, t_) = w.shape, h.shape[1:]
        dh, dw, db = torch.empty_like(h), torch.empty_like(w), w.new_empty(n)
        ga, gs2, scratch = ga.contiguous(), gs2.contiguous(), h.new_empty(8 * t_)
        lib = lstm_kernel()
        fn = lib.head_backward_f32 if h.dtype == torch.float32 else lib.head_backward_f64
        src = (carry.data_ptr(), carry.shape[1], *(v.data_ptr() for v in fix))
        bufs = (sig, ga, gs2, dh, dw, db, scratch)
        fn(n, f, b_, t_, h.data_ptr(), w.data_ptr(), *src, *(v.data_ptr() for v in bufs))
        return dh, dw, db, None


def gather_windows(x: Tensor, starts: Tensor, steps: int) -> Tensor:
    """Time-major windows (steps, B, n) of the rows ``starts[b]``.. of a (rows, n) series: ``x[rows]``
    for rows[t, b] = starts[b] + t. With the compiled kernel they are gathered asset-major in memory
    ((steps, n, B), returned as a transposed view), the layout the fused pass reads in place."""
    if not (_fused(x) and x.is_contiguous()):
        return x[torch.arange(steps, device=x.device)[:, None] + starts[None, :]]
    starts = starts.to(torch.int64).contiguous()
    if len(starts) and (int(starts.min()) < 0 or int(starts.max()) + steps > x.shape[0]):
        raise IndexError(f"gather_windows: {steps}-row windows from {starts.tolist()} past {x.shape[0]} rows")
    out = x.new_empty(steps, x.shape[1], len(starts))
    lib = lstm_kernel()
    fn = lib.gather_windows_f32 if x.dtype == torch.float32 else lib.gather_windows_f64
    fn(x.shape[1], steps, len(starts), x.data_ptr(), starts.data_ptr(), out.data_ptr())
    return out.transpose(1, 2)


def _dropout_mask(shape: Sequence[int], like: Tensor, keep: float) -> Tensor:
    """Dropout multipliers of ``shape`` (contiguous, ``like``'s dtype and device) from the kernel's
    hash, seeded from torch's generator (so ``torch.manual_seed`` fixes them): a tenth of the time of
    ``torch.rand`` and a comparison."""
    mask = like.new_empty(shape)
    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64))
    lib = lstm_kernel()
    fn = lib.dropout_mask_f32 if like.dtype == torch.float32 else lib.dropout_mask_f64
    fn(mask.numel(), seed, keep, mask.data_ptr())
    return mask


def _features_fused(
    ops: list[Op], g: int, x: Tensor, head_w: Tensor, head_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One market's last hidden layer (T, F, B) from time-major (T, B, n) windows, each LSTM layer
    through :class:`_FusedLSTM`, and the head (``head_w``, ``head_b``) to apply to it. Linear maps are
    folded (tiny products of weights) into the next layer's input weights or the head, so
    activations pass only through the kernels."""
    h = x.transpose(1, 2).contiguous()  # read in place, the kernel's steps would touch n pages each
    fold: tuple[Tensor, Tensor] | None = None  # the composed linear maps not yet applied
    for k, op in enumerate(ops):
        if isinstance(op, _Affine):
            w, b = _pick(op.w, g), _pick(op.b, g)
            fold = (w, b) if fold is None else (w @ fold[0], torch.addmv(b, w, fold[1]))
            continue
        if fold is not None and isinstance(op, _Drop):
            h, fold = _affine_steps(h, *fold), None
        if isinstance(op, _Drop):
            if not (k and isinstance(ops[k - 1], _Lstm)):  # else applied by the layer before
                h = h * _dropout_mask(h.shape, h, 1.0 - op.p)
        else:
            w_ih, bias = _pick(op.w_ih, g), _pick(op.bias, g)
            if fold is not None:
                w_ih, bias, fold = w_ih @ fold[0], torch.addmv(bias, w_ih, fold[1]), None
            nxt = ops[k + 1] if k + 1 < len(ops) else None
            mask = None
            if isinstance(nxt, _Drop):
                mask = _dropout_mask((h.shape[0], op.hidden, h.shape[2]), h, 1.0 - nxt.p)
            h = _FusedLSTM.apply(h, w_ih, bias, _pick(op.w_hh, g), mask)
    if fold is not None:
        head_w, head_b = head_w @ fold[0], torch.addmv(head_b, head_w, fold[1])
    return h, head_w, head_b


def _logits_fused(ops: list[Op], g: int, x: Tensor, head_w: Tensor, head_b: Tensor) -> Tensor:
    """One market's doubled output pre-activation (n, B, T) through :func:`_features_fused`."""
    t_, b_ = x.shape[:2]
    h, head_w, head_b = _features_fused(ops, g, x, head_w, head_b)
    feats = h.permute(1, 2, 0).reshape(h.shape[1], b_ * t_)
    # the bias added after the product: addmm's broadcast copy of it into the output is slower
    out = torch.mm(head_w * 2.0, feats).add_(head_b.unsqueeze(1), alpha=2.0)
    return out.view(-1, b_, t_)


_LOOPS: list[Callable[..., None]] = []


def _loops() -> list[Callable[..., None]]:
    """The two loops, compiled by TorchScript on first use: its interpreter runs the dozen tensor
    operations of an iteration in C++, about 40% faster than from Python at these sizes (deprecated
    API; where it fails to compile, the same functions run as Python)."""
    if not _LOOPS:
        fns = [_forward_loop, _backward_loop]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                fns = [torch.jit.script(fn) for fn in fns]
        except Exception:  # any compile failure: run the Python functions
            pass
        _LOOPS.extend(fns)
    return _LOOPS


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
        # multipliers only for the links that drop and the units that exist (padded units are zero)
        rows = t_ + len(layers)
        mask = xw.new_ones(rows, len(masks), g_, hid, b_)
        for j, p in enumerate(masks):
            if p:
                width = layers[j].hidden
                draw = torch.rand(rows, g_, width, b_, dtype=xw.dtype, device=xw.device) < 1.0 - p
                mask[:, j, :, :width] = draw * (1.0 / (1.0 - p))
        mask = mask.view(rows, -1, hid, b_)
    out = _ChainLSTM.apply(xw, w_hh, wih_t, bias_t, mask)
    return out[:, : layers[-1].hidden]


def _execute(h: Hidden, ops: list[Op], g_: int) -> Hidden:
    """Run ``ops`` over ``h`` (stacked (G, F, T, B) after the first block), consecutive LSTM layers
    as :class:`_ChainLSTM` wavefronts."""
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
                if ops[j].hidden != op.hidden:  # type: ignore[union-attr]
                    break
                links.append((affines, p, ops[j]))  # type: ignore[arg-type]
                k = j + 1
            h = _run_chain(h, op, links, g_)
    return h


def _prepare(
    model: QuantNet, items: Sequence[tuple[int, Tensor]]
) -> tuple[list[Op], list[nn.Module], list[Tensor]]:
    """The pass's program, the markets' networks and their head weights, with the input divisors
    folded into the first weights that see the raw returns."""
    t_, b_ = items[0][1].shape[:2]
    if any(x.dim() != 3 or x.shape[:2] != (t_, b_) for _, x in items):
        raise ValueError("forward_batched: every market's windows need the same (T, B)")
    nets = [model.markets[i] for i, _ in items]
    ops = _program(model, nets, model.training)
    scales = [net.input_scale for net in nets]
    head_w = [net.head.weight for net in nets]
    first = next((op for op in ops if not isinstance(op, _Drop)), None)
    if first is None:
        head_w = [w / s for w, s in zip(head_w, scales, strict=True)]
    elif isinstance(first, _Lstm):
        assert isinstance(first.w_ih, list)
        first.w_ih = [w / s for w, s in zip(first.w_ih, scales, strict=True)]
    else:
        assert isinstance(first.w, list)
        first.w = [w / s for w, s in zip(first.w, scales, strict=True)]
    return ops, nets, head_w


def _fused(x: Tensor) -> bool:
    return supports(x) and lstm_kernel() is not None


def logits_batched(model: QuantNet, items: Sequence[tuple[int, Tensor]]) -> list[Tensor]:
    """Every market's output layer from zero state in one pass: per item ((market index,
    time-major (T, B, n_i) inputs), all with the same T and B) the (n_i, B, T) doubled
    pre-activation 2z, so its signals are 2·sigmoid(2z) - 1 = tanh(z). Assets first: the output
    layer's weight gradient is then a product of two row-major matrices (from time-major rows it is
    an order of magnitude slower)."""
    ops, nets, head_w = _prepare(model, items)
    if _fused(items[0][1]):
        return [
            _logits_fused(ops, g, x, w, net.head.bias)
            for g, ((_, x), w, net) in enumerate(zip(items, head_w, nets, strict=True))
        ]
    t_, b_ = items[0][1].shape[:2]
    h = _execute([x for _, x in items], ops, len(nets))
    if isinstance(h, list):
        xs = [x.transpose(0, 1).reshape(b_ * t_, -1).t() for x in h]
    else:
        xs = [x.transpose(1, 2).reshape(x.shape[0], b_ * t_) for x in h.unbind(0)]
    return [
        torch.addmm(net.head.bias.unsqueeze(1) * 2.0, w * 2.0, x).view(-1, b_, t_)
        for x, w, net in zip(xs, head_w, nets, strict=True)
    ]


def held_sums_batched(
    model: QuantNet, items: Sequence[tuple[int, Tensor, CarriedWindows]]
) -> list[tuple[Tensor, Tensor]]:
    """:func:`models.loss.held_sums` of each market's :func:`logits_batched` for items (market
    index, time-major (T, B, n_i) inputs, the returns its signals earn from
    :func:`models.loss.carried_windows`): with the compiled kernel, through :class:`_FusedHead`."""
    if not _fused(items[0][1]):
        logits = logits_batched(model, [(i, x) for i, x, _ in items])
        return [held_sums(z, ret.dense()) for z, (_, _, ret) in zip(logits, items, strict=True)]
    ops, nets, head_w = _prepare(model, [(i, x) for i, x, _ in items])
    out = []
    for g, ((_, x, ret), w, net) in enumerate(zip(items, head_w, nets, strict=True)):
        h, w, b = _features_fused(ops, g, x, w, net.head.bias)
        out.append(_FusedHead.apply(h.permute(1, 2, 0), w, b, ret))
    return out


def signals_batched(model: QuantNet, items: Sequence[tuple[int, Tensor]]) -> Tensor:
    """Signals for several markets from zero state in one pass (:func:`logits_batched`), side by
    side: (T, B, Σ n_i), the markets' assets in the order of ``items``. Equals ``model(i, x)`` per
    market (batch-first there) to rounding."""
    sig = torch.sigmoid(torch.cat(logits_batched(model, items)))
    sig = torch.add(sig.new_full((1, 1, 1), -1.0), sig, alpha=2.0)
    return sig.permute(2, 1, 0)


def forward_batched(model: QuantNet, items: Sequence[tuple[int, Tensor]]) -> list[Tensor]:
    """:func:`signals_batched` split per market: the (T, B, n_i) signals in the order of ``items``
    (views into one tensor)."""
    if not items:
        return []
    sig = signals_batched(model, items)
    return list(sig.split([x.shape[2] for _, x in items], dim=2))


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
