/* One LSTM layer for one floating type: included by lstm.c with REAL, SUFFIX, EXP and VB (values
 * of REAL per vector register) defined. */

static inline REAL SUFFIX(sigmoid)(REAL x) { return (REAL)1 / ((REAL)1 + EXP(-x)); }

/* tanh through the exponential of 2x: one exp, exact at the saturated ends */
static inline REAL SUFFIX(tanh_)(REAL x) { return (REAL)2 / ((REAL)1 + EXP((REAL)-2 * x)) - (REAL)1; }

typedef REAL SUFFIX(vec) __attribute__((vector_size(VB * sizeof(REAL))));

static inline SUFFIX(vec) SUFFIX(load)(const REAL *p) {
    SUFFIX(vec) v;
    __builtin_memcpy(&v, p, sizeof v); /* unaligned */
    return v;
}

static inline void SUFFIX(store)(REAL *p, SUFFIX(vec) v) { __builtin_memcpy(p, &v, sizeof v); }

/* gates_pair for eight rows r..r+7: sixteen chains, each input vector loaded once per eight rows */
static inline void SUFFIX(gates_pair8)(long I, long H, const REAL *restrict wx,
                                       const REAL *restrict x, long xk, const REAL *restrict wh,
                                       const REAL *restrict h, long B, const REAL *restrict bias,
                                       REAL *restrict a, long r) {
    typedef SUFFIX(vec) V;
    V a0 = bias[r] + (V){0}, a1 = bias[r + 1] + (V){0}, a2 = bias[r + 2] + (V){0};
    V a3 = bias[r + 3] + (V){0}, a4 = bias[r + 4] + (V){0}, a5 = bias[r + 5] + (V){0};
    V a6 = bias[r + 6] + (V){0}, a7 = bias[r + 7] + (V){0};
    V b0 = a0, b1 = a1, b2 = a2, b3 = a3, b4 = a4, b5 = a5, b6 = a6, b7 = a7;
    const REAL *w0 = wx + r * I;
    for (long k = 0; k < I; k++) {
        const V u = SUFFIX(load)(x + k * xk), v = SUFFIX(load)(x + k * xk + VB);
        const REAL *y = w0 + k;
        a0 += y[0] * u, a1 += y[I] * u, a2 += y[2 * I] * u, a3 += y[3 * I] * u;
        a4 += y[4 * I] * u, a5 += y[5 * I] * u, a6 += y[6 * I] * u, a7 += y[7 * I] * u;
        b0 += y[0] * v, b1 += y[I] * v, b2 += y[2 * I] * v, b3 += y[3 * I] * v;
        b4 += y[4 * I] * v, b5 += y[5 * I] * v, b6 += y[6 * I] * v, b7 += y[7 * I] * v;
    }
    w0 = wh + r * H;
    for (long k = 0; k < H; k++) {
        const V u = SUFFIX(load)(h + k * B), v = SUFFIX(load)(h + k * B + VB);
        const REAL *y = w0 + k;
        a0 += y[0] * u, a1 += y[H] * u, a2 += y[2 * H] * u, a3 += y[3 * H] * u;
        a4 += y[4 * H] * u, a5 += y[5 * H] * u, a6 += y[6 * H] * u, a7 += y[7 * H] * u;
        b0 += y[0] * v, b1 += y[H] * v, b2 += y[2 * H] * v, b3 += y[3 * H] * v;
        b4 += y[4 * H] * v, b5 += y[5 * H] * v, b6 += y[6 * H] * v, b7 += y[7 * H] * v;
    }
    REAL *o = a + r * B;
    SUFFIX(store)(o, a0), SUFFIX(store)(o + B, a1), SUFFIX(store)(o + 2 * B, a2);
    SUFFIX(store)(o + 3 * B, a3), SUFFIX(store)(o + 4 * B, a4), SUFFIX(store)(o + 5 * B, a5);
    SUFFIX(store)(o + 6 * B, a6), SUFFIX(store)(o + 7 * B, a7);
    o += VB;
    SUFFIX(store)(o, b0), SUFFIX(store)(o + B, b1), SUFFIX(store)(o + 2 * B, b2);
    SUFFIX(store)(o + 3 * B, b3), SUFFIX(store)(o + 4 * B, b4), SUFFIX(store)(o + 5 * B, b5);
    SUFFIX(store)(o + 6 * B, b6), SUFFIX(store)(o + 7 * B, b7);
}

/* the same as gates_block below for 2 VB windows: four rows by two vectors, eight independent
 * multiply-add chains in named vector variables (as arrays, gcc kept them on the stack) */
static inline void SUFFIX(gates_pair)(long H4, long I, long H, const REAL *restrict wx,
                                      const REAL *restrict x, long xk, const REAL *restrict wh,
                                      const REAL *restrict h, long B, const REAL *restrict bias,
                                      REAL *restrict a) {
    typedef SUFFIX(vec) V;
    long r = 0;
    for (; r + 8 <= H4; r += 8) SUFFIX(gates_pair8)(I, H, wx, x, xk, wh, h, B, bias, a, r);
    for (; r < H4; r += 4) {
        V a0 = bias[r] + (V){0}, a1 = bias[r + 1] + (V){0}, a2 = bias[r + 2] + (V){0};
        V a3 = bias[r + 3] + (V){0};
        V b0 = a0, b1 = a1, b2 = a2, b3 = a3;
        const REAL *w0 = wx + r * I;
        for (long k = 0; k < I; k++) {
            const V u = SUFFIX(load)(x + k * xk), v = SUFFIX(load)(x + k * xk + VB);
            const REAL y0 = w0[k], y1 = w0[I + k], y2 = w0[2 * I + k], y3 = w0[3 * I + k];
            a0 += y0 * u, a1 += y1 * u, a2 += y2 * u, a3 += y3 * u;
            b0 += y0 * v, b1 += y1 * v, b2 += y2 * v, b3 += y3 * v;
        }
        w0 = wh + r * H;
        for (long k = 0; k < H; k++) {
            const V u = SUFFIX(load)(h + k * B), v = SUFFIX(load)(h + k * B + VB);
            const REAL y0 = w0[k], y1 = w0[H + k], y2 = w0[2 * H + k], y3 = w0[3 * H + k];
            a0 += y0 * u, a1 += y1 * u, a2 += y2 * u, a3 += y3 * u;
            b0 += y0 * v, b1 += y1 * v, b2 += y2 * v, b3 += y3 * v;
        }
        REAL *o = a + r * B;
        SUFFIX(store)(o, a0), SUFFIX(store)(o + B, a1), SUFFIX(store)(o + 2 * B, a2);
        SUFFIX(store)(o + 3 * B, a3), SUFFIX(store)(o + VB, b0), SUFFIX(store)(o + B + VB, b1);
        SUFFIX(store)(o + 2 * B + VB, b2), SUFFIX(store)(o + 3 * B + VB, b3);
    }
}

/* a[r, b] = bias[r] + sum_k wx[r, k] x[k xk + b] + sum_k wh[r, k] h[k, b] for VB windows b (fewer in
 * the last block, n < VB): each accumulator is one vector register (fixed width) */
static inline void SUFFIX(gates_block)(long H4, long I, long H, const REAL *restrict wx,
                                       const REAL *restrict x, long xk, const REAL *restrict wh,
                                       const REAL *restrict h, long B, const REAL *restrict bias,
                                       REAL *restrict a, long n) {
    if (n < VB) {
        for (long r = 0; r < H4; r++)
            for (long b = 0; b < n; b++) {
                REAL acc = bias[r];
                for (long k = 0; k < I; k++) acc += wx[r * I + k] * x[k * xk + b];
                for (long k = 0; k < H; k++) acc += wh[r * H + k] * h[k * B + b];
                a[r * B + b] = acc;
            }
        return;
    }
    for (long r = 0; r < H4; r += 4) { /* four rows: four independent multiply-add chains */
        REAL a0[VB], a1[VB], a2[VB], a3[VB];
        for (int b = 0; b < VB; b++) {
            a0[b] = bias[r];
            a1[b] = bias[r + 1];
            a2[b] = bias[r + 2];
            a3[b] = bias[r + 3];
        }
        const REAL *w0 = wx + r * I;
        for (long k = 0; k < I; k++) {
            const REAL *xr = x + k * xk;
            const REAL y0 = w0[k], y1 = w0[I + k], y2 = w0[2 * I + k], y3 = w0[3 * I + k];
            for (int b = 0; b < VB; b++) {
                a0[b] += y0 * xr[b];
                a1[b] += y1 * xr[b];
                a2[b] += y2 * xr[b];
                a3[b] += y3 * xr[b];
            }
        }
        w0 = wh + r * H;
        for (long k = 0; k < H; k++) {
            const REAL *hk = h + k * B;
            const REAL y0 = w0[k], y1 = w0[H + k], y2 = w0[2 * H + k], y3 = w0[3 * H + k];
            for (int b = 0; b < VB; b++) {
                a0[b] += y0 * hk[b];
                a1[b] += y1 * hk[b];
                a2[b] += y2 * hk[b];
                a3[b] += y3 * hk[b];
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

/* back_block below for 2 VB windows: four columns k by two vectors, eight independent chains in
 * named vector variables; the columns past the last four by two vectors and two partial sums */
static inline void SUFFIX(back_pair)(long H4, long K, const REAL *restrict w, const REAL *restrict p,
                                     long B, REAL *restrict d) {
    typedef SUFFIX(vec) V;
    long k = 0;
    for (; K % 5 == 0 && k < K; k += 5) { /* the model's widths (5, 10): five columns, ten chains */
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0};
        V b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0}, b4 = {0};
        for (long r = 0; r < H4; r++) {
            const V u = SUFFIX(load)(p + r * B), v = SUFFIX(load)(p + r * B + VB);
            const REAL *wr = w + r * K + k;
            const REAL y0 = wr[0], y1 = wr[1], y2 = wr[2], y3 = wr[3], y4 = wr[4];
            a0 += y0 * u, a1 += y1 * u, a2 += y2 * u, a3 += y3 * u, a4 += y4 * u;
            b0 += y0 * v, b1 += y1 * v, b2 += y2 * v, b3 += y3 * v, b4 += y4 * v;
        }
        REAL *o = d + k * B;
        SUFFIX(store)(o, a0), SUFFIX(store)(o + B, a1), SUFFIX(store)(o + 2 * B, a2);
        SUFFIX(store)(o + 3 * B, a3), SUFFIX(store)(o + 4 * B, a4);
        o += VB;
        SUFFIX(store)(o, b0), SUFFIX(store)(o + B, b1), SUFFIX(store)(o + 2 * B, b2);
        SUFFIX(store)(o + 3 * B, b3), SUFFIX(store)(o + 4 * B, b4);
    }
    for (; k + 4 <= K; k += 4) {
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        for (long r = 0; r < H4; r++) {
            const V u = SUFFIX(load)(p + r * B), v = SUFFIX(load)(p + r * B + VB);
            const REAL *wr = w + r * K + k;
            const REAL y0 = wr[0], y1 = wr[1], y2 = wr[2], y3 = wr[3];
            a0 += y0 * u, a1 += y1 * u, a2 += y2 * u, a3 += y3 * u;
            b0 += y0 * v, b1 += y1 * v, b2 += y2 * v, b3 += y3 * v;
        }
        REAL *o = d + k * B;
        SUFFIX(store)(o, a0), SUFFIX(store)(o + B, a1), SUFFIX(store)(o + 2 * B, a2);
        SUFFIX(store)(o + 3 * B, a3), SUFFIX(store)(o + VB, b0), SUFFIX(store)(o + B + VB, b1);
        SUFFIX(store)(o + 2 * B + VB, b2), SUFFIX(store)(o + 3 * B + VB, b3);
    }
    for (; k < K; k++) {
        V a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        long r = 0;
        for (; r + 2 <= H4; r += 2) {
            const REAL y0 = w[r * K + k], y1 = w[(r + 1) * K + k];
            a0 += y0 * SUFFIX(load)(p + r * B), b0 += y0 * SUFFIX(load)(p + r * B + VB);
            a1 += y1 * SUFFIX(load)(p + (r + 1) * B), b1 += y1 * SUFFIX(load)(p + (r + 1) * B + VB);
        }
        for (; r < H4; r++) {
            const REAL y0 = w[r * K + k];
            a0 += y0 * SUFFIX(load)(p + r * B), b0 += y0 * SUFFIX(load)(p + r * B + VB);
        }
        SUFFIX(store)(d + k * B, a0 + a1), SUFFIX(store)(d + k * B + VB, b0 + b1);
    }
}

/* d[k, b] = sum_r w[r, k] p[r, b] for VB windows, w (H4, K): the gradient on a step's input or
 * previous h through its gates */
static inline void SUFFIX(back_block)(long H4, long K, const REAL *restrict w, const REAL *restrict p,
                                      long B, REAL *restrict d, long n) {
    if (n < VB) {
        for (long k = 0; k < K; k++)
            for (long b = 0; b < n; b++) {
                REAL acc = 0;
                for (long r = 0; r < H4; r++) acc += w[r * K + k] * p[r * B + b];
                d[k * B + b] = acc;
            }
        return;
    }
    for (long k = 0; k < K; k++) { /* four partial sums over the rows: independent chains */
        REAL a0[VB], a1[VB], a2[VB], a3[VB];
        for (int b = 0; b < VB; b++) a0[b] = a1[b] = a2[b] = a3[b] = 0;
        for (long r = 0; r < H4; r += 4) {
            const REAL x0 = w[r * K + k], x1 = w[(r + 1) * K + k];
            const REAL x2 = w[(r + 2) * K + k], x3 = w[(r + 3) * K + k];
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

/* out[r + i, k + j] += sum over steps t0..t1-1 and windows b of p[t, r + i, b] v[t, k + j, b] for
 * i, j < 4. The 16 accumulators are named vector variables: as an array (or with a run-time tile
 * width, or inlined in a loop with other work) gcc kept some in memory, at a third of the speed.
 * Full vectors of windows only. */
__attribute__((noinline)) static void SUFFIX(weight_tile)(long R, long K, long t0, long t1,
                                                          long B, const REAL *restrict p,
                                                          const REAL *restrict v,
                                                          long vt_, long vk, REAL *restrict out,
                                                          long r, long k) {
    typedef SUFFIX(vec) V;
    const long Bv = B - B % VB;
    V a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    V a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
    for (long t = t0; t < t1; t++) {
        const REAL *pt = p + (t * R + r) * B, *vt = v + t * vt_ + k * vk;
        for (long b0 = 0; b0 < Bv; b0 += VB) {
            const V p0 = SUFFIX(load)(pt + b0), p1 = SUFFIX(load)(pt + B + b0);
            const V p2 = SUFFIX(load)(pt + 2 * B + b0), p3 = SUFFIX(load)(pt + 3 * B + b0);
            const V q0 = SUFFIX(load)(vt + b0), q1 = SUFFIX(load)(vt + vk + b0);
            const V q2 = SUFFIX(load)(vt + 2 * vk + b0), q3 = SUFFIX(load)(vt + 3 * vk + b0);
            a00 += p0 * q0, a01 += p0 * q1, a02 += p0 * q2, a03 += p0 * q3;
            a10 += p1 * q0, a11 += p1 * q1, a12 += p1 * q2, a13 += p1 * q3;
            a20 += p2 * q0, a21 += p2 * q1, a22 += p2 * q2, a23 += p2 * q3;
            a30 += p3 * q0, a31 += p3 * q1, a32 += p3 * q2, a33 += p3 * q3;
        }
    }
    const V acc[16] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33};
    for (int q = 0; q < 16; q++) {
        REAL sum = 0;
        for (int b = 0; b < VB; b++) sum += acc[q][b];
        out[(r + q / 4) * K + k + q % 4] += sum;
    }
}

/* weight_tile for four rows by six columns: 24 accumulators, ten loads per 24 multiply-adds (the
 * 4 x 4 tile's eight per 16 left it waiting on L2) */
__attribute__((noinline)) static void SUFFIX(weight_tile6)(long R, long K, long t0, long t1,
                                                           long B, const REAL *restrict p,
                                                           const REAL *restrict v,
                                                           long vt_, long vk, REAL *restrict out,
                                                           long r, long k) {
    typedef SUFFIX(vec) V;
    const long Bv = B - B % VB;
    V a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a04 = {0}, a05 = {0};
    V a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0}, a14 = {0}, a15 = {0};
    V a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a24 = {0}, a25 = {0};
    V a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0}, a34 = {0}, a35 = {0};
    for (long t = t0; t < t1; t++) {
        const REAL *pt = p + (t * R + r) * B, *vt = v + t * vt_ + k * vk;
        for (long b0 = 0; b0 < Bv; b0 += VB) {
            const V p0 = SUFFIX(load)(pt + b0), p1 = SUFFIX(load)(pt + B + b0);
            const V p2 = SUFFIX(load)(pt + 2 * B + b0), p3 = SUFFIX(load)(pt + 3 * B + b0);
            V q = SUFFIX(load)(vt + b0);
            a00 += p0 * q, a10 += p1 * q, a20 += p2 * q, a30 += p3 * q;
            q = SUFFIX(load)(vt + vk + b0);
            a01 += p0 * q, a11 += p1 * q, a21 += p2 * q, a31 += p3 * q;
            q = SUFFIX(load)(vt + 2 * vk + b0);
            a02 += p0 * q, a12 += p1 * q, a22 += p2 * q, a32 += p3 * q;
            q = SUFFIX(load)(vt + 3 * vk + b0);
            a03 += p0 * q, a13 += p1 * q, a23 += p2 * q, a33 += p3 * q;
            q = SUFFIX(load)(vt + 4 * vk + b0);
            a04 += p0 * q, a14 += p1 * q, a24 += p2 * q, a34 += p3 * q;
            q = SUFFIX(load)(vt + 5 * vk + b0);
            a05 += p0 * q, a15 += p1 * q, a25 += p2 * q, a35 += p3 * q;
        }
    }
    const V acc[24] = {a00, a01, a02, a03, a04, a05, a10, a11, a12, a13, a14, a15,
                       a20, a21, a22, a23, a24, a25, a30, a31, a32, a33, a34, a35};
    for (int q = 0; q < 24; q++) {
        REAL sum = 0;
        for (int b = 0; b < VB; b++) sum += acc[q][b];
        out[(r + q / 6) * K + k + q % 6] += sum;
    }
}

/* the same for one column k: four accumulators */
__attribute__((noinline)) static void SUFFIX(weight_column)(long R, long K, long t0, long t1,
                                                            long B, const REAL *restrict p,
                                                            const REAL *restrict v,
                                                            long vt_, long vk, REAL *restrict out,
                                                            long r, long k) {
    typedef SUFFIX(vec) V;
    const long Bv = B - B % VB;
    V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (long t = t0; t < t1; t++) {
        const REAL *pt = p + (t * R + r) * B, *vt = v + t * vt_ + k * vk;
        for (long b0 = 0; b0 < Bv; b0 += VB) {
            const V q = SUFFIX(load)(vt + b0);
            a0 += SUFFIX(load)(pt + b0) * q, a1 += SUFFIX(load)(pt + B + b0) * q;
            a2 += SUFFIX(load)(pt + 2 * B + b0) * q, a3 += SUFFIX(load)(pt + 3 * B + b0) * q;
        }
    }
    const V acc[4] = {a0, a1, a2, a3};
    for (int i = 0; i < 4; i++) {
        REAL sum = 0;
        for (int b = 0; b < VB; b++) sum += acc[i][b];
        out[(r + i) * K + k] += sum;
    }
}

/* out[r, k] += sum_t sum_b p[t, r, b] v[t, k, b] over T steps, p (T, R, B) and v with strides vt
 * (steps) and vk (rows) and windows contiguous, R a multiple of 4: a weight gradient's share from
 * one chunk of the backward's steps, while they are in L2 */
static void SUFFIX(weight_grad_add)(long R, long K, long T, long B, const REAL *restrict p,
                                    const REAL *restrict v, long vt, long vk, REAL *restrict out) {
    for (long r = 0; r < R; r += 4) {
        long k = 0;
        for (; k + 6 <= K; k += 6) SUFFIX(weight_tile6)(R, K, 0, T, B, p, v, vt, vk, out, r, k);
        for (; k + 4 <= K; k += 4) SUFFIX(weight_tile)(R, K, 0, T, B, p, v, vt, vk, out, r, k);
        for (; k < K; k++) SUFFIX(weight_column)(R, K, 0, T, B, p, v, vt, vk, out, r, k);
    }
    for (long b = B - B % VB; b < B; b++) /* windows past the last full vector */
        for (long t = 0; t < T; t++)
            for (long r = 0; r < R; r++) {
                const REAL x = p[(t * R + r) * B + b];
                for (long k = 0; k < K; k++) out[r * K + k] += x * v[t * vt + k * vk + b];
            }
}

static void SUFFIX(bias_grad_add)(long R, long T, long B, const REAL *restrict p, REAL *restrict out) {
    const long Bv = B - B % VB;
    for (long r = 0; r < R; r++) {
        REAL lane[VB] = {0}, sum = 0; /* VB partial sums, so the loop vectorises */
        for (long t = 0; t < T; t++) {
            const REAL *pr = p + (t * R + r) * B;
            for (long b0 = 0; b0 < Bv; b0 += VB)
                for (int j = 0; j < VB; j++) lane[j] += pr[b0 + j];
            for (long b = Bv; b < B; b++) sum += pr[b];
        }
        for (int j = 0; j < VB; j++) sum += lane[j];
        out[r] += sum;
    }
}

/* steps per chunk of the backward: its gate gradients and the inputs they multiply, about 256 KB */
static long SUFFIX(backward_chunk)(long H, long I, long B) {
    const long K = I > H ? I : H;
    return (1L << 18) / ((4 * H + K) * B * (long)sizeof(REAL)) + 1;
}

long SUFFIX(lstm_backward_scratch)(long H, long I, long B) {
    return 3 * H * B + SUFFIX(backward_chunk)(H, I, B) * 4 * H * B;
}

void SUFFIX(lstm_forward)(long H, long I, long T, long B, const REAL *restrict x, long xt, long xk,
                          const REAL *restrict wih, const REAL *restrict bias,
                          const REAL *restrict whh, REAL *restrict hs, REAL *restrict cs,
                          REAL *restrict tcs, REAL *restrict acts, REAL *restrict scratch,
                          const REAL *restrict mask, REAL *restrict dropped) {
    const long H4 = 4 * H, HB = H * B, H4B = H4 * B;
    REAL *restrict zero = scratch; /* (H, B) h_{-1} and c_{-1} */
    for (long q = 0; q < HB; q++) zero[q] = 0;
    for (long t = 0; t < T; t++) {
        const REAL *hp = t ? hs + (t - 1) * HB : zero, *cp = t ? cs + (t - 1) * HB : zero;
        const REAL *xs = x + t * xt;
        REAL *at = acts + t * H4B;
        long b0 = 0;
        for (; b0 + 2 * VB <= B; b0 += 2 * VB)
            SUFFIX(gates_pair)(H4, I, H, wih, xs + b0, xk, whh, hp + b0, B, bias, at + b0);
        for (; b0 < B; b0 += VB)
            SUFFIX(gates_block)(H4, I, H, wih, xs + b0, xk, whh, hp + b0, B, bias, at + b0, B - b0);
        REAL *ct = cs + t * HB, *tt = tcs + t * HB, *ht = hs + t * HB;
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
        if (mask) /* the next layer's input: dropout on h, while it is in L1 */
            for (long q = 0; q < HB; q++) dropped[t * HB + q] = ht[q] * mask[t * HB + q];
    }
}

void SUFFIX(lstm_backward)(long H, long I, long T, long B, const REAL *restrict x, long xt, long xk,
                           const REAL *restrict wih, const REAL *restrict whh,
                           const REAL *restrict dh, const REAL *restrict hs,
                           const REAL *restrict cs, const REAL *restrict tcs,
                           const REAL *restrict acts, REAL *restrict dx, REAL *restrict dwih,
                           REAL *restrict dbias, REAL *restrict dwhh, REAL *restrict scratch,
                           const REAL *restrict mask) {
    const long H4 = 4 * H, HB = H * B, H4B = H4 * B, IB = I * B;
    REAL *restrict dhr = scratch;  /* (H, B) gradient on h_t through step t+1's gates */
    REAL *restrict dcr = dhr + HB; /* (H, B) gradient on c_t through c_{t+1} */
    REAL *restrict zero = dcr + HB; /* (H, B) c_{-1} */
    REAL *restrict dpre = zero + HB; /* (chunk, 4H, B) the gates' pre-activation gradients */
    for (long q = 0; q < 3 * HB; q++) scratch[q] = 0;
    for (long q = 0; q < H4 * I; q++) dwih[q] = 0;
    for (long q = 0; q < H4 * H; q++) dwhh[q] = 0;
    for (long q = 0; q < H4; q++) dbias[q] = 0;
    const long chunk = SUFFIX(backward_chunk)(H, I, B);
    for (long t1 = T; t1 > 0; t1 -= chunk) { /* steps t0..t1-1, then their weight gradients */
        const long t0 = t1 > chunk ? t1 - chunk : 0;
        for (long t = t1 - 1; t >= t0; t--) {
            const REAL *at = acts + t * H4B, *tt = tcs + t * HB, *dt = dh + t * HB;
            const REAL *mt = mask ? mask + t * HB : 0;
            const REAL *cp = t ? cs + (t - 1) * HB : zero;
            REAL *pt = dpre + (t - t0) * H4B;
            for (long j = 0; j < H; j++) {
                const REAL *si = at + j * B, *sf = at + (H + j) * B, *sg = at + (2 * H + j) * B;
                const REAL *so = at + (3 * H + j) * B, *tc = tt + j * B, *cj = cp + j * B;
                const REAL *dj = dt + j * B;
                REAL *pi = pt + j * B, *pf = pt + (H + j) * B, *pg = pt + (2 * H + j) * B;
                REAL *po = pt + (3 * H + j) * B, *dhj = dhr + j * B, *dcj = dcr + j * B;
                if (mt) /* the outside gradient arrives on the dropped output */
                    for (long b = 0; b < B; b++) dhj[b] += dj[b] * mt[j * B + b];
                else
                    for (long b = 0; b < B; b++) dhj[b] += dj[b];
#pragma GCC ivdep
                for (long b = 0; b < B; b++) {
                    const REAL i = si[b], f = sf[b], gg = sg[b], o = so[b], th = tc[b];
                    const REAL d = dhj[b];
                    const REAL dc = dcj[b] + d * o * ((REAL)1 - th * th);
                    po[b] = d * th * o * ((REAL)1 - o);
                    pi[b] = dc * gg * i * ((REAL)1 - i);
                    pg[b] = dc * i * ((REAL)1 - gg * gg);
                    pf[b] = dc * cj[b] * f * ((REAL)1 - f);
                    dcj[b] = dc * f;
                }
            }
            long b0 = 0;
            for (; b0 + 2 * VB <= B; b0 += 2 * VB) {
                SUFFIX(back_pair)(H4, H, whh, pt + b0, B, dhr + b0);
                /* off the serial chain: overlaps the next step's wait */
                if (dx) SUFFIX(back_pair)(H4, I, wih, pt + b0, B, dx + t * IB + b0);
            }
            for (; b0 < B; b0 += VB) {
                SUFFIX(back_block)(H4, H, whh, pt + b0, B, dhr + b0, B - b0);
                if (dx) SUFFIX(back_block)(H4, I, wih, pt + b0, B, dx + t * IB + b0, B - b0);
            }
        }
        SUFFIX(weight_grad_add)(H4, I, t1 - t0, B, dpre, x + t0 * xt, xt, xk, dwih);
        const long ts = t0 ? t0 : 1; /* h_{t-1} exists from step 1 */
        if (t1 > ts)
            SUFFIX(weight_grad_add)(H4, H, t1 - ts, B, dpre + (ts - t0) * H4B, hs + (ts - 1) * HB, HB,
                                    B, dwhh);
        SUFFIX(bias_grad_add)(H4, t1 - t0, B, dpre, dbias);
    }
}

/* The output layer and the objective's sums, fused: for asset r and window b,
 *   s_t = tanh(z_t), z_t = bias[r] + sum_k w[r, k] h[k, b, t],
 *   a[r, b] = sum_t s_t ret_t,   s2[r, b] = sum_t (s_t ret_t)^2,
 * with h the last layer's output (H, B, T) and ret the returns each step's signal earns
 * (models.loss.carried_windows): the row segment src[r, starts[b] .. starts[b] + T) of the series'
 * (N, ld) carry, with ret_0 = 0, ret_after *= keep, then ret_at = value ((N, B) each). The returns
 * are not stored (the backward rebuilds them from the carry, which stays in cache); the signals
 * are, in sig (N, B, T) (their tanh took half the forward). Assets go four at a time, so each row
 * of h is read once per four. Scratch: 8 T values. */
static inline void SUFFIX(head_rows)(long R, long H, long T, const REAL *restrict w,
                                     const REAL *restrict bias, const REAL *restrict h, long M,
                                     REAL *restrict z) {
    /* z[i M + t] = tanh(bias[i] + sum_k w[i, k] h[k M + t]) for R = 4 rows, or 1 */
    REAL *restrict z0 = z, *restrict z1 = z + M, *restrict z2 = z + 2 * M, *restrict z3 = z + 3 * M;
    if (R == 4) { /* a vector of steps at a time, its four sums in registers across the H rows */
        typedef SUFFIX(vec) V;
        long t = 0;
        for (; t + VB <= T; t += VB) {
            V a0 = bias[0] + (V){0}, a1 = bias[1] + (V){0}, a2 = bias[2] + (V){0};
            V a3 = bias[3] + (V){0};
            for (long k = 0; k < H; k++) {
                const V x = SUFFIX(load)(h + k * M + t);
                a0 += w[k] * x, a1 += w[H + k] * x, a2 += w[2 * H + k] * x, a3 += w[3 * H + k] * x;
            }
            SUFFIX(store)(z0 + t, a0), SUFFIX(store)(z1 + t, a1);
            SUFFIX(store)(z2 + t, a2), SUFFIX(store)(z3 + t, a3);
        }
        for (; t < T; t++) {
            REAL a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3];
            for (long k = 0; k < H; k++) {
                const REAL x = h[k * M + t];
                a0 += w[k] * x, a1 += w[H + k] * x, a2 += w[2 * H + k] * x, a3 += w[3 * H + k] * x;
            }
            z0[t] = a0, z1[t] = a1, z2[t] = a2, z3[t] = a3;
        }
    } else {
        for (long t = 0; t < T; t++) z0[t] = bias[0];
        for (long k = 0; k < H; k++) {
            const REAL *hk = h + k * M, w0 = w[k];
            for (long t = 0; t < T; t++) z0[t] += w0 * hk[t];
        }
    }
    for (long i = 0; i < R; i++)
        for (long t = 0; t < T; t++) z[i * M + t] = SUFFIX(tanh_)(z[i * M + t]);
}

/* window b's returns of asset r (see above) into out (T) */
static inline void SUFFIX(carried_row)(long T, long r, long b, long B, const REAL *restrict src,
                                       long ld, const int64_t *restrict starts,
                                       const int64_t *restrict after, const REAL *restrict keep,
                                       const int64_t *restrict at, const REAL *restrict value,
                                       REAL *restrict out) {
    const REAL *row = src + r * ld + starts[b];
    const long q = r * B + b, j = after[q], i = at[q];
    for (long t = 0; t < T; t++) out[t] = row[t];
    out[0] = 0;
    if (j >= 0 && j < T) out[j] *= keep[q];
    if (i >= 0 && i < T) out[i] = value[q];
}

/* sum_t x[t] y[t] (y NULL: sum_t x[t]) in VB lanes, which the compiler vectorises (a single running
 * sum it may not reorder) */
static inline REAL SUFFIX(dot)(long T, const REAL *restrict x, const REAL *restrict y) {
    REAL lane[VB] = {0}, sum = 0;
    long t = 0;
    if (y)
        for (; t + VB <= T; t += VB)
            for (int j = 0; j < VB; j++) lane[j] += x[t + j] * y[t + j];
    else
        for (; t + VB <= T; t += VB)
            for (int j = 0; j < VB; j++) lane[j] += x[t + j];
    for (; t < T; t++) sum += y ? x[t] * y[t] : x[t];
    for (int j = 0; j < VB; j++) sum += lane[j];
    return sum;
}

void SUFFIX(head_forward)(long N, long H, long B, long T, const REAL *restrict h,
                          const REAL *restrict w, const REAL *restrict bias,
                          const REAL *restrict src, long ld, const int64_t *restrict starts,
                          const int64_t *restrict after, const REAL *restrict keep,
                          const int64_t *restrict at, const REAL *restrict value,
                          REAL *restrict a, REAL *restrict s2, REAL *restrict sig,
                          REAL *restrict scratch) {
    const long M = B * T;
    REAL *restrict sw = scratch, *restrict rt = scratch + T;
    for (long b = 0; b < B; b++)
        for (long r = 0; r < N;) {
            const long R = N - r >= 4 ? 4 : 1;
            SUFFIX(head_rows)(R, H, T, w + r * H, bias + r, h + b * T, M, sig + r * M + b * T);
            for (long i = 0; i < R; i++, r++) {
                const REAL *si = sig + r * M + b * T;
                SUFFIX(carried_row)(T, r, b, B, src, ld, starts, after, keep, at, value, rt);
                for (long t = 0; t < T; t++) sw[t] = si[t] * rt[t];
                a[r * B + b] = SUFFIX(dot)(T, sw, 0);
                s2[r * B + b] = SUFFIX(dot)(T, sw, sw);
            }
        }
}

/* head_backward's products for four assets and five rows k..k+4 of h over one window: dw's 20
 * sums in registers across the steps and dh's rows updated a vector at a time (dot products per
 * entry and a pass over dh per row read every operand once per multiply-add) */
__attribute__((noinline)) static void SUFFIX(head_back5)(long H, long T, long M,
                                                         const REAL *restrict w,
                                                         const REAL *restrict dz,
                                                         const REAL *restrict h, REAL *restrict dh,
                                                         REAL *restrict dw, long k) {
    typedef SUFFIX(vec) V;
    const REAL *d0 = dz, *d1 = dz + T, *d2 = dz + 2 * T, *d3 = dz + 3 * T;
    V a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a04 = {0}, a10 = {0}, a11 = {0}, a12 = {0};
    V a13 = {0}, a14 = {0}, a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a24 = {0}, a30 = {0};
    V a31 = {0}, a32 = {0}, a33 = {0}, a34 = {0};
    long t = 0;
#define HEAD_BACK_ROW(j)                                                                         \
    {                                                                                            \
        const V x = SUFFIX(load)(h + (k + j) * M + t);                                           \
        a0##j += e0 * x, a1##j += e1 * x, a2##j += e2 * x, a3##j += e3 * x;                      \
        REAL *o = dh + (k + j) * M + t;                                                          \
        const V g = (w[k + j] * e0 + w[H + k + j] * e1) + (w[2 * H + k + j] * e2 + w[3 * H + k + j] * e3); \
        SUFFIX(store)(o, SUFFIX(load)(o) + g);                                                   \
    }
    for (; t + VB <= T; t += VB) {
        const V e0 = SUFFIX(load)(d0 + t), e1 = SUFFIX(load)(d1 + t);
        const V e2 = SUFFIX(load)(d2 + t), e3 = SUFFIX(load)(d3 + t);
        HEAD_BACK_ROW(0) HEAD_BACK_ROW(1) HEAD_BACK_ROW(2) HEAD_BACK_ROW(3) HEAD_BACK_ROW(4)
    }
#undef HEAD_BACK_ROW
    const V acc[20] = {a00, a01, a02, a03, a04, a10, a11, a12, a13, a14,
                       a20, a21, a22, a23, a24, a30, a31, a32, a33, a34};
    for (int q = 0; q < 20; q++) {
        REAL sum = 0;
        for (int b = 0; b < VB; b++) sum += acc[q][b];
        dw[(q / 5) * H + k + q % 5] += sum;
    }
    for (; t < T; t++) /* the steps past the last full vector */
        for (long j = k; j < k + 5; j++) {
            const REAL x = h[j * M + t];
            dw[j] += d0[t] * x, dw[H + j] += d1[t] * x, dw[2 * H + j] += d2[t] * x;
            dw[3 * H + j] += d3[t] * x;
            dh[j * M + t] += (w[j] * d0[t] + w[H + j] * d1[t]) + (w[2 * H + j] * d2[t] + w[3 * H + j] * d3[t]);
        }
}

/* dh (H, B, T) = sum_r w[r, k] dz; dw (N, H), dbias (N) the weights' gradients, from ga and gs2
 * (N, B), the loss's gradients on a and s2. Scratch: 8 T values. */
void SUFFIX(head_backward)(long N, long H, long B, long T, const REAL *restrict h,
                           const REAL *restrict w, const REAL *restrict src, long ld, const int64_t *restrict starts,
                           const int64_t *restrict after, const REAL *restrict keep,
                           const int64_t *restrict at, const REAL *restrict value,
                           const REAL *restrict sig, const REAL *restrict ga,
                           const REAL *restrict gs2, REAL *restrict dh, REAL *restrict dw,
                           REAL *restrict dbias, REAL *restrict scratch) {
    const long M = B * T;
    REAL *restrict dz = scratch; /* (4, T): the gradient on z */
    REAL *restrict rt = scratch + 4 * T;
    for (long q = 0; q < N * H; q++) dw[q] = 0;
    for (long r = 0; r < N; r++) dbias[r] = 0;
    for (long q = 0; q < H * M; q++) dh[q] = 0;
    for (long b = 0; b < B; b++)
        for (long r = 0; r < N;) {
            const long R = N - r >= 4 ? 4 : 1;
            const REAL *wr = w + r * H, *hb = h + b * T;
            for (long i = 0; i < R; i++) {
                SUFFIX(carried_row)(T, r + i, b, B, src, ld, starts, after, keep, at, value, rt);
                const REAL g1 = ga[(r + i) * B + b], g2 = 2 * gs2[(r + i) * B + b];
                const REAL *si = sig + (r + i) * M + b * T;
                REAL *di = dz + i * T;
                for (long t = 0; t < T; t++) {
                    const REAL x = si[t], y = rt[t];
                    di[t] = (g1 + g2 * x * y) * y * ((REAL)1 - x * x);
                }
                dbias[r + i] += SUFFIX(dot)(T, di, 0);
            }
            const REAL *restrict d0 = dz, *restrict d1 = dz + T, *restrict d2 = dz + 2 * T;
            const REAL *restrict d3 = dz + 3 * T;
            long k = 0;
            if (R == 4)
                for (; k + 5 <= H; k += 5) SUFFIX(head_back5)(H, T, M, wr, dz, hb, dh + b * T, dw + r * H, k);
            for (; k < H; k++) {
                const REAL *hk = hb + k * M;
                REAL *restrict dk = dh + k * M + b * T;
                for (long i = 0; i < R; i++) dw[(r + i) * H + k] += SUFFIX(dot)(T, dz + i * T, hk);
                if (R == 4) {
                    const REAL w0 = wr[k], w1 = wr[H + k], w2 = wr[2 * H + k], w3 = wr[3 * H + k];
                    for (long t = 0; t < T; t++)
                        dk[t] += (w0 * d0[t] + w1 * d1[t]) + (w2 * d2[t] + w3 * d3[t]);
                } else {
                    const REAL w0 = wr[k];
                    for (long t = 0; t < T; t++) dk[t] += w0 * d0[t];
                }
            }
            r += R;
        }
}

/* out[i] = 1/keep with probability keep, else 0: dropout multipliers from a counter-based hash
 * (murmur3's 32-bit finaliser of the element's index, keyed twice by the seed), so every element
 * is independent of the others and the loop vectorises; torch.rand took 5.5 ns per element here. */
void SUFFIX(dropout_mask)(long n, uint64_t seed, double keep, REAL *restrict out) {
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    const uint32_t limit = (uint32_t)(keep * 16777216.0); /* keep in 24-bit fixed point */
    const REAL scale = (REAL)(1.0 / keep);
    for (long i = 0; i < n; i++) {
        uint32_t x = (uint32_t)i ^ k0;
        x ^= x >> 16, x *= 0x85ebca6bu, x ^= x >> 13, x *= 0xc2b2ae35u, x ^= x >> 16;
        x += k1;
        x ^= x >> 16, x *= 0x85ebca6bu, x ^= x >> 13, x *= 0xc2b2ae35u, x ^= x >> 16;
        out[i] = (x >> 8) < limit ? scale : (REAL)0;
    }
}

/* out[t, j, b] = x[(starts[b] + t) n + j]: windows of T rows of a row-major (rows, n) series,
 * gathered straight into the kernels' layout (T, n, B) (a (T, B, n) gather and a transposing copy
 * in torch took five times as long); assets outer, so the writes are sequential and the B rows a
 * step reads stay in L1 (windows outer took 1.8 times as long) */
void SUFFIX(gather_windows)(long n, long T, long B, const REAL *restrict x,
                            const int64_t *restrict starts, REAL *restrict out) {
    for (long t = 0; t < T; t++) {
        REAL *o = out + t * n * B;
        for (long j = 0; j < n; j++, o += B)
            for (long b = 0; b < B; b++) o[b] = x[(starts[b] + t) * n + j];
    }
}
