/* The recurrence for one floating type: included by lstm.c with REAL, SUFFIX, EXP and VB (values
 * of REAL per vector register) defined. */

static inline REAL SUFFIX(sigmoid)(REAL x) { return (REAL)1 / ((REAL)1 + EXP(-x)); }

/* tanh through the exponential of 2x: one exp, exact at the saturated ends */
static inline REAL SUFFIX(tanh_)(REAL x) { return (REAL)2 / ((REAL)1 + EXP((REAL)-2 * x)) - (REAL)1; }

/* a[r, b] = pre[r, b] + sum_k w[r, k] h[k, b] for VB windows b: each accumulator is one vector
 * register (fixed width) */
static inline void SUFFIX(gates_block)(long H4, long H, const REAL *restrict w, const REAL *restrict h,
                                       long B, const REAL *restrict pre, REAL *restrict a, long n) {
    if (n < VB) {
        for (long r = 0; r < H4; r++)
            for (long b = 0; b < n; b++) {
                REAL acc = pre[r * B + b];
                for (long k = 0; k < H; k++) acc += w[r * H + k] * h[k * B + b];
                a[r * B + b] = acc;
            }
        return;
    }
    for (long r = 0; r < H4; r += 4) { /* four rows: four independent multiply-add chains */
        REAL a0[VB], a1[VB], a2[VB], a3[VB];
        for (int b = 0; b < VB; b++) {
            a0[b] = pre[r * B + b];
            a1[b] = pre[(r + 1) * B + b];
            a2[b] = pre[(r + 2) * B + b];
            a3[b] = pre[(r + 3) * B + b];
        }
        const REAL *w0 = w + r * H;
        for (long k = 0; k < H; k++) {
            const REAL *hk = h + k * B;
            const REAL x0 = w0[k], x1 = w0[H + k], x2 = w0[2 * H + k], x3 = w0[3 * H + k];
            for (int b = 0; b < VB; b++) {
                a0[b] += x0 * hk[b];
                a1[b] += x1 * hk[b];
                a2[b] += x2 * hk[b];
                a3[b] += x3 * hk[b];
            }
        }
        for (int b = 0; b < VB; b++) {
            a[r * B + b] = a0[b];
            a[(r + 1) * B + b] = a1[b];
            a[(r + 2) * B + b] = a2[b];
            a[(r + 3) * B + b] = a3[b];
        }
    }
}

/* d[k, b] = sum_r w[r, k] p[r, b] for VB windows: the gradient on h_{t-1} through step t's gates */
static inline void SUFFIX(back_block)(long H4, long H, const REAL *restrict w, const REAL *restrict p,
                                      long B, REAL *restrict d, long n) {
    if (n < VB) {
        for (long k = 0; k < H; k++)
            for (long b = 0; b < n; b++) {
                REAL acc = 0;
                for (long r = 0; r < H4; r++) acc += w[r * H + k] * p[r * B + b];
                d[k * B + b] = acc;
            }
        return;
    }
    for (long k = 0; k < H; k++) { /* four partial sums over the rows: independent chains */
        REAL a0[VB], a1[VB], a2[VB], a3[VB];
        for (int b = 0; b < VB; b++) a0[b] = a1[b] = a2[b] = a3[b] = 0;
        for (long r = 0; r < H4; r += 4) {
            const REAL x0 = w[r * H + k], x1 = w[(r + 1) * H + k];
            const REAL x2 = w[(r + 2) * H + k], x3 = w[(r + 3) * H + k];
            const REAL *p0 = p + r * B;
            for (int b = 0; b < VB; b++) {
                a0[b] += x0 * p0[b];
                a1[b] += x1 * p0[B + b];
                a2[b] += x2 * p0[2 * B + b];
                a3[b] += x3 * p0[3 * B + b];
            }
        }
        for (int b = 0; b < VB; b++) d[k * B + b] = (a0[b] + a1[b]) + (a2[b] + a3[b]);
    }
}

void SUFFIX(lstm_forward)(long G, long H, long T, long B, const REAL *restrict pre,
                          const REAL *restrict whh, REAL *restrict hs, REAL *restrict cs,
                          REAL *restrict tcs, REAL *restrict acts, REAL *restrict scratch) {
    const long H4 = 4 * H, HB = H * B, H4B = H4 * B;
    REAL *restrict zero = scratch; /* (H, B) h_{-1} and c_{-1} */
    for (long q = 0; q < HB; q++) zero[q] = 0;
    for (long g = 0; g < G; g++) {
        const REAL *w = whh + g * H4 * H;
        for (long t = 0; t < T; t++) {
            const long gt = g * T + t;
            const REAL *hp = t ? hs + (gt - 1) * HB : zero, *cp = t ? cs + (gt - 1) * HB : zero;
            const REAL *pt = pre + gt * H4B;
            REAL *at = acts + gt * H4B;
            for (long b0 = 0; b0 < B; b0 += VB)
                SUFFIX(gates_block)(H4, H, w, hp + b0, B, pt + b0, at + b0, B - b0);
            REAL *ct = cs + gt * HB, *tt = tcs + gt * HB, *ht = hs + gt * HB;
            for (long j = 0; j < H; j++) {
                REAL *si = at + j * B, *sf = at + (H + j) * B, *sg = at + (2 * H + j) * B;
                REAL *so = at + (3 * H + j) * B, *c = ct + j * B, *tc = tt + j * B, *h = ht + j * B;
                const REAL *cj = cp + j * B;
#pragma GCC ivdep
                for (long b = 0; b < B; b++) {
                    const REAL i = SUFFIX(sigmoid)(si[b]), f = SUFFIX(sigmoid)(sf[b]);
                    const REAL gg = SUFFIX(tanh_)(sg[b]), o = SUFFIX(sigmoid)(so[b]);
                    const REAL cn = f * cj[b] + i * gg;
                    const REAL th = SUFFIX(tanh_)(cn);
                    si[b] = i;
                    sf[b] = f;
                    sg[b] = gg;
                    so[b] = o;
                    c[b] = cn;
                    tc[b] = th;
                    h[b] = o * th;
                }
            }
        }
    }
}

/* acc[r, k, 0:VB] += p[r, 0:VB] h[k, 0:VB]: the hidden weights' gradient, summed over windows at
 * the end so the loop needs no horizontal sums */
static inline void SUFFIX(outer_block)(long H4, long H, const REAL *restrict p, const REAL *restrict h,
                                       long B, REAL *restrict acc, long n) {
    if (n < VB) {
        for (long r = 0; r < H4; r++)
            for (long k = 0; k < H; k++)
                for (long b = 0; b < n; b++) acc[(r * H + k) * VB + b] += p[r * B + b] * h[k * B + b];
        return;
    }
    for (long r = 0; r < H4; r++) {
        const REAL *pr = p + r * B;
        for (long k = 0; k < H; k++) {
            REAL *ak = acc + (r * H + k) * VB;
            const REAL *hk = h + k * B;
            for (int b = 0; b < VB; b++) ak[b] += pr[b] * hk[b];
        }
    }
}

void SUFFIX(lstm_backward)(long G, long H, long T, long B, const REAL *restrict whh,
                           const REAL *restrict dh, const REAL *restrict hs,
                           const REAL *restrict cs, const REAL *restrict tcs,
                           const REAL *restrict acts, REAL *restrict dpre, REAL *restrict dwhh,
                           REAL *restrict scratch) {
    const long H4 = 4 * H, HB = H * B, H4B = H4 * B;
    REAL *restrict dhr = scratch;      /* (H, B) gradient on h_t through step t+1's gates */
    REAL *restrict dcr = scratch + HB; /* (H, B) gradient on c_t through c_{t+1} */
    REAL *restrict zero = dcr + HB;    /* (H, B) c_{-1} */
    REAL *restrict acc = zero + HB;    /* (4H, H, VB) partial sums of the weight gradient */
    for (long q = 0; q < HB; q++) zero[q] = 0;
    for (long g = 0; g < G; g++) {
        const REAL *w = whh + g * H4 * H;
        for (long q = 0; q < 2 * HB; q++) scratch[q] = 0;
        for (long q = 0; q < H4 * H * VB; q++) acc[q] = 0;
        for (long t = T - 1; t >= 0; t--) {
            const long gt = g * T + t;
            const REAL *at = acts + gt * H4B, *tt = tcs + gt * HB, *dt = dh + gt * HB;
            const REAL *cp = t ? cs + (gt - 1) * HB : zero;
            REAL *pt = dpre + gt * H4B;
            for (long j = 0; j < H; j++) {
                const REAL *si = at + j * B, *sf = at + (H + j) * B, *sg = at + (2 * H + j) * B;
                const REAL *so = at + (3 * H + j) * B, *tc = tt + j * B, *cj = cp + j * B;
                const REAL *dj = dt + j * B;
                REAL *pi = pt + j * B, *pf = pt + (H + j) * B, *pg = pt + (2 * H + j) * B;
                REAL *po = pt + (3 * H + j) * B, *dhj = dhr + j * B, *dcj = dcr + j * B;
#pragma GCC ivdep
                for (long b = 0; b < B; b++) {
                    const REAL i = si[b], f = sf[b], gg = sg[b], o = so[b], th = tc[b];
                    const REAL d = dj[b] + dhj[b];
                    const REAL dc = dcj[b] + d * o * ((REAL)1 - th * th);
                    po[b] = d * th * o * ((REAL)1 - o);
                    pi[b] = dc * gg * i * ((REAL)1 - i);
                    pg[b] = dc * i * ((REAL)1 - gg * gg);
                    pf[b] = dc * cj[b] * f * ((REAL)1 - f);
                    dcj[b] = dc * f;
                }
            }
            for (long b0 = 0; b0 < B; b0 += VB) SUFFIX(back_block)(H4, H, w, pt + b0, B, dhr + b0, B - b0);
            if (t)
                for (long b0 = 0; b0 < B; b0 += VB)
                    SUFFIX(outer_block)(H4, H, pt + b0, hs + (gt - 1) * HB + b0, B, acc, B - b0);
        }
        REAL *dw = dwhh + g * H4 * H;
        for (long q = 0; q < H4 * H; q++) {
            REAL sum = 0;
            for (int b = 0; b < VB; b++) sum += acc[q * VB + b];
            dw[q] = sum;
        }
    }
}
