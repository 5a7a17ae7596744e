// models/kernels/meal_ops.cu compiled as C++ (emulate.h) and every kernel checked against
// its definition, written here as plain loops: the gather/scatter of the convolution
// columns, the layout swap, BatchNorm statistics, affine and gradients (two-pass f64
// formulas), the max-pool's first-maximum rule (ties, NaN) and its gradient, and the SGD
// updates. The elementwise kernels run on 3 blocks of 32 threads, fewer threads than
// elements, so their grid-stride loops are exercised; the reductions on 256 threads
// per channel block as on the GPU. Run by models/tests/kernels_on_cpu.rs; exit status
// 1 on any mismatch.
#include "emulate.h"

#include "../../kernels/meal_ops.cu"

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

static int checks = 0, failures = 0;
static std::mt19937 rng(7);

static std::vector<float> randn(size_t n, float scale = 1.f, float offset = 0.f) {
    std::normal_distribution<float> d(0.f, 1.f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng) * scale + offset;
    return v;
}

// |got - want| <= tol * max(1, max|want|), NaN only where the other is NaN.
template <class T>
static void expect(const std::string& what, const std::vector<T>& got,
                   const std::vector<T>& want, double tol) {
    ++checks;
    double scale = 1.0, worst = 0.0;
    for (auto w : want)
        if (!std::isnan((double)w)) scale = std::max(scale, std::fabs((double)w));
    size_t bad = got.size() == want.size() ? got.size() : 0;
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
        double g = got[i], w = want[i];
        if (std::isnan(g) || std::isnan(w)) {
            if (!(std::isnan(g) && std::isnan(w))) bad = i;
            continue;
        }
        double d = std::fabs(g - w);
        worst = std::max(worst, d);
        if (d > tol * scale && bad == got.size()) bad = i;
    }
    if (bad != got.size() || got.size() != want.size()) {
        ++failures;
        printf("FAIL %s: at %zu got %g want %g (sizes %zu/%zu, tolerance %g x %g)\n", what.c_str(),
               bad, bad < got.size() ? (double)got[bad] : 0.0,
               bad < want.size() ? (double)want[bad] : 0.0, got.size(), want.size(), tol, scale);
    } else {
        printf("ok   %s (worst %.1e)\n", what.c_str(), worst);
    }
}

struct Geom {
    int nb, c, h, w, k, s, p;
    int ho() const { return (h + 2 * p - k) / s + 1; }
    int wo() const { return (w + 2 * p - k) / s + 1; }
    std::string name() const {
        char b[96];
        snprintf(b, sizeof b, "%dx%dx%dx%d k%d s%d p%d", nb, c, h, w, k, s, p);
        return b;
    }
};

static std::vector<float> widen(const std::vector<__nv_bfloat16>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
    return out;
}

static void check_cols(const Geom& g) {
    size_t rows = (size_t)g.c * g.k * g.k, P = (size_t)g.ho() * g.wo(), ncol = g.nb * P;
    size_t nx = (size_t)g.nb * g.c * g.h * g.w;
    auto x = randn(nx);
    std::vector<float> cols(rows * ncol, -7.f), want(rows * ncol), dref(nx, 0.f);
    launch(3, 32, [&] {
        meal_im2col(x.data(), cols.data(), g.nb, g.c, g.h, g.w, g.k, g.s, g.p, g.ho(), g.wo());
    });
    auto y = randn(rows * ncol);
    for (int ch = 0; ch < g.c; ++ch)
        for (int ky = 0; ky < g.k; ++ky)
            for (int kx = 0; kx < g.k; ++kx)
                for (int img = 0; img < g.nb; ++img)
                    for (int oy = 0; oy < g.ho(); ++oy)
                        for (int ox = 0; ox < g.wo(); ++ox) {
                            size_t row = ((size_t)ch * g.k + ky) * g.k + kx;
                            size_t at = row * ncol + img * P + (size_t)oy * g.wo() + ox;
                            int iy = oy * g.s - g.p + ky, ix = ox * g.s - g.p + kx;
                            bool in = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
                            size_t xi = (((size_t)img * g.c + ch) * g.h + iy) * g.w + ix;
                            want[at] = in ? x[xi] : 0.f;
                            if (in) dref[xi] += y[at];  // the scatter-add adjoint
                        }
    expect("im2col " + g.name(), cols, want, 0.0);
    // the bf16 instantiation: the same copy of the rounded input
    std::vector<__nv_bfloat16> xb(nx), colsb(rows * ncol, __nv_bfloat16{0x7fc0});
    for (size_t i = 0; i < nx; ++i) xb[i] = __float2bfloat16(x[i]);
    launch(3, 32, [&] {
        meal_im2col_bf16(xb.data(), colsb.data(), g.nb, g.c, g.h, g.w, g.k, g.s, g.p, g.ho(),
                         g.wo());
    });
    std::vector<float> wantb(rows * ncol);
    for (size_t i = 0; i < wantb.size(); ++i)
        wantb[i] = __bfloat162float(__float2bfloat16(want[i]));
    expect("im2col bf16 " + g.name(), widen(colsb), wantb, 0.0);
    std::vector<float> dx(nx, -7.f);
    launch(3, 32, [&] {
        meal_col2im(y.data(), dx.data(), g.nb, g.c, g.h, g.w, g.k, g.s, g.p, g.ho(), g.wo());
    });
    expect("col2im " + g.name(), dx, dref, 1e-6);
    // bf16 (mixed-precision training): the rounded entries summed in f32 in the kernel's
    // (ky, kx) order, rounded once
    std::vector<__nv_bfloat16> yb(rows * ncol), dxb(nx, __nv_bfloat16{0x7fc0});
    for (size_t i = 0; i < yb.size(); ++i) yb[i] = __float2bfloat16(y[i]);
    launch(3, 32, [&] {
        meal_col2im_bf16(yb.data(), dxb.data(), g.nb, g.c, g.h, g.w, g.k, g.s, g.p, g.ho(), g.wo());
    });
    std::vector<float> sumb(nx, 0.f);
    for (int ch = 0; ch < g.c; ++ch)
        for (int ky = 0; ky < g.k; ++ky)
            for (int kx = 0; kx < g.k; ++kx)
                for (int img = 0; img < g.nb; ++img)
                    for (int oy = 0; oy < g.ho(); ++oy)
                        for (int ox = 0; ox < g.wo(); ++ox) {
                            int iy = oy * g.s - g.p + ky, ix = ox * g.s - g.p + kx;
                            if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                            size_t row = ((size_t)ch * g.k + ky) * g.k + kx;
                            size_t at = row * ncol + img * P + (size_t)oy * g.wo() + ox;
                            sumb[(((size_t)img * g.c + ch) * g.h + iy) * g.w + ix] +=
                                __bfloat162float(yb[at]);
                        }
    for (auto& v : sumb) v = __bfloat162float(__float2bfloat16(v));
    expect("col2im bf16 " + g.name(), widen(dxb), sumb, 0.0);
}

// f32 -> bf16 of a mixed-precision weight gradient: the emulated rounding, element by
// element, over a grid-stride launch.
static void check_to_bf16() {
    size_t n = 300;
    auto x = randn(n, 10.f);
    x[4] = NAN;
    std::vector<__nv_bfloat16> y(n, __nv_bfloat16{0x1234});
    launch(3, 32, [&] { meal_to_bf16(x.data(), y.data(), n); });
    std::vector<float> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = __bfloat162float(__float2bfloat16(x[i]));
    expect("to_bf16", widen(y), want, 0.0);
}

// Two-pass f64 mean and biased variance per channel of NCHW x [b, c, hw].
static void bn_stats_ref(const std::vector<float>& x, int b, int c, int hw,
                         std::vector<double>& mref, std::vector<double>& vref) {
    double m = (double)b * hw;
    auto at = [&](int i, int ch, int q) { return ((size_t)i * c + ch) * hw + q; };
    for (int ch = 0; ch < c; ++ch) {
        double s = 0, s2 = 0;
        for (int i = 0; i < b; ++i)
            for (int q = 0; q < hw; ++q) s += x[at(i, ch, q)];
        mref[ch] = s / m;
        for (int i = 0; i < b; ++i)
            for (int q = 0; q < hw; ++q)
                s2 += (x[at(i, ch, q)] - mref[ch]) * (x[at(i, ch, q)] - mref[ch]);
        vref[ch] = s2 / m;
    }
}

// The train BatchNorm's backward, [dx..., dgamma..., dbeta...]: dx = gamma*inv*(g -
// mean(g) - xhat*mean(g*xhat)), dgamma = sum(g*xhat), dbeta = sum(g), with g = dy gated
// by the fused ReLU (x*scale + shift > 0), in f64 from the two-pass statistics.
static std::vector<float> bn_backward_ref(const std::vector<float>& x, const std::vector<float>& dy,
                                          const std::vector<double>& mref,
                                          const std::vector<double>& vref,
                                          const std::vector<float>& gamma,
                                          const std::vector<float>& scale,
                                          const std::vector<float>& shift, int relu, double eps,
                                          int b, int c, int hw) {
    size_t n = (size_t)b * c * hw;
    double m = (double)b * hw;
    auto at = [&](int i, int ch, int q) { return ((size_t)i * c + ch) * hw + q; };
    std::vector<float> oref(n + 2 * c);
    for (int ch = 0; ch < c; ++ch) {
        double inv = 1.0 / std::sqrt(vref[ch] + eps), sg = 0, sgx = 0;
        auto g = [&](size_t t) {
            return relu && !(x[t] * scale[ch] + shift[ch] > 0.f) ? 0.0 : (double)dy[t];
        };
        for (int i = 0; i < b; ++i)
            for (int q = 0; q < hw; ++q) {
                size_t t = at(i, ch, q);
                sg += g(t);
                sgx += g(t) * (x[t] - mref[ch]) * inv;
            }
        for (int i = 0; i < b; ++i)
            for (int q = 0; q < hw; ++q) {
                size_t t = at(i, ch, q);
                double xhat = (x[t] - mref[ch]) * inv;
                oref[t] = (float)(gamma[ch] * inv * (g(t) - sg / m - xhat * sgx / m));
            }
        oref[n + ch] = (float)sgx;
        oref[n + c + ch] = (float)sg;
    }
    return oref;
}

// Train BatchNorm over bf16 activations (mixed precision): statistics of the widened
// values in f64, the affine rounded once, and the backward's dx (bf16) and dgamma, dbeta
// (f32) against the two-pass formulas over the widened values.
static void check_bn_bf16(int b, int c, int hw, float offset, int relu, int splits) {
    size_t n = (size_t)b * c * hw;
    double eps = 1e-5;
    auto xf = randn(n, 1.f, offset), dyf = randn(n), gamma = randn(c, .5f, 1.f), beta = randn(c, .5f);
    std::vector<__nv_bfloat16> x(n), dy(n);
    for (size_t i = 0; i < n; ++i) {
        x[i] = __float2bfloat16(xf[i]);
        dy[i] = __float2bfloat16(dyf[i]);
    }
    auto xv = widen(x), dv = widen(dy);
    std::string tag = " bf16 relu=" + std::to_string(relu) + " offset=" +
                      std::to_string((int)offset) + " splits=" + std::to_string(splits);
    std::vector<double> mean(c, -7), var(c, -7), mref(c), vref(c), part(2 * c * splits, -7);
    launch(c * splits, BN_THREADS,
           [&] { meal_bn_stats_bf16(x.data(), part.data(), b, c, hw, splits); });
    launch(1, 32, [&] {
        meal_bn_stats_finish_bf16(x.data(), part.data(), mean.data(), var.data(), b, c, hw, splits);
    });
    bn_stats_ref(xv, b, c, hw, mref, vref);
    expect("bn mean" + tag, mean, mref, 1e-12);
    expect("bn var" + tag, var, vref, 1e-9);
    std::vector<float> scale(c), shift(c);
    launch(1, 32, [&] {
        meal_bn_scale_shift(gamma.data(), beta.data(), mean.data(), var.data(), eps, c,
                            scale.data(), shift.data());
    });
    std::vector<float> coef(6 * c, -7.f);
    std::vector<__nv_bfloat16> dx(n, __nv_bfloat16{0x7fc0});
    std::vector<float> dgb(2 * c, -7.f);
    launch(c * splits, BN_THREADS, [&] {
        meal_bn_grad_sums_bf16(dy.data(), x.data(), mean.data(), scale.data(), shift.data(), relu,
                               b, c, hw, splits, part.data());
    });
    launch(1, 32, [&] {
        meal_bn_grad_finish(part.data(), mean.data(), var.data(), gamma.data(), eps,
                            (double)b * hw, c, splits, coef.data());
    });
    launch(3, 32, [&] {
        meal_bn_grad_input_bf16(dy.data(), x.data(), coef.data(), scale.data(), shift.data(),
                                relu, b, c, hw, dx.data(), dgb.data());
    });
    auto oref = bn_backward_ref(xv, dv, mref, vref, gamma, scale, shift, relu, eps, b, c, hw);
    std::vector<float> dref(oref.begin(), oref.begin() + n), gref(oref.begin() + n, oref.end());
    // dx is rounded to bf16 once: within half a bf16 step (2^-9 relative) of the formula
    expect("bn backward dx" + tag, widen(dx), dref, 1.0 / 256);
    expect("bn backward dgamma dbeta" + tag, dgb, gref, 1e-4);
}

static void check_swap() {
    size_t a = 3, b = 4, p = 5;
    auto src = randn(a * b * p);
    std::vector<float> dst(a * b * p, -7.f), want(a * b * p);
    launch(3, 32, [&] { meal_swap01(src.data(), dst.data(), a, b, p); });
    for (size_t i = 0; i < a; ++i)
        for (size_t j = 0; j < b; ++j)
            for (size_t q = 0; q < p; ++q) want[(j * a + i) * p + q] = src[(i * b + j) * p + q];
    expect("swap01 3x4x5", dst, want, 0.0);
    // the bf16 instantiation (the grouped convolution's output of a bf16 teacher)
    std::vector<__nv_bfloat16> srcb(a * b * p), dstb(a * b * p);
    std::vector<float> wantb(a * b * p);
    for (size_t i = 0; i < srcb.size(); ++i) srcb[i] = __float2bfloat16(src[i]);
    for (size_t i = 0; i < wantb.size(); ++i) wantb[i] = __bfloat162float(__float2bfloat16(want[i]));
    launch(3, 32, [&] { meal_swap01_bf16(srcb.data(), dstb.data(), a, b, p); });
    expect("swap01 bf16 3x4x5", widen(dstb), wantb, 0.0);
}

// splits: blocks per channel of the reductions (ops/cuda/bn.rs `splits`)
static void check_bn(int b, int c, int hw, float offset, int relu, int splits) {
    size_t n = (size_t)b * c * hw;
    double eps = 1e-5;
    auto x = randn(n, 1.f, offset), dy = randn(n), gamma = randn(c, .5f, 1.f), beta = randn(c, .5f);
    std::string tag = " relu=" + std::to_string(relu) + " offset=" + std::to_string((int)offset) +
                      " splits=" + std::to_string(splits);
    // statistics: two-pass f64
    std::vector<double> mean(c, -7), var(c, -7), mref(c), vref(c);
    std::vector<double> part(2 * c * splits, -7);
    launch(c * splits, BN_THREADS, [&] { meal_bn_stats(x.data(), part.data(), b, c, hw, splits); });
    launch(1, 32, [&] {
        meal_bn_stats_finish(x.data(), part.data(), mean.data(), var.data(), b, c, hw, splits);
    });
    bn_stats_ref(x, b, c, hw, mref, vref);
    expect("bn mean" + tag, mean, mref, 1e-12);
    expect("bn var" + tag, var, vref, 1e-9);
    // forward: scale/shift on the device, bit for bit the host's (bn.rs scale_shift)
    std::vector<float> scale(c, -7.f), shift(c, -7.f), scref(c), shref(c);
    launch(1, 32, [&] {
        meal_bn_scale_shift(gamma.data(), beta.data(), mean.data(), var.data(), eps, c,
                            scale.data(), shift.data());
    });
    for (int ch = 0; ch < c; ++ch) {
        double inv = 1.0 / std::sqrt(var[ch] + eps), sc = (double)gamma[ch] * inv;
        scref[ch] = (float)sc;
        shref[ch] = (float)((double)beta[ch] - mean[ch] * sc);
    }
    expect("bn scale" + tag, scale, scref, 0.0);
    expect("bn shift" + tag, shift, shref, 0.0);
    // then the affine(+ReLU)
    x[3] = NAN;  // NaN passes the ReLU (relu.rs relu_of)
    std::vector<float> y(n, -7.f), yref(n);
    launch(3, 32, [&] {
        meal_bn_affine(x.data(), scale.data(), shift.data(), y.data(), n, c, hw, relu);
    });
    for (size_t t = 0; t < n; ++t) {
        int ch = (int)((t / hw) % c);
        float v = x[t] * scale[ch] + shift[ch];
        yref[t] = relu && !(v > 0.f) && !std::isnan(v) ? 0.f : v;
    }
    expect("bn affine" + tag, y, yref, 1e-6);
    x[3] = 0.5f;
    // backward against dx = gamma*inv*(g - mean(g) - xhat*mean(g*xhat)), g gated by the ReLU
    std::vector<float> coef(6 * c, -7.f);
    std::vector<float> out(n + 2 * c, -7.f);
    std::fill(part.begin(), part.end(), -7);
    launch(c * splits, BN_THREADS, [&] {
        meal_bn_grad_sums(dy.data(), x.data(), mean.data(), scale.data(), shift.data(), relu, b, c,
                          hw, splits, part.data());
    });
    launch(1, 32, [&] {
        meal_bn_grad_finish(part.data(), mean.data(), var.data(), gamma.data(), eps,
                            (double)b * hw, c, splits, coef.data());
    });
    launch(3, 32, [&] {
        meal_bn_grad_input(dy.data(), x.data(), coef.data(), scale.data(), shift.data(), relu, b,
                           c, hw, out.data());
    });
    auto oref = bn_backward_ref(x, dy, mref, vref, gamma, scale, shift, relu, eps, b, c, hw);
    expect("bn backward" + tag, out, oref, 1e-4);
}

// The window's maximum in row-major order, the first of equal values; a NaN is above
// every number and the last NaN of the window is the one taken (PyTorch's CPU max-pool,
// aten/src/ATen/native/cpu/MaxPoolKernel.cpp: `(val > maxval) || std::isnan(val)`).
static int first_max(const float* plane, int h, int w, int k, int s, int p, int oy, int ox) {
    int at = -1, last_nan = -1;
    float best = 0.f;
    for (int y = oy * s - p; y < oy * s - p + k; ++y)
        for (int x = ox * s - p; x < ox * s - p + k; ++x) {
            if (y < 0 || y >= h || x < 0 || x >= w) continue;
            float v = plane[y * w + x];
            if (std::isnan(v))
                last_nan = y * w + x;
            else if (at < 0 || v > best) {
                best = v;
                at = y * w + x;
            }
        }
    return last_nan >= 0 ? last_nan : at;
}

static void check_pool(int planes, int h, int w, int k, int s, int p, bool nan) {
    int ho = (h + 2 * p - k) / s + 1, wo = (w + 2 * p - k) / s + 1;
    auto x = randn((size_t)planes * h * w, 2.f);
    for (auto& v : x) v = std::round(v);  // many ties: the first maximum wins
    // two NaNs in one window (row 1, columns 7 and 8 of a 10-wide plane): the last is
    // the one taken, and the gradient goes to it
    if (nan) x[17] = x[18] = NAN;
    std::vector<float> y((size_t)planes * ho * wo, -7.f), yref(y.size());
    std::vector<float> dx(x.size(), -7.f), dref(x.size(), 0.f);
    auto dy = randn(y.size());
    launch(3, 32, [&] { meal_maxpool_fwd(x.data(), y.data(), planes, h, w, ho, wo, k, s, p); });
    launch(3, 32, [&] {
        meal_maxpool_bwd(x.data(), dy.data(), dx.data(), planes, h, w, ho, wo, k, s, p);
    });
    for (int pl = 0; pl < planes; ++pl)
        for (int oy = 0; oy < ho; ++oy)
            for (int ox = 0; ox < wo; ++ox) {
                const float* plane = x.data() + (size_t)pl * h * w;
                int a = first_max(plane, h, w, k, s, p, oy, ox);
                size_t o = ((size_t)pl * ho + oy) * wo + ox;
                yref[o] = plane[a];
                dref[(size_t)pl * h * w + a] += dy[o];
            }
    char name[64];
    snprintf(name, sizeof name, "max-pool %dx%dx%d k%d s%d p%d%s", planes, h, w, k, s, p,
             nan ? " NaN" : "");
    expect(std::string(name), y, yref, 0.0);
    expect(std::string(name) + " backward", dx, dref, 0.0);
    // the bf16 forward: the same windows and rule over the rounded input (integers here:
    // exact in bf16), so the f32 forward's values
    std::vector<__nv_bfloat16> xb(x.size()), yb(y.size());
    for (size_t i = 0; i < x.size(); ++i) xb[i] = __float2bfloat16(x[i]);
    launch(3, 32, [&] { meal_maxpool_fwd_bf16(xb.data(), yb.data(), planes, h, w, ho, wo, k, s, p); });
    expect(std::string(name) + " bf16", widen(yb), yref, 0.0);
    // the bf16 backward (mixed-precision training): the same routing of the rounded dy,
    // summed in f32 in (oy, ox) order, rounded once
    std::vector<__nv_bfloat16> dyb(dy.size()), dxb(x.size(), __nv_bfloat16{0x7fc0});
    for (size_t i = 0; i < dy.size(); ++i) dyb[i] = __float2bfloat16(dy[i]);
    launch(3, 32, [&] {
        meal_maxpool_bwd_bf16(xb.data(), dyb.data(), dxb.data(), planes, h, w, ho, wo, k, s, p);
    });
    std::vector<float> drefb(x.size(), 0.f);
    for (int pl = 0; pl < planes; ++pl)
        for (int oy = 0; oy < ho; ++oy)
            for (int ox = 0; ox < wo; ++ox) {
                int a = first_max(x.data() + (size_t)pl * h * w, h, w, k, s, p, oy, ox);
                drefb[(size_t)pl * h * w + a] +=
                    __bfloat162float(dyb[((size_t)pl * ho + oy) * wo + ox]);
            }
    for (auto& v : drefb) v = __bfloat162float(__float2bfloat16(v));
    expect(std::string(name) + " bf16 backward", widen(dxb), drefb, 0.0);
}

// ReLU, the residual join + ReLU, the ReLU's gradient; f32 and bf16.
static void check_relu() {
    size_t n = 300;
    auto a = randn(n), b = randn(n), dy = randn(n);
    a[5] = NAN;
    a[6] = -0.f;
    std::vector<float> y(n, -7.f), s(n, -7.f), dx(n, -7.f), yref(n), sref(n), dref(n);
    launch(3, 32, [&] { meal_relu(a.data(), y.data(), n); });
    launch(3, 32, [&] { meal_add_relu(a.data(), b.data(), s.data(), n); });
    launch(3, 32, [&] { meal_relu_grad(s.data(), dy.data(), dx.data(), n); });
    auto relu = [](float v) { return (v > 0.f || std::isnan(v)) ? v : 0.f; };
    for (size_t i = 0; i < n; ++i) {
        yref[i] = relu(a[i]);
        sref[i] = relu(a[i] + b[i]);
        dref[i] = sref[i] > 0.f ? dy[i] : 0.f;
    }
    expect("relu", y, yref, 0.0);
    expect("add_relu", s, sref, 0.0);
    expect("relu grad", dx, dref, 0.0);
    std::vector<__nv_bfloat16> ab(n), bb(n), yb(n), sb(n);
    for (size_t i = 0; i < n; ++i) {
        ab[i] = __float2bfloat16(a[i]);
        bb[i] = __float2bfloat16(b[i]);
    }
    launch(3, 32, [&] { meal_relu_bf16(ab.data(), yb.data(), n); });
    launch(3, 32, [&] { meal_add_relu_bf16(ab.data(), bb.data(), sb.data(), n); });
    std::vector<float> ybref(n), sbref(n);
    for (size_t i = 0; i < n; ++i) {
        float x = __bfloat162float(ab[i]), z = __bfloat162float(bb[i]);
        ybref[i] = relu(x);
        sbref[i] = __bfloat162float(__float2bfloat16(relu(x + z)));
    }
    expect("relu bf16", widen(yb), ybref, 0.0);
    expect("add_relu bf16", widen(sb), sbref, 0.0);
    std::vector<__nv_bfloat16> dyb(n), dxb(n, __nv_bfloat16{0x7fc0});
    for (size_t i = 0; i < n; ++i) dyb[i] = __float2bfloat16(dy[i]);
    launch(3, 32, [&] { meal_relu_grad_bf16(sb.data(), dyb.data(), dxb.data(), n); });
    std::vector<float> dxbref(n);
    for (size_t i = 0; i < n; ++i) dxbref[i] = sbref[i] > 0.f ? __bfloat162float(dyb[i]) : 0.f;
    expect("relu grad bf16", widen(dxb), dxbref, 0.0);
}

static void check_sgd(int nesterov) {
    size_t n = 1000;
    float lr = 0.1f, wd = 1e-4f, mom = 0.9f, damp = 0.1f, keep = 1.f - damp;
    auto p = randn(n), g = randn(n), buf = randn(n);
    auto pref = p, bref = buf;
    launch(3, 32, [&] { meal_sgd_buffer(buf.data(), g.data(), p.data(), n, wd, mom, keep); });
    launch(3, 32, [&] { meal_sgd_param(p.data(), g.data(), buf.data(), n, lr, wd, mom, nesterov); });
    for (size_t i = 0; i < n; ++i) {
        bref[i] = bref[i] * mom + (g[i] + pref[i] * wd) * keep;
        float d = nesterov ? (g[i] + pref[i] * wd) + bref[i] * mom : bref[i];
        pref[i] -= d * lr;
    }
    std::string tag = " nesterov=" + std::to_string(nesterov);
    expect("sgd buffer" + tag, buf, bref, 1e-6);
    expect("sgd param" + tag, p, pref, 1e-6);
}


// The emulated f32 -> bf16 rounding on known values, bit for bit: ties to even,
// carries into the exponent, overflow to infinity, subnormals, NaN.
static void check_bf16_rounding() {
    struct Case {
        float in;
        uint16_t want;
    };
    // 1 + 2^-8 ties down to 1 (even); 1 + 3*2^-8 ties up to 1 + 2^-6; 1 + 2^-7 is exact;
    // just under 2 carries to 2; the largest finite f32 rounds to infinity; 1e-40
    // (0x000116c2) keeps 0x0001; NaN stays a quiet NaN
    const Case cases[] = {{1.f, 0x3f80},         {1.00390625f, 0x3f80}, {1.01171875f, 0x3f82},
                          {1.0078125f, 0x3f81},  {1.9999999f, 0x4000},  {-2.5f, 0xc020},
                          {3.4028235e38f, 0x7f80}, {1e-40f, 0x0001},    {NAN, 0x7fc0}};
    ++checks;
    for (const Case& c : cases) {
        uint16_t got = __float2bfloat16(c.in).bits;
        if (got != c.want) {
            ++failures;
            printf("FAIL bf16 rounding of %g: got 0x%04x want 0x%04x\n", c.in, got, c.want);
            return;
        }
    }
    printf("ok   bf16 rounding (%zu values)\n", sizeof cases / sizeof cases[0]);
}

// Eval BatchNorm over bf16: the f32 affine of the widened input, rounded once.
static void check_bn_affine_bf16(int relu) {
    int b = 3, c = 5, hw = 42;
    size_t n = (size_t)b * c * hw;
    auto xf = randn(n, 3.f);
    auto scale = randn(c), shift = randn(c);
    std::vector<__nv_bfloat16> x(n), y(n, __nv_bfloat16{0x7fc0});
    for (size_t i = 0; i < n; ++i) x[i] = __float2bfloat16(xf[i]);
    x[5] = __float2bfloat16(NAN);
    launch(3, 32, [&] {
        meal_bn_affine_bf16(x.data(), scale.data(), shift.data(), y.data(), n, c, hw, relu);
    });
    std::vector<float> want(n);
    for (size_t t = 0; t < n; ++t) {
        int ch = (int)((t / hw) % c);
        float v = __bfloat162float(x[t]) * scale[ch] + shift[ch];
        want[t] = __bfloat162float(
            __float2bfloat16(relu && !(v > 0.f) && !std::isnan(v) ? 0.f : v));
    }
    expect("bn affine bf16 relu=" + std::to_string(relu), widen(y), want, 0.0);
}

// 8-bit crops through the normalisation table, to f32 and to bf16.
static void check_levels() {
    int b = 2, hw = 37;
    size_t n = (size_t)b * 3 * hw;
    std::vector<unsigned char> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = (unsigned char)((i * 97 + 13) % 256);
    x[0] = 0;
    x[1] = 255;
    auto lut = randn(3 * 256);
    std::vector<float> y(n, -7.f), want(n), wantb(n);
    std::vector<__nv_bfloat16> yb(n);
    launch(3, 32, [&] { meal_levels(x.data(), lut.data(), y.data(), n, hw); });
    launch(3, 32, [&] { meal_levels_bf16(x.data(), lut.data(), yb.data(), n, hw); });
    for (int i = 0; i < b; ++i)
        for (int ch = 0; ch < 3; ++ch)
            for (int q = 0; q < hw; ++q) {
                size_t t = ((size_t)i * 3 + ch) * hw + q;
                want[t] = lut[ch * 256 + x[t]];
                wantb[t] = __bfloat162float(__float2bfloat16(want[t]));
            }
    expect("levels f32", y, want, 0.0);
    expect("levels bf16", widen(yb), wantb, 0.0);
}

int main() {
    for (Geom g : {Geom{3, 2, 7, 6, 3, 1, 1}, Geom{2, 3, 9, 8, 3, 2, 1}, Geom{2, 4, 6, 5, 1, 1, 0},
                   Geom{2, 4, 7, 7, 1, 2, 0}, Geom{2, 3, 13, 11, 7, 2, 3}, Geom{2, 2, 8, 8, 2, 2, 0}})
        check_cols(g);
    check_swap();
    for (int relu = 0; relu < 2; ++relu)
        for (float offset : {0.f, 100.f}) check_bn(3, 5, 42, offset, relu, 1);
    check_bn(5, 3, 20, 100.f, 1, 2);  // uneven splits (2 and 3 images)
    check_bn(3, 4, 9, 0.f, 0, 3);     // a split per image
    check_bn(2, 3, 1, 0.f, 1, 1);     // 1x1 planes (the SE block's squeeze)
    for (int relu = 0; relu < 2; ++relu) check_bn_bf16(3, 5, 42, 3.f, relu, 1);
    check_bn_bf16(5, 3, 20, 0.f, 1, 2);  // uneven splits
    check_to_bf16();
    check_pool(6, 11, 10, 3, 2, 1, false);
    check_pool(6, 11, 10, 3, 2, 1, true);
    check_pool(6, 8, 8, 2, 2, 0, false);
    check_relu();
    check_sgd(0);
    check_sgd(1);
    check_bf16_rounding();
    check_bn_affine_bf16(0);
    check_bn_affine_bf16(1);
    check_levels();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
