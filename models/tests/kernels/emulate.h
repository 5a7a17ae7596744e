// A CPU emulation of the CUDA execution model, enough to run models/kernels/meal_ops.cu
// as C++ on a machine without a GPU: each block's threads are std::threads, a block's
// `__shared__` arrays are function statics (blocks run one after another), and
// `__syncthreads()` is a std::barrier over the block. It checks the kernels' index
// arithmetic, bounds and reductions (models/tests/kernels/check.cpp); the GPU run of
// the same kernels is models/src/ops/cuda/tests/.
#pragma once
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
using std::isnan;
using std::sqrt;

// cuda_bf16.h's type and conversions: the upper 16 bits of an f32, rounded to nearest
// even; a NaN stays a (quiet) NaN.
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 v) {
    uint32_t u = (uint32_t)v.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}

// The f32 and f64 intrinsics that round each operation to nearest (and are never fused into an
// FMA on the device): on the host, the plain IEEE operations (no FMA contraction on the
// default x86-64 target).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

// Run `kernel` as `<<<grid, block>>>`.
template <class F>
void launch(unsigned grid, unsigned block, F kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        std::barrier<> bar(block);
        block_barrier = &bar;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([&, b, t] {
                blockIdx.x = b;
                threadIdx.x = t;
                kernel();
            });
        for (auto& th : threads) th.join();
    }
}
