//! The GEMM ceiling under our convolutions: the `gemm` crate on the per-image and
//! batch GEMM shapes of a ResNet-50 step at 224 px, in GFLOP/s. `bench/gemm_torch.py`
//! times `torch.mm` (MKL) on the same shapes. Threads: RAYON_NUM_THREADS.
//! On CPUs with AVX512-BF16, then our bf16 GEMM (`ops::bf16`) on the per-image shapes of
//! a ResNet-152 teacher at 224 px, on one thread (a teacher's images run in parallel,
//! each GEMM on one thread) and on all, including the packing of the columns; with each
//! kernel (AVX512-BF16's, and AMX's on CPUs that have it: `ops::bf16::amx`), and on the
//! grouped shapes of SENet-154 (few rows: AMX computes at least 16).
//!   cargo bench -p meal-models --bench gemm

use std::time::Instant;

/// (m, n, k): forward per-image 3x3 / 1x1 of layer1, layer2 3x3, batch GEMMs of
/// layer3/4 (batch 8), a weight gradient (long k), an input gradient (tall m).
const SHAPES: &[(usize, usize, usize)] = &[
    (64, 3136, 576),
    (256, 3136, 64),
    (64, 3136, 256),
    (128, 784, 1152),
    (256, 1568, 2304),
    (512, 392, 4608),
    (64, 576, 3136),
    (576, 3136, 64),
    (2048, 392, 512),
];

/// (m, n, k) of ResNet-152's per-image convolutions at 224: layer1 3x3 and 1x1, layer2
/// 3x3, layer3 3x3 and its 1x1s (most of the FLOPs), layer4's 3x3 over a batch of 8;
/// then one group of SENet-154's grouped 3x3s per stage (64 groups, 4-32 rows each).
const BF16_SHAPES: &[(usize, usize, usize)] = &[
    (64, 3136, 576),
    (256, 3136, 64),
    (128, 784, 1152),
    (256, 196, 2304),
    (1024, 196, 256),
    (256, 196, 1024),
    (512, 392, 4608),
    (4, 3136, 36),
    (8, 784, 72),
    (16, 196, 144),
    (32, 49, 288),
];

/// Seconds per call of `f` (three warm-up calls, then about 4 GFLOP of calls).
fn per_call(flop: f64, f: &mut dyn FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let iters = (4e9 / flop).max(3.0) as usize;
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

fn bf16_gemms() {
    use meal_models::ops::bf16;
    if !bf16::available() {
        println!("bf16: this CPU has no AVX512-BF16");
        return;
    }
    for &(m, n, k) in BF16_SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32) * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32) * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let kernels: &[bool] = if bf16::amx::available() {
            &[false, true]
        } else {
            &[false]
        };
        for &amx in kernels {
            let pa = bf16::PackedA::with_kernel(&a, m, k, k, amx);
            let flop = 2.0 * (m * n * k) as f64;
            let kernel = if amx { "amx" } else { "avx512bf16" };
            let mut line = format!("bf16 gemm ({kernel}) m{m} n{n} k{k}:");
            for parallel in [false, true] {
                // SAFETY: c holds the m x n result
                let dt = per_call(flop, &mut || unsafe {
                    bf16::gemm(&pa, &b, k, n, n, c.as_mut_ptr(), n, parallel)
                });
                let what = if parallel {
                    "all threads"
                } else {
                    "one thread"
                };
                line += &format!(" {:.1} GFLOP/s ({what})", flop / dt / 1e9);
            }
            println!("{line}");
        }
    }
}

fn main() {
    bf16_gemms();
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for &(m, n, k) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32) * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32) * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        // SAFETY: a, b and c hold the shapes given
        let dt = per_call(flop, &mut || unsafe {
            // row-major: c[m,n] = a[m,k] * b[k,n]
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        });
        println!("gemm m{m} n{n} k{k}: {:.1} GFLOP/s", flop / dt / 1e9);
    }
}
