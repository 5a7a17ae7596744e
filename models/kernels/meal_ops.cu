// The CUDA twins of our CPU ops (models/src/ops): the column gather/scatter and layout
// swaps around the convolution GEMMs (cuBLAS), train-mode BatchNorm(+ReLU) forward and
// backward, max-pool with the first-maximum rule, the in-place SGD update, and the
// inference side of bf16 teachers (eval BatchNorm) and of 8-bit input batches; the
// bf16 twins (`_bf16`) also serve mixed-precision training (bf16 activations, f32
// weights and statistics). f32 unless a kernel's name says bf16.
// Compiled to PTX at build time by models/build.rs (nvcc, as candle-kernels does) and
// loaded once per device by models/src/ops/cuda/mod.rs. Each kernel keeps the CPU op's
// semantics (tie and NaN rules, f64 statistics); models/src/ops/cuda/tests/ compares
// every one with its CPU twin on a GPU.
#include <stddef.h>
#ifdef __CUDACC__
#include <cuda_bf16.h>
#endif

// Index arithmetic is 32-bit: the host launches no kernel over more than 2^31 elements
// (ops/cuda/mod.rs `grid`), so `i + stride` cannot wrap. A 64-bit division is a software
// routine on the GPU, several times the cost of a 32-bit one, and the layout kernels
// divide for every element; addresses are still formed in 64 bits (`size_t` products).
#define GRID_STRIDE(i, n) \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)(n); \
         i += blockDim.x * gridDim.x)

// ---- layout ------------------------------------------------------------------------

// dst[j][i][q] = src[i][j][q] for src [a, b, p]: NCHW <-> [C, B*HW] (the batch GEMM's
// column layout) in either direction. f32 and bf16 (a copy: exact).
template <class T>
__device__ __forceinline__ void swap01(const T* src, T* dst, size_t a, size_t b, size_t p) {
    unsigned n = (unsigned)(a * b * p), ua = (unsigned)a, up = (unsigned)p;
    GRID_STRIDE(t, n) {
        unsigned r = t / up, q = t - r * up;
        unsigned j = r / ua, i = r - j * ua;
        dst[t] = src[((size_t)i * b + j) * p + q];
    }
}

extern "C" __global__ void meal_swap01(const float* src, float* dst, size_t a, size_t b,
                                       size_t p) {
    swap01(src, dst, a, b, p);
}

extern "C" __global__ void meal_swap01_bf16(const __nv_bfloat16* src, __nv_bfloat16* dst,
                                            size_t a, size_t b, size_t p) {
    swap01(src, dst, a, b, p);
}

// ---- convolution columns -----------------------------------------------------------

template <class T>
__device__ __forceinline__ T zero_of();
template <>
__device__ __forceinline__ float zero_of<float>() { return 0.f; }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_of<__nv_bfloat16>() { return __float2bfloat16(0.f); }

// A value widened to f32 (exact), and an f32 rounded to T (to nearest even for bf16): the
// bf16 kernels of mixed-precision training read bf16, compute in f32 and round once.
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T narrow_to(float v);
template <>
__device__ __forceinline__ float narrow_to<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow_to<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// cols [c*k*k, nb*ho*wo] of the nb NCHW images at x: row (ch*k + ky)*k + kx (the weight's
// [co, ci, kh, kw] order), column img*ho*wo + oy*wo + ox; zero where the window is in
// the padding. As models/src/ops/conv/cols.rs `im2col`. f32 and bf16 (a copy: exact).
template <class T>
__device__ __forceinline__ void im2col(const T* x, T* cols, int nb, int c, int h, int w, int k,
                                       int stride, int pad, int ho, int wo) {
    unsigned p = (unsigned)ho * wo, ncol = (unsigned)nb * p;
    unsigned n = (unsigned)c * k * k * ncol, uk = (unsigned)k, uwo = (unsigned)wo;
    GRID_STRIDE(t, n) {
        unsigned row = t / ncol, col = t - row * ncol;
        unsigned rk = row / uk, kx = row - rk * uk, ch = rk / uk, ky = rk - ch * uk;
        unsigned img = col / p, pp = col - img * p, oy = pp / uwo, ox = pp - oy * uwo;
        int iy = (int)(oy * stride + ky) - pad, ix = (int)(ox * stride + kx) - pad;
        T v = zero_of<T>();
        if (iy >= 0 && iy < h && ix >= 0 && ix < w)
            v = x[(((size_t)img * c + ch) * h + iy) * w + ix];
        cols[t] = v;
    }
}

extern "C" __global__ void meal_im2col(const float* x, float* cols, int nb, int c, int h,
                                       int w, int k, int stride, int pad, int ho, int wo) {
    im2col(x, cols, nb, c, h, w, k, stride, pad, ho, wo);
}

extern "C" __global__ void meal_im2col_bf16(const __nv_bfloat16* x, __nv_bfloat16* cols, int nb,
                                            int c, int h, int w, int k, int stride, int pad,
                                            int ho, int wo) {
    im2col(x, cols, nb, c, h, w, k, stride, pad, ho, wo);
}

// The adjoint of meal_im2col: dx (nb NCHW images) as the sum of the column entries that
// read each input position. One thread per input element gathers its at most k*k
// entries in (ky, kx) order: no atomics, so the result does not depend on scheduling.
// f32 and bf16 (summed in f32, rounded once).
template <class T>
__device__ __forceinline__ void col2im(const T* dcols, T* dx, int nb, int c, int h, int w, int k,
                                       int stride, int pad, int ho, int wo) {
    size_t p = (size_t)ho * wo, ncol = (size_t)nb * p;
    unsigned n = (unsigned)nb * c * h * w, uw = (unsigned)w, uh = (unsigned)h, uc = (unsigned)c;
    GRID_STRIDE(t, n) {
        unsigned r = t / uw, r2 = r / uh, img = r2 / uc;
        int ix = (int)(t - r * uw), iy = (int)(r - r2 * uh), ch = (int)(r2 - img * uc);
        float s = 0.f;
        for (int ky = 0; ky < k; ++ky) {
            int yy = iy + pad - ky;
            if (yy < 0 || yy % stride != 0) continue;
            int oy = yy / stride;
            if (oy >= ho) continue;
            for (int kx = 0; kx < k; ++kx) {
                int xx = ix + pad - kx;
                if (xx < 0 || xx % stride != 0) continue;
                int ox = xx / stride;
                if (ox >= wo) continue;
                size_t row = ((size_t)ch * k + ky) * k + kx;
                s += widen(dcols[row * ncol + img * p + (size_t)oy * wo + ox]);
            }
        }
        dx[t] = narrow_to<T>(s);
    }
}

extern "C" __global__ void meal_col2im(const float* dcols, float* dx, int nb, int c, int h,
                                       int w, int k, int stride, int pad, int ho, int wo) {
    col2im(dcols, dx, nb, c, h, w, k, stride, pad, ho, wo);
}

extern "C" __global__ void meal_col2im_bf16(const __nv_bfloat16* dcols, __nv_bfloat16* dx, int nb,
                                            int c, int h, int w, int k, int stride, int pad,
                                            int ho, int wo) {
    col2im(dcols, dx, nb, c, h, w, k, stride, pad, ho, wo);
}

// f32 -> bf16, rounded to nearest even (a mixed-precision weight gradient summed in f32
// over the chunks of a batch, then stored in the weight's bf16).
extern "C" __global__ void meal_to_bf16(const float* x, __nv_bfloat16* y, size_t n) {
    GRID_STRIDE(t, n) y[t] = __float2bfloat16(x[t]);
}

// ---- BatchNorm ---------------------------------------------------------------------

#define BN_THREADS 256

// Sum of v over the block (blockDim.x == BN_THREADS); every thread gets the result.
__device__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = BN_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    double r = shared[0];
    __syncthreads();
    return r;
}

// The per-channel reductions run `splits` blocks per channel (block ch*splits + s sums
// images [s*b/splits, (s+1)*b/splits) of channel ch), so that layers with few channels
// still fill the GPU (one block per channel left 64 of an H200's 132 SMs busy on
// ResNet's first stages, each with 8 warps to hide its memory latency). `splits`
// depends on the shape alone (ops/cuda/bn.rs `splits`), and a finishing kernel adds a
// channel's partial sums in block order: the result does not depend on scheduling.

// The images of block s of `splits` over b images: [*i0, *i1).
__device__ __forceinline__ void split_range(unsigned b, unsigned splits, unsigned s,
                                            unsigned* i0, unsigned* i1) {
    *i0 = (unsigned)(((unsigned long long)s * b) / splits);
    *i1 = (unsigned)(((unsigned long long)(s + 1) * b) / splits);
}

// Partial sums of x - x[0, ch, 0] and of its square in f64 (as the CPU op, bn.rs
// `channel_stats`, shifts by the channel's first value): part[ch*splits + s] and
// part[(c + ch)*splits + s]. Over f32 or bf16 x (widened: exact).
template <class T>
__device__ __forceinline__ void bn_stats(const T* x, double* part, int b, int c, int hw,
                                         int splits) {
    __shared__ double sh[BN_THREADS];
    unsigned ch = blockIdx.x / (unsigned)splits, sp = blockIdx.x - ch * (unsigned)splits;
    unsigned i0, i1, uhw = (unsigned)hw;
    split_range((unsigned)b, (unsigned)splits, sp, &i0, &i1);
    unsigned n = (i1 - i0) * uhw;
    double shift = (b > 0 && hw > 0) ? (double)widen(x[(size_t)ch * hw]) : 0.0;
    double s = 0.0, s2 = 0.0;
    for (unsigned t = threadIdx.x; t < n; t += BN_THREADS) {
        unsigned i = t / uhw, q = t - i * uhw;
        double d = (double)widen(x[((size_t)(i0 + i) * c + ch) * hw + q]) - shift;
        s += d;
        s2 += d * d;
    }
    s = block_sum(s, sh);
    s2 = block_sum(s2, sh);
    if (threadIdx.x == 0) {
        part[(size_t)ch * splits + sp] = s;
        part[((size_t)c + ch) * splits + sp] = s2;
    }
}

extern "C" __global__ void meal_bn_stats(const float* x, double* part, int b, int c, int hw,
                                         int splits) {
    bn_stats(x, part, b, c, hw, splits);
}

extern "C" __global__ void meal_bn_stats_bf16(const __nv_bfloat16* x, double* part, int b, int c,
                                              int hw, int splits) {
    bn_stats(x, part, b, c, hw, splits);
}

// Mean and biased variance of each channel from meal_bn_stats's partial sums.
template <class T>
__device__ __forceinline__ void bn_stats_finish(const T* x, const double* part, double* mean,
                                                double* var, int b, int c, int hw, int splits) {
    GRID_STRIDE(ch, c) {
        double s = 0.0, s2 = 0.0;
        for (int sp = 0; sp < splits; ++sp) {
            s += part[(size_t)ch * splits + sp];
            s2 += part[((size_t)c + ch) * splits + sp];
        }
        double n = (double)b * hw;
        double shift = (b > 0 && hw > 0) ? (double)widen(x[(size_t)ch * hw]) : 0.0;
        double m = n > 0 ? s / n : 0.0;
        mean[ch] = shift + m;
        double v = n > 0 ? s2 / n - m * m : 0.0;
        var[ch] = v > 0.0 ? v : 0.0;
    }
}

extern "C" __global__ void meal_bn_stats_finish(const float* x, const double* part,
                                                double* mean, double* var, int b, int c,
                                                int hw, int splits) {
    bn_stats_finish(x, part, mean, var, b, c, hw, splits);
}

extern "C" __global__ void meal_bn_stats_finish_bf16(const __nv_bfloat16* x, const double* part,
                                                     double* mean, double* var, int b, int c,
                                                     int hw, int splits) {
    bn_stats_finish(x, part, mean, var, b, c, hw, splits);
}

// The per-channel scale = gamma / sqrt(var + eps) and shift = beta - mean * scale of a
// train-mode BatchNorm, in f64 and then rounded: bn.rs `scale_shift` operation for
// operation (the _rn intrinsics round each step and are never fused into an FMA), so the
// GPU forward applies the very floats the CPU op would.
extern "C" __global__ void meal_bn_scale_shift(const float* gamma, const float* beta,
                                               const double* mean, const double* var,
                                               double eps, int c, float* scale,
                                               float* shift) {
    GRID_STRIDE(ch, c) {
        double inv = __ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(var[ch], eps)));
        double sc = __dmul_rn((double)gamma[ch], inv);
        scale[ch] = (float)sc;
        shift[ch] = (float)__dsub_rn((double)beta[ch], __dmul_rn(mean[ch], sc));
    }
}

// x * scale + shift rounded twice, as the CPU op's Rust (which never contracts): an FMA
// rounds once, and where the sum is within half an ulp of 0 the fused ReLU's gate would
// then differ from the CPU op's, changing that element's gradient by O(1) (nvcc contracts
// by default; build.rs also passes --fmad=false for the other kernels).
__device__ __forceinline__ float affine(float x, float scale, float shift) {
    return __fadd_rn(__fmul_rn(x, scale), shift);
}

__device__ __forceinline__ float relu_of(float v) { return (v > 0.f || isnan(v)) ? v : 0.f; }

// y = x * scale[ch] + shift[ch], then ReLU when relu (NaN passes, as relu.rs `relu_of`).
extern "C" __global__ void meal_bn_affine(const float* x, const float* scale,
                                          const float* shift, float* y, size_t n, int c,
                                          int hw, int relu) {
    GRID_STRIDE(t, n) {
        int ch = (int)((t / (unsigned)hw) % (unsigned)c);
        float v = affine(x[t], scale[ch], shift[ch]);
        y[t] = relu ? relu_of(v) : v;
    }
}

// meal_bn_affine over bf16 x and y (eval BatchNorm of a bf16 teacher): the affine in
// f32 with f32 scale and shift, rounded to bf16 once (to nearest even).
extern "C" __global__ void meal_bn_affine_bf16(const __nv_bfloat16* x, const float* scale,
                                               const float* shift, __nv_bfloat16* y, size_t n,
                                               int c, int hw, int relu) {
    GRID_STRIDE(t, n) {
        int ch = (int)((t / (unsigned)hw) % (unsigned)c);
        float v = affine(__bfloat162float(x[t]), scale[ch], shift[ch]);
        y[t] = __float2bfloat16(relu ? relu_of(v) : v);
    }
}

// dy where the fused ReLU let it through (x * scale + shift > 0), as bn.rs `gated`.
__device__ __forceinline__ float gated(float g, float v, const float* scale,
                                       const float* shift, int ch, int relu) {
    return (relu && !(affine(v, scale[ch], shift[ch]) > 0.f)) ? 0.f : g;
}

// Partial sums per block of `splits` per channel (as meal_bn_stats): sum(dy) at
// part[ch*splits + s], sum(dy * (x - mean)) at part[(c + ch)*splits + s], dy gated by
// the fused ReLU. Over f32 or bf16 dy and x (widened).
template <class T>
__device__ __forceinline__ void bn_grad_sums(const T* dy, const T* x, const double* mean,
                                             const float* scale, const float* shift, int relu,
                                             int b, int c, int hw, int splits, double* part) {
    __shared__ double sh[BN_THREADS];
    unsigned ch = blockIdx.x / (unsigned)splits, sp = blockIdx.x - ch * (unsigned)splits;
    unsigned i0, i1, uhw = (unsigned)hw;
    split_range((unsigned)b, (unsigned)splits, sp, &i0, &i1);
    unsigned n = (i1 - i0) * uhw;
    float m = (float)mean[ch];
    double sd = 0.0, sdx = 0.0;
    for (unsigned t = threadIdx.x; t < n; t += BN_THREADS) {
        unsigned i = t / uhw, q = t - i * uhw;
        size_t at = ((size_t)(i0 + i) * c + ch) * hw + q;
        float v = widen(x[at]);
        float g = gated(widen(dy[at]), v, scale, shift, ch, relu);
        sd += (double)g;
        sdx += (double)(g * (v - m));
    }
    sd = block_sum(sd, sh);
    sdx = block_sum(sdx, sh);
    if (threadIdx.x == 0) {
        part[(size_t)ch * splits + sp] = sd;
        part[((size_t)c + ch) * splits + sp] = sdx;
    }
}

extern "C" __global__ void meal_bn_grad_sums(const float* dy, const float* x,
                                             const double* mean, const float* scale,
                                             const float* shift, int relu, int b, int c,
                                             int hw, int splits, double* part) {
    bn_grad_sums(dy, x, mean, scale, shift, relu, b, c, hw, splits, part);
}

extern "C" __global__ void meal_bn_grad_sums_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                                  const double* mean, const float* scale,
                                                  const float* shift, int relu, int b, int c,
                                                  int hw, int splits, double* part) {
    bn_grad_sums(dy, x, mean, scale, shift, relu, b, c, hw, splits, part);
}

// The backward's per-channel coefficients, from meal_bn_grad_sums's partial sums added in
// block order (sd = sum(dy), sdx = sum(dy * (x - mean))): with inv = 1/sqrt(var + eps),
// k = gamma*inv and m = b*hw (bn.rs BnBackward), coef = [k, k*sd/m, k*inv*inv*sdx/m, mean,
// dgamma = sdx*inv, dbeta = sd], each c floats. Computed once per channel in f64, so the
// per-element kernel does no f64 arithmetic (slow on GPUs with few f64 units).
extern "C" __global__ void meal_bn_grad_finish(const double* part, const double* mean,
                                               const double* var, const float* gamma,
                                               double eps, double m, int c, int splits,
                                               float* coef) {
    GRID_STRIDE(ch, c) {
        double sd = 0.0, sdx = 0.0;
        for (int sp = 0; sp < splits; ++sp) {
            sd += part[(size_t)ch * splits + sp];
            sdx += part[((size_t)c + ch) * splits + sp];
        }
        double inv = 1.0 / sqrt(var[ch] + eps);
        double k = (double)gamma[ch] * inv;
        coef[ch] = (float)k;
        coef[c + ch] = (float)(k * sd / m);
        coef[2 * c + ch] = (float)(k * inv * (sdx * inv) / m);
        coef[3 * c + ch] = (float)mean[ch];
        coef[4 * c + ch] = (float)(sdx * inv);
        coef[5 * c + ch] = (float)sd;
    }
}

// dx = k*g - k*sd/m - (x - mean) * k*inv*inv*sdx/m (g: dy gated by the ReLU), in f32
// from meal_bn_grad_finish's coefficients, rounded once to T; dgb = [dgamma...,
// dbeta...] in f32.
template <class T>
__device__ __forceinline__ void bn_grad_input(const T* dy, const T* x, const float* coef,
                                              const float* scale, const float* shift, int relu,
                                              int b, int c, int hw, T* dx, float* dgb) {
    unsigned n = (unsigned)b * c * hw;
    GRID_STRIDE(t, n) {
        int ch = (int)((t / (unsigned)hw) % (unsigned)c);
        float v = widen(x[t]);
        float g = gated(widen(dy[t]), v, scale, shift, ch, relu);
        dx[t] = narrow_to<T>(coef[ch] * g - coef[c + ch] - (v - coef[3 * c + ch]) * coef[2 * c + ch]);
    }
    unsigned tid = blockIdx.x * blockDim.x + threadIdx.x;
    if (tid < (unsigned)c) {
        dgb[tid] = coef[4 * c + tid];
        dgb[c + tid] = coef[5 * c + tid];
    }
}

// f32: out = [dx..., dgamma..., dbeta...] (the CPU op's packing).
extern "C" __global__ void meal_bn_grad_input(const float* dy, const float* x,
                                              const float* coef, const float* scale,
                                              const float* shift, int relu, int b, int c,
                                              int hw, float* out) {
    bn_grad_input(dy, x, coef, scale, shift, relu, b, c, hw, out, out + (size_t)b * c * hw);
}

// bf16 dy and x (mixed-precision training): dx in bf16, dgamma and dbeta in f32 (the
// weights' dtype).
extern "C" __global__ void meal_bn_grad_input_bf16(const __nv_bfloat16* dy,
                                                   const __nv_bfloat16* x, const float* coef,
                                                   const float* scale, const float* shift,
                                                   int relu, int b, int c, int hw,
                                                   __nv_bfloat16* dx, float* dgb) {
    bn_grad_input(dy, x, coef, scale, shift, relu, b, c, hw, dx, dgb);
}

// ---- max-pool ----------------------------------------------------------------------

// Index within the plane of the first maximum of output (oy, ox)'s window, row-major
// window order, `v > best || isnan(v)` (pool.rs `Pool::argmax`, PyTorch's CPU rule); over
// f32 or bf16 (compared widened to f32: exact, so the same order).
template <class T>
__device__ int pool_argmax_of(const T* plane, int h, int w, int k, int stride, int pad, int oy,
                              int ox) {
    int y0 = oy * stride - pad, x0 = ox * stride - pad;
    int ya = y0 > 0 ? y0 : 0, yb = y0 + k < h ? y0 + k : h;
    int xa = x0 > 0 ? x0 : 0, xb = x0 + k < w ? x0 + k : w;
    float best = -INFINITY;
    int at = ya * w + xa;
    for (int y = ya; y < yb; ++y)
        for (int xx = xa; xx < xb; ++xx) {
            float v = widen(plane[y * w + xx]);
            if (v > best || isnan(v)) {
                best = v;
                at = y * w + xx;
            }
        }
    return at;
}

template <class T>
__device__ __forceinline__ void maxpool_fwd(const T* x, T* y, size_t planes, int h, int w,
                                            int ho, int wo, int k, int stride, int pad) {
    unsigned po = (unsigned)ho * wo, n = (unsigned)(planes * po), uwo = (unsigned)wo;
    GRID_STRIDE(t, n) {
        unsigned pl = t / po, q = t - pl * po, oy = q / uwo;
        const T* plane = x + (size_t)pl * h * w;
        y[t] = plane[pool_argmax_of(plane, h, w, k, stride, pad, (int)oy, (int)(q - oy * uwo))];
    }
}

extern "C" __global__ void meal_maxpool_fwd(const float* x, float* y, size_t planes, int h,
                                            int w, int ho, int wo, int k, int stride,
                                            int pad) {
    maxpool_fwd(x, y, planes, h, w, ho, wo, k, stride, pad);
}

// The bf16 forward (a bf16 teacher's stem; inference only): the same windows and rule.
extern "C" __global__ void meal_maxpool_fwd_bf16(const __nv_bfloat16* x, __nv_bfloat16* y,
                                                 size_t planes, int h, int w, int ho, int wo,
                                                 int k, int stride, int pad) {
    maxpool_fwd(x, y, planes, h, w, ho, wo, k, stride, pad);
}

// dx of the max-pool: one thread per input element sums, in (oy, ox) order as the CPU
// op adds, the dy of every window whose first maximum it is. f32, and bf16 (summed in
// f32, rounded once).
template <class T>
__device__ __forceinline__ void maxpool_bwd(const T* x, const T* dy, T* dx, size_t planes,
                                            int h, int w, int ho, int wo, int k, int stride,
                                            int pad) {
    unsigned pi = (unsigned)h * w, n = (unsigned)(planes * pi);
    GRID_STRIDE(t, n) {
        unsigned pl = t / pi;
        int q = (int)(t - pl * pi), iy = q / w, ix = q - iy * w;
        const T* plane = x + (size_t)pl * pi;
        const T* g = dy + (size_t)pl * ho * wo;
        // windows oy*stride - pad <= iy < oy*stride - pad + k
        int oy0 = iy + pad - k + 1, ox0 = ix + pad - k + 1;
        oy0 = oy0 > 0 ? (oy0 + stride - 1) / stride : 0;
        ox0 = ox0 > 0 ? (ox0 + stride - 1) / stride : 0;
        int oy1 = (iy + pad) / stride, ox1 = (ix + pad) / stride;
        oy1 = oy1 < ho - 1 ? oy1 : ho - 1;
        ox1 = ox1 < wo - 1 ? ox1 : wo - 1;
        float s = 0.f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox)
                if (pool_argmax_of(plane, h, w, k, stride, pad, oy, ox) == q)
                    s += widen(g[oy * wo + ox]);
        dx[t] = narrow_to<T>(s);
    }
}

extern "C" __global__ void meal_maxpool_bwd(const float* x, const float* dy, float* dx,
                                            size_t planes, int h, int w, int ho, int wo,
                                            int k, int stride, int pad) {
    maxpool_bwd(x, dy, dx, planes, h, w, ho, wo, k, stride, pad);
}

extern "C" __global__ void meal_maxpool_bwd_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                                 __nv_bfloat16* dx, size_t planes, int h, int w,
                                                 int ho, int wo, int k, int stride, int pad) {
    maxpool_bwd(x, dy, dx, planes, h, w, ho, wo, k, stride, pad);
}

// ---- ReLU --------------------------------------------------------------------------

// y = relu(x) (NaN kept, relu.rs `relu_of`); f32 and bf16 (a select: exact).
template <class T>
__device__ __forceinline__ void relu_fwd(const T* x, T* y, size_t n) {
    GRID_STRIDE(t, n) {
        float v = widen(x[t]);
        y[t] = (v > 0.f || isnan(v)) ? x[t] : zero_of<T>();
    }
}

extern "C" __global__ void meal_relu(const float* x, float* y, size_t n) { relu_fwd(x, y, n); }

extern "C" __global__ void meal_relu_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, size_t n) {
    relu_fwd(x, y, n);
}

// y = relu(a + b), a residual join (relu.rs `AddRelu`): the sum in f32, rounded to bf16
// once for bf16.
extern "C" __global__ void meal_add_relu(const float* a, const float* b, float* y, size_t n) {
    GRID_STRIDE(t, n) y[t] = relu_of(a[t] + b[t]);
}

extern "C" __global__ void meal_add_relu_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b,
                                              __nv_bfloat16* y, size_t n) {
    GRID_STRIDE(t, n) y[t] = __float2bfloat16(relu_of(__bfloat162float(a[t]) + __bfloat162float(b[t])));
}

// dx = dy where the output y is positive, else 0 (relu.rs `ReluBackward`, PyTorch's
// threshold_backward); f32 and bf16 (a select: exact).
template <class T>
__device__ __forceinline__ void relu_grad(const T* y, const T* dy, T* dx, size_t n) {
    GRID_STRIDE(t, n) dx[t] = widen(y[t]) > 0.f ? dy[t] : zero_of<T>();
}

extern "C" __global__ void meal_relu_grad(const float* y, const float* dy, float* dx, size_t n) {
    relu_grad(y, dy, dx, n);
}

extern "C" __global__ void meal_relu_grad_bf16(const __nv_bfloat16* y, const __nv_bfloat16* dy,
                                               __nv_bfloat16* dx, size_t n) {
    relu_grad(y, dy, dx, n);
}

// ---- SGD ---------------------------------------------------------------------------

// buf = buf * momentum + (g + p * wd) * (1 - dampening)   (sgd.rs BufUpdate)
extern "C" __global__ void meal_sgd_buffer(float* buf, const float* g, const float* p,
                                           size_t n, float wd, float momentum, float keep) {
    GRID_STRIDE(t, n) {
        float d = g[t] + p[t] * wd;
        buf[t] = buf[t] * momentum + d * keep;
    }
}

// p -= lr * (nesterov ? (g + p * wd) + buf * momentum : buf)   (sgd.rs ParamUpdate)
extern "C" __global__ void meal_sgd_param(float* p, const float* g, const float* buf,
                                          size_t n, float lr, float wd, float momentum,
                                          int nesterov) {
    GRID_STRIDE(t, n) {
        float d = nesterov ? (g[t] + p[t] * wd) + buf[t] * momentum : buf[t];
        p[t] -= d * lr;
    }
}

// ---- input normalisation -------------------------------------------------------------

// y = lut[ch][x] over n values of NCHW 8-bit crops x (3 channels of hw pixels): the
// loader's levels normalised on the device. lut is meal-data's `Normalize::lut` (3 x 256
// floats), so y equals the loader's own normalised crops bit for bit.
extern "C" __global__ void meal_levels(const unsigned char* x, const float* lut, float* y,
                                       size_t n, size_t hw) {
    GRID_STRIDE(t, n) { y[t] = lut[((t / (unsigned)hw) % 3u) * 256 + x[t]]; }
}

// meal_levels rounded to bf16 (the input of a bf16 teacher).
extern "C" __global__ void meal_levels_bf16(const unsigned char* x, const float* lut,
                                            __nv_bfloat16* y, size_t n, size_t hw) {
    GRID_STRIDE(t, n) { y[t] = __float2bfloat16(lut[((t / (unsigned)hw) % 3u) * 256 + x[t]]); }
}
