/* Fused DC-ASGD kernels for the parameter server (float32 and float64).
 *
 * One pass over a flat segment instead of the eight to ten passes that separate tensor
 * operations need. The arithmetic is the same, in the same order and with the same
 * roundings as hvd_dc.dc_math (separate multiply and add) and as torch.optim.SGD (a fused
 * multiply-add exactly where torch's add_(..., alpha=...) uses one), so the results are
 * bit-identical to the torch path. Built with -ffp-contract=off so that the compiler adds
 * no fused multiply-add of its own.
 *
 * Pointers arrive as integers (tensor.data_ptr()); the Python wrapper in hvd_dc/kernels.py
 * checks dtypes, sizes and contiguity before calling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { VARIANT_NONE = 0, VARIANT_CONSTANT = 1, VARIANT_ADAPTIVE = 2 };

typedef struct {
    int variant;
    double lambda0, ms_momentum, eps;
    /* SGD */
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize, first_step;
    /* Gap-Aware (hvd_dc/staleness.py): C_hat = C / gap_corr; damp only when gap_damp */
    double gap_corr;
    int gap_damp;
} params_t;

#define GAP_BETA 0.99

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_PATH 1
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define HAVE_AVX2_PATH 0
#define TARGET_AVX2
#endif
#define INLINE static inline __attribute__((always_inline))

/* One segment, element type T. VARIANT, STEP (0: write g_dc to out; 1: plain SGD step;
 * 2: SGD step with momentum; 3: with Nesterov momentum), COPY and GAP (0: no Gap-Aware;
 * 1: update its average C after the step; 2: also damp g_dc by the gap first) are
 * compile-time constants in every instantiation,
 * so each compiles to one straight, vectorised loop. FMA(a, b, c) = a * b + c, one rounding. */
#define DEFINE_TEMPLATE(T, FMA, SQRT, ABS)                                                       \
    INLINE void dc_loop_##T(int64_t n, const T *restrict g, T *restrict w, const T *restrict wb, \
                            T *restrict ms, T *restrict out, T *restrict buf, T *restrict copy, \
                            T *restrict gap, const params_t *p, const int VARIANT, const int STEP, \
                            const int COPY, const int GAP) {                                  \
        const T lam0 = (T)p->lambda0, m = (T)p->ms_momentum;                                \
        const T one_m = (T)(1.0 - p->ms_momentum), eps = (T)p->eps;                         \
        const T sign = p->maximize ? (T)-1 : (T)1, wd = (T)p->weight_decay;                 \
        const T mom = (T)p->momentum, one_damp = (T)(1.0 - p->dampening);                   \
        const T neg_lr = (T)(-p->lr);                                                       \
        const T corr = (T)p->gap_corr, beta = (T)GAP_BETA, one_beta = (T)(1.0 - GAP_BETA);   \
        for (int64_t i = 0; i < n; i++) {                                                   \
            const T gi = g[i], wi = w[i];                                                   \
            T gdc = gi;                                                                     \
            if (VARIANT != VARIANT_NONE) {                                                  \
                T lam_g;                                                                    \
                if (VARIANT == VARIANT_ADAPTIVE) {                                          \
                    T sq = gi * gi;                 /* (1 - m) * (g * g) */                 \
                    sq = sq * one_m;                                                        \
                    T msi = ms[i] * m;              /* (m * ms) + that */                   \
                    msi = msi + sq;                                                         \
                    ms[i] = msi;                                                            \
                    lam_g = (lam0 / SQRT(msi + eps)) * gi;                                  \
                } else {                                                                    \
                    lam_g = gi * lam0;                                                      \
                }                                                                           \
                lam_g = lam_g * gi;                 /* (lam * g) * g */                     \
                lam_g = lam_g * (wi - wb[i]);       /* ... * (w - w_bak) */                 \
                gdc = gi + lam_g;                                                           \
            }                                                                               \
            if (GAP == 2) {                          /* g_dc / max(1, |w - w_bak| / C_hat) */ \
                /* selects, not branches, so that the loop vectorises; G = 1 where C_hat = 0 */ \
                const T chat = gap[i] / corr;                                               \
                const T r = ABS(wi - wb[i]) / (chat != (T)0 ? chat : (T)1);                 \
                gdc = gdc / (chat != (T)0 ? (r < (T)1 ? (T)1 : r) : (T)1);                  \
            }                                                                               \
            if (STEP == 0) {                                                                \
                out[i] = gdc;                                                               \
                continue;                                                                   \
            }                                                                               \
            /* torch.optim.SGD, in its order */                                             \
            T d = gdc * sign;                                  /* maximize: -grad */        \
            d = FMA(wd, wi, d);                                /* grad.add(param, alpha=wd) */ \
            if (STEP >= 2) {                                                                \
                /* buf.mul_(momentum).add_(grad, alpha=1 - dampening); the first step, which */ \
                /* clones grad into a new buffer, is left to torch.optim.SGD itself          */ \
                const T b = FMA(one_damp, d, buf[i] * mom);                                 \
                buf[i] = b;                                                                 \
                d = STEP == 3 ? FMA(mom, b, d) : b;            /* nesterov: grad.add(buf, alpha=mom) */ \
            }                                                                               \
            const T wn = FMA(neg_lr, d, wi);                   /* param.add_(grad, alpha=-lr) */ \
            w[i] = wn;                                                                      \
            if (COPY) copy[i] = wn;                                                         \
            if (GAP) gap[i] = gap[i] * beta + ABS(wi - wn) * one_beta;        \
        }                                                                                   \
    }

DEFINE_TEMPLATE(float, fmaf, sqrtf, fabsf)
DEFINE_TEMPLATE(double, fma, sqrt, fabs)

/* DANA (hvd_dc/async_momentum.py), one push of one worker on one segment, in the order the
 * torch path evaluates it (separate multiplies and adds, as there: no FMA):
 *   a = w - S*c; g_dc compensated from w_bak to a; d = -g_dc (maximize); d = d + a*wd;
 *   S = S - v; v = d (FIRST) | v*mu + d*(1 - dampening); S = S + v; w = w - v*lr;
 *   copy (the reply, w_bak) = w - S*c.
 * VARIANT, FIRST, WD and COPY are compile-time constants in every instantiation. */
#define DEFINE_DANA(T, SQRT, ABS)                                                                \
    INLINE void dana_loop_##T(int64_t n, const T *restrict g, T *restrict w, const T *restrict wb, \
                              T *restrict ms, T *restrict v, T *restrict s, T *restrict copy, \
                              T *restrict gap, const params_t *p, const int VARIANT, const int FIRST, \
                              const int WD, const int COPY, const int GAP) {                \
        const T lam0 = (T)p->lambda0, m = (T)p->ms_momentum;                                \
        const T one_m = (T)(1.0 - p->ms_momentum), eps = (T)p->eps;                         \
        const T sign = p->maximize ? (T)-1 : (T)1, wd = (T)p->weight_decay;                 \
        const T mom = (T)p->momentum, one_damp = (T)(1.0 - p->dampening);                   \
        const T lr = (T)p->lr, c = (T)(p->lr * p->momentum);                                \
        const T corr = (T)p->gap_corr, beta = (T)GAP_BETA, one_beta = (T)(1.0 - GAP_BETA);   \
        for (int64_t i = 0; i < n; i++) {                                                   \
            const T gi = g[i], wi = w[i];                                                   \
            T si = s[i];                                                                    \
            const T ai = wi - si * c;                          /* the look-ahead now */     \
            T d = gi;                                                                       \
            if (VARIANT != VARIANT_NONE) {                                                  \
                T lam_g;                                                                    \
                if (VARIANT == VARIANT_ADAPTIVE) {                                          \
                    T sq = gi * gi;                                                         \
                    sq = sq * one_m;                                                        \
                    T msi = ms[i] * m;                                                      \
                    msi = msi + sq;                                                         \
                    ms[i] = msi;                                                            \
                    lam_g = (lam0 / SQRT(msi + eps)) * gi;                                  \
                } else {                                                                    \
                    lam_g = gi * lam0;                                                      \
                }                                                                           \
                lam_g = lam_g * gi;                                                         \
                lam_g = lam_g * (ai - wb[i]);                                               \
                d = gi + lam_g;                                                             \
            }                                                                               \
            if (GAP == 2) {                         /* the gap from the look-ahead */      \
                const T chat = gap[i] / corr;                                               \
                const T r = ABS(ai - wb[i]) / (chat != (T)0 ? chat : (T)1);                 \
                d = d / (chat != (T)0 ? (r < (T)1 ? (T)1 : r) : (T)1);                      \
            }                                                                               \
            d = d * sign;                                                                   \
            if (WD) d = d + ai * wd;                                                        \
            T vi = v[i];                                                                    \
            si = si - vi;                                                                   \
            vi = FIRST ? d : vi * mom + d * one_damp;                                       \
            si = si + vi;                                                                   \
            v[i] = vi;                                                                      \
            s[i] = si;                                                                      \
            const T wn = wi - vi * lr;                                                      \
            w[i] = wn;                                                                      \
            if (COPY) copy[i] = wn - si * c;                                                \
            if (GAP) gap[i] = gap[i] * beta + ABS(wi - wn) * one_beta;        \
        }                                                                                   \
    }

DEFINE_DANA(float, sqrtf, fabsf)
DEFINE_DANA(double, sqrt, fabs)

/* run(): dispatch the runtime flags to constant instantiations */
#define INSTANCES(T, SUFFIX, TARGET)                                                        \
    TARGET static void run_##SUFFIX(int64_t n, const T *g, T *w, const T *wb, T *ms, T *out, T *buf, \
                                    T *copy, T *gap, const params_t *p, int step) {         \
        const int gap_mode = gap == NULL ? 0 : (p->gap_damp ? 2 : 1);  /* track, then damp */ \
        switch (p->variant * 24 + step * 6 + (copy != NULL) * 3 + gap_mode) {              \
        case 0: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 0, 0, 0); break; \
        case 1: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 0, 0, 1); break; \
        case 2: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 0, 0, 2); break; \
        case 3: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 0, 1, 0); break; \
        case 4: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 0, 1, 1); break; \
        case 5: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 0, 1, 2); break; \
        case 6: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 1, 0, 0); break; \
        case 7: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 1, 0, 1); break; \
        case 8: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 1, 0, 2); break; \
        case 9: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 1, 1, 0); break; \
        case 10: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 1, 1, 1); break; \
        case 11: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 1, 1, 2); break; \
        case 12: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 2, 0, 0); break; \
        case 13: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 2, 0, 1); break; \
        case 14: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 2, 0, 2); break; \
        case 15: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 2, 1, 0); break; \
        case 16: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 2, 1, 1); break; \
        case 17: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 2, 1, 2); break; \
        case 18: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 3, 0, 0); break; \
        case 19: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 3, 0, 1); break; \
        case 20: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 3, 0, 2); break; \
        case 21: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 3, 1, 0); break; \
        case 22: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 3, 1, 1); break; \
        case 23: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 0, 3, 1, 2); break; \
        case 24: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 0, 0, 0); break; \
        case 25: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 0, 0, 1); break; \
        case 26: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 0, 0, 2); break; \
        case 27: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 0, 1, 0); break; \
        case 28: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 0, 1, 1); break; \
        case 29: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 0, 1, 2); break; \
        case 30: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 1, 0, 0); break; \
        case 31: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 1, 0, 1); break; \
        case 32: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 1, 0, 2); break; \
        case 33: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 1, 1, 0); break; \
        case 34: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 1, 1, 1); break; \
        case 35: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 1, 1, 2); break; \
        case 36: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 2, 0, 0); break; \
        case 37: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 2, 0, 1); break; \
        case 38: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 2, 0, 2); break; \
        case 39: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 2, 1, 0); break; \
        case 40: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 2, 1, 1); break; \
        case 41: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 2, 1, 2); break; \
        case 42: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 3, 0, 0); break; \
        case 43: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 3, 0, 1); break; \
        case 44: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 3, 0, 2); break; \
        case 45: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 3, 1, 0); break; \
        case 46: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 3, 1, 1); break; \
        case 47: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 1, 3, 1, 2); break; \
        case 48: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 0, 0, 0); break; \
        case 49: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 0, 0, 1); break; \
        case 50: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 0, 0, 2); break; \
        case 51: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 0, 1, 0); break; \
        case 52: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 0, 1, 1); break; \
        case 53: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 0, 1, 2); break; \
        case 54: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 1, 0, 0); break; \
        case 55: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 1, 0, 1); break; \
        case 56: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 1, 0, 2); break; \
        case 57: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 1, 1, 0); break; \
        case 58: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 1, 1, 1); break; \
        case 59: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 1, 1, 2); break; \
        case 60: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 2, 0, 0); break; \
        case 61: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 2, 0, 1); break; \
        case 62: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 2, 0, 2); break; \
        case 63: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 2, 1, 0); break; \
        case 64: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 2, 1, 1); break; \
        case 65: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 2, 1, 2); break; \
        case 66: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 3, 0, 0); break; \
        case 67: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 3, 0, 1); break; \
        case 68: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 3, 0, 2); break; \
        case 69: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 3, 1, 0); break; \
        case 70: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 3, 1, 1); break; \
        case 71: dc_loop_##T(n, g, w, wb, ms, out, buf, copy, gap, p, 2, 3, 1, 2); break; \
        }                                                                                   \
    }

INSTANCES(float, f32_base, )
INSTANCES(double, f64_base, )
#if HAVE_AVX2_PATH
INSTANCES(float, f32_avx2, TARGET_AVX2)
INSTANCES(double, f64_avx2, TARGET_AVX2)
#endif

#define DANA_INSTANCES(T, SUFFIX, TARGET)                                                   \
    TARGET static void dana_##SUFFIX(int64_t n, const T *g, T *w, const T *wb, T *ms, T *v, T *s, T *copy, \
                                     T *gap, const params_t *p, int first, int wd) {        \
        const int gap_mode = gap == NULL ? 0 : (p->gap_damp ? 2 : 1);                      \
        switch (p->variant * 24 + first * 12 + wd * 6 + (copy != NULL) * 3 + gap_mode) {   \
        case 0: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 0, 0, 0); break; \
        case 1: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 0, 0, 1); break; \
        case 2: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 0, 0, 2); break; \
        case 3: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 0, 1, 0); break; \
        case 4: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 0, 1, 1); break; \
        case 5: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 0, 1, 2); break; \
        case 6: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 1, 0, 0); break; \
        case 7: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 1, 0, 1); break; \
        case 8: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 1, 0, 2); break; \
        case 9: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 1, 1, 0); break; \
        case 10: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 1, 1, 1); break; \
        case 11: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 0, 1, 1, 2); break; \
        case 12: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 0, 0, 0); break; \
        case 13: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 0, 0, 1); break; \
        case 14: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 0, 0, 2); break; \
        case 15: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 0, 1, 0); break; \
        case 16: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 0, 1, 1); break; \
        case 17: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 0, 1, 2); break; \
        case 18: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 1, 0, 0); break; \
        case 19: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 1, 0, 1); break; \
        case 20: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 1, 0, 2); break; \
        case 21: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 1, 1, 0); break; \
        case 22: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 1, 1, 1); break; \
        case 23: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 0, 1, 1, 1, 2); break; \
        case 24: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 0, 0, 0); break; \
        case 25: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 0, 0, 1); break; \
        case 26: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 0, 0, 2); break; \
        case 27: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 0, 1, 0); break; \
        case 28: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 0, 1, 1); break; \
        case 29: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 0, 1, 2); break; \
        case 30: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 1, 0, 0); break; \
        case 31: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 1, 0, 1); break; \
        case 32: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 1, 0, 2); break; \
        case 33: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 1, 1, 0); break; \
        case 34: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 1, 1, 1); break; \
        case 35: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 0, 1, 1, 2); break; \
        case 36: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 0, 0, 0); break; \
        case 37: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 0, 0, 1); break; \
        case 38: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 0, 0, 2); break; \
        case 39: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 0, 1, 0); break; \
        case 40: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 0, 1, 1); break; \
        case 41: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 0, 1, 2); break; \
        case 42: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 1, 0, 0); break; \
        case 43: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 1, 0, 1); break; \
        case 44: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 1, 0, 2); break; \
        case 45: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 1, 1, 0); break; \
        case 46: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 1, 1, 1); break; \
        case 47: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 1, 1, 1, 1, 2); break; \
        case 48: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 0, 0, 0); break; \
        case 49: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 0, 0, 1); break; \
        case 50: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 0, 0, 2); break; \
        case 51: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 0, 1, 0); break; \
        case 52: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 0, 1, 1); break; \
        case 53: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 0, 1, 2); break; \
        case 54: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 1, 0, 0); break; \
        case 55: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 1, 0, 1); break; \
        case 56: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 1, 0, 2); break; \
        case 57: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 1, 1, 0); break; \
        case 58: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 1, 1, 1); break; \
        case 59: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 0, 1, 1, 2); break; \
        case 60: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 0, 0, 0); break; \
        case 61: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 0, 0, 1); break; \
        case 62: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 0, 0, 2); break; \
        case 63: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 0, 1, 0); break; \
        case 64: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 0, 1, 1); break; \
        case 65: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 0, 1, 2); break; \
        case 66: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 1, 0, 0); break; \
        case 67: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 1, 0, 1); break; \
        case 68: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 1, 0, 2); break; \
        case 69: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 1, 1, 0); break; \
        case 70: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 1, 1, 1); break; \
        case 71: dana_loop_##T(n, g, w, wb, ms, v, s, copy, gap, p, 2, 1, 1, 1, 2); break; \
        }                                                                                   \
    }

DANA_INSTANCES(float, f32_base, )
DANA_INSTANCES(double, f64_base, )
#if HAVE_AVX2_PATH
DANA_INSTANCES(float, f32_avx2, TARGET_AVX2)
DANA_INSTANCES(double, f64_avx2, TARGET_AVX2)
#endif

static int use_avx2(void) {
#if HAVE_AVX2_PATH
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
#else
    return 0;
#endif
}

/* all_finite: one read pass, no allocation; 1 if every element is finite */
#define DEFINE_FINITE(T, UT, EXPMASK, SUFFIX)                                               \
    static int all_finite_##SUFFIX(int64_t n, const T *x) {                                 \
        const UT *u = (const UT *)x;                                                        \
        UT bad = 0;                                                                         \
        for (int64_t i = 0; i < n; i++) bad |= (UT)((u[i] & EXPMASK) == EXPMASK);           \
        return bad == 0;                                                                    \
    }
DEFINE_FINITE(float, uint32_t, 0x7f800000u, f32)
DEFINE_FINITE(double, uint64_t, 0x7ff0000000000000ull, f64)

static PyObject *py_all_finite(PyObject *self, PyObject *args) {
    unsigned long long ptr;
    long long n;
    int dbl;
    if (!PyArg_ParseTuple(args, "KLp", &ptr, &n, &dbl)) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = dbl ? all_finite_f64(n, (const double *)(uintptr_t)ptr) : all_finite_f32(n, (const float *)(uintptr_t)ptr);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

static void run(int dbl, int64_t n, uintptr_t g, uintptr_t w, uintptr_t wb, uintptr_t ms, uintptr_t out,
                uintptr_t buf, uintptr_t copy, uintptr_t gap, const params_t *p, int step) {
#if HAVE_AVX2_PATH
    if (use_avx2()) {
        if (dbl) run_f64_avx2(n, (const double *)g, (double *)w, (const double *)wb, (double *)ms, (double *)out, (double *)buf, (double *)copy, (double *)gap, p, step);
        else run_f32_avx2(n, (const float *)g, (float *)w, (const float *)wb, (float *)ms, (float *)out, (float *)buf, (float *)copy, (float *)gap, p, step);
        return;
    }
#endif
    if (dbl) run_f64_base(n, (const double *)g, (double *)w, (const double *)wb, (double *)ms, (double *)out, (double *)buf, (double *)copy, (double *)gap, p, step);
    else run_f32_base(n, (const float *)g, (float *)w, (const float *)wb, (float *)ms, (float *)out, (float *)buf, (float *)copy, (float *)gap, p, step);
}

/* compensate(dbl, n, g, w, wb, ms, out, variant, lambda0, ms_momentum, eps) */
static PyObject *py_compensate(PyObject *self, PyObject *args) {
    int dbl;
    long long n;
    unsigned long long g, w, wb, ms, out;
    params_t p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "pLKKKKKiddd", &dbl, &n, &g, &w, &wb, &ms, &out, &p.variant, &p.lambda0,
                          &p.ms_momentum, &p.eps))
        return NULL;
    if (p.variant < 0 || p.variant > 2) return PyErr_Format(PyExc_ValueError, "bad variant %d", p.variant);
    Py_BEGIN_ALLOW_THREADS
    run(dbl, n, g, w, wb, ms, out, 0, 0, 0, &p, 0);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* sgd(dbl, n, g, w, wb, ms, buf, copy, gap, variant, lambda0, ms_momentum, eps,
       lr, momentum, dampening, weight_decay, nesterov, maximize, first_step, gap_corr, gap_damp) */
static PyObject *py_sgd(PyObject *self, PyObject *args) {
    int dbl;
    long long n;
    unsigned long long g, w, wb, ms, buf, copy, gap;
    params_t p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "pLKKKKKKKiddddddd" "pppdp", &dbl, &n, &g, &w, &wb, &ms, &buf, &copy, &gap,
                          &p.variant, &p.lambda0, &p.ms_momentum, &p.eps, &p.lr, &p.momentum, &p.dampening,
                          &p.weight_decay, &p.nesterov, &p.maximize, &p.first_step, &p.gap_corr, &p.gap_damp))
        return NULL;
    if (p.variant < 0 || p.variant > 2) return PyErr_Format(PyExc_ValueError, "bad variant %d", p.variant);
    if (p.first_step) return PyErr_Format(PyExc_ValueError, "the first momentum step is torch.optim.SGD's");
    int step = p.momentum == 0 ? 1 : (p.nesterov ? 3 : 2);
    Py_BEGIN_ALLOW_THREADS
    run(dbl, n, g, w, wb, ms, 0, buf, copy, gap, &p, step);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* dana(dbl, n, g, w, wb, ms, v, s, copy, gap, variant, lambda0, ms_momentum, eps,
        lr, momentum, dampening, weight_decay, maximize, first, gap_corr, gap_damp) */
static PyObject *py_dana(PyObject *self, PyObject *args) {
    int dbl, first;
    long long n;
    unsigned long long g, w, wb, ms, v, s, copy, gap;
    params_t p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "pLKKKKKKKKidddddddppdp", &dbl, &n, &g, &w, &wb, &ms, &v, &s, &copy, &gap,
                          &p.variant, &p.lambda0, &p.ms_momentum, &p.eps, &p.lr, &p.momentum, &p.dampening,
                          &p.weight_decay, &p.maximize, &first, &p.gap_corr, &p.gap_damp))
        return NULL;
    if (p.variant < 0 || p.variant > 2) return PyErr_Format(PyExc_ValueError, "bad variant %d", p.variant);
    const int wd = p.weight_decay != 0;
    Py_BEGIN_ALLOW_THREADS
#if HAVE_AVX2_PATH
    if (use_avx2()) {
        if (dbl) dana_f64_avx2(n, (const double *)(uintptr_t)g, (double *)(uintptr_t)w, (const double *)(uintptr_t)wb,
                               (double *)(uintptr_t)ms, (double *)(uintptr_t)v, (double *)(uintptr_t)s,
                               (double *)(uintptr_t)copy, (double *)(uintptr_t)gap, &p, first, wd);
        else dana_f32_avx2(n, (const float *)(uintptr_t)g, (float *)(uintptr_t)w, (const float *)(uintptr_t)wb,
                           (float *)(uintptr_t)ms, (float *)(uintptr_t)v, (float *)(uintptr_t)s,
                           (float *)(uintptr_t)copy, (float *)(uintptr_t)gap, &p, first, wd);
    } else
#endif
    if (dbl) dana_f64_base(n, (const double *)(uintptr_t)g, (double *)(uintptr_t)w, (const double *)(uintptr_t)wb,
                           (double *)(uintptr_t)ms, (double *)(uintptr_t)v, (double *)(uintptr_t)s,
                           (double *)(uintptr_t)copy, (double *)(uintptr_t)gap, &p, first, wd);
    else dana_f32_base(n, (const float *)(uintptr_t)g, (float *)(uintptr_t)w, (const float *)(uintptr_t)wb,
                       (float *)(uintptr_t)ms, (float *)(uintptr_t)v, (float *)(uintptr_t)s, (float *)(uintptr_t)copy,
                       (float *)(uintptr_t)gap, &p, first, wd);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_simd(PyObject *self, PyObject *noargs) { return PyUnicode_FromString(use_avx2() ? "avx2+fma" : "baseline"); }

static PyMethodDef methods[] = {
    {"all_finite", py_all_finite, METH_VARARGS, "all_finite(ptr, n, is_double) -> bool"},
    {"compensate", py_compensate, METH_VARARGS, "fused DC compensation into out"},
    {"sgd", py_sgd, METH_VARARGS, "fused DC compensation + torch.optim.SGD step (+ optional copy)"},
    {"dana", py_dana, METH_VARARGS, "fused DC compensation to the look-ahead + DANA's step (+ optional reply)"},
    {"simd", py_simd, METH_NOARGS, "which code path runs: 'avx2+fma' or 'baseline'"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Fused DC-ASGD server kernels.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
