/* One LSTM layer's recurrence for G markets at once (each with its own hidden-to-gate weights), as
 * one call per layer and direction instead of a dozen tensor operations per time step.
 *
 * The input-to-gate products and biases come precomputed (one large matrix product over all time
 * steps, done by the caller), so only the serial part runs here: per time step and market a
 * (4H x H) by (H x B) product and the cell's elementwise arithmetic, fused while the step's gates
 * are in L1.
 *
 * Layouts, all contiguous and row-major, time-major with windows (B) innermost, so each step
 * reads and writes contiguous blocks and every loop runs over B:
 *   pre   (G, T, 4H, B)    gate pre-activations from the input, gates i, f, g, o as in nn.LSTM
 *   whh   (G, 4H, H)       hidden-to-gate weights
 *   hs    (G, T, H, B)     h_t;   cs: c_t;   tcs: tanh(c_t)
 *   acts  (G, T, 4H, B)    activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
 *   dh    (G, T, H, B)     the loss's gradient on h_t from outside the recurrence
 *   dpre  (G, T, 4H, B)    the gradient on pre
 *   dwhh  (G, 4H, H)       the gradient on whh
 * Scratch is the caller's: 3 H B + 4 H H VB values (VB: values of REAL in a vector register, 16).
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
