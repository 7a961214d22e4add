/* One LSTM layer's whole recurrence, input products included, as one call each way instead of a
 * dozen tensor operations per time step.
 *
 * At the model's widths (5-10 units, 32 windows) a step is a few hundred multiply-adds per window,
 * so the input-to-gate product runs inside the step too, while its inputs and gates are in L1: done
 * as one large matrix product outside, its transposes, its backward over time and its weight
 * gradient's reduction cost more than the recurrence itself.
 *
 * Layouts, all contiguous and row-major, time-major with windows (B) innermost, so each step
 * reads and writes contiguous blocks and every loop runs over B:
 *   x     (T, I, B)        the layer's input, at x[t xt + k xk + b]: contiguous (xt = I B, xk = B)
 *                          or, for raw inputs gathered asset-major, (I, T, B) (xt = B, xk = T B)
 *   wih   (4H, I), bias (4H), whh (4H, H): gates i, f, g, o as in nn.LSTM, bias = b_ih + b_hh
 *   hs    (T, H, B)        h_t;   cs: c_t;   tcs: tanh(c_t)
 *   acts  (T, 4H, B)       activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
 *   mask  (T, H, B)        dropout multipliers on the output (NULL: none): the forward also writes
 *                          dropped = h mask, and the backward's dh is the gradient on dropped
 *   dh    (T, H, B)        the loss's gradient on h_t from outside the recurrence
 *   dx    (T, I, B)        the gradient on x, contiguous (NULL: not wanted); dwih, dbias, dwhh: on the weights
 * Scratch is the caller's: H B values forward, lstm_backward_scratch(H, I, B) backward (its gate
 * gradients for one chunk of steps, whose weight gradients are taken while they are in L2).
 *
 * head_forward and head_backward: the output layer and the objective's per-window sums (see there);
 * dropout_mask: dropout multipliers; gather_windows: a series' windows in the layout above;
 * carry_arrays: a series' arrays for models.loss.carried_windows.
 *
 * float uses its own exponential (Cephes' expf polynomial, within 2 ulp over the clamped range)
 * written so the compiler vectorises it; double uses libm's exp.
 */
#include <math.h>
#include <stdint.h>

static inline float exp_f32(float x) {
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    x = x < -87.3365447504019f ? -87.3365447504019f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

static inline double exp_f64(double x) { return exp(x); }

#define REAL float
#define VB 16
#define SUFFIX(name) name##_f32
#define EXP exp_f32
#include "lstm_body.h"
#undef REAL
#undef SUFFIX
#undef EXP
#undef VB

#define REAL double
#define VB 8
#define SUFFIX(name) name##_f64
#define EXP exp_f64
#include "lstm_body.h"

/* models.loss.carry_arrays for a (rows, n) row-major series of returns r and mask m: per asset j
 * and row t, last (the last unmasked row <= t, -1: none), cum (unmasked rows <= t), next (the first
 * unmasked row >= t, rows: none), next_r (its return, 0: none) and carry (m[t-1] next_r[t], 0 at
 * t = 0), each written asset-major (n, rows). Eight assets at a time, so the reads of a row and the
 * eight output streams stay in cache whatever the series' size. */
void carry_arrays(long rows, long n, const double *restrict r, const uint8_t *restrict m,
                  double *restrict carry, double *restrict next_r, int64_t *restrict next,
                  int64_t *restrict last, int32_t *restrict cum) {
    for (long j0 = 0; j0 < n; j0 += 8) {
        const long w = n - j0 < 8 ? n - j0 : 8;
        int64_t l[8], u[8];
        int32_t c[8];
        double ur[8];
        for (long j = 0; j < w; j++) l[j] = -1, c[j] = 0, u[j] = rows, ur[j] = 0;
        for (long t = 0; t < rows; t++)
            for (long j = 0; j < w; j++) {
                const long q = (j0 + j) * rows + t;
                if (m[t * n + j0 + j]) l[j] = t, c[j]++;
                last[q] = l[j];
                cum[q] = c[j];
            }
        for (long t = rows - 1; t >= 0; t--)
            for (long j = 0; j < w; j++) {
                const long q = (j0 + j) * rows + t;
                if (m[t * n + j0 + j]) u[j] = t, ur[j] = r[t * n + j0 + j];
                next[q] = u[j];
                next_r[q] = ur[j];
                carry[q] = t && m[(t - 1) * n + j0 + j] ? ur[j] : 0;
            }
    }
}
