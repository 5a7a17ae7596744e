//! The CUDA kernels (models/kernels/meal_ops.cu) on a machine without a GPU: compiled as
//! C++ against a CPU emulation of blocks, threads, shared memory and `__syncthreads`
//! (tests/kernels/emulate.h) and checked against their definitions written as plain
//! loops (tests/kernels/check.cpp). This covers the kernels' index arithmetic,
//! tie/NaN rules and reductions everywhere `make test` runs, and their bounds: the checks
//! are built with AddressSanitizer and UndefinedBehaviorSanitizer, so a read or write a
//! row past a buffer fails even where it would not change a compared value. Not
//! covered: races the OS happens not to schedule (a missing `__syncthreads` shows only
//! by chance), sizes near 2^31, and the device's own rounding; the kernels on a real GPU,
//! with the Rust launch code and cuBLAS around them, are src/ops/cuda/tests/.

use std::process::Command;

#[test]
fn cuda_kernels_equal_their_definitions_emulated_on_the_cpu() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let exe = dir.path().join("check");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kernels/check.cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        // -ffp-contract=off: no fused multiply-add the kernels' build forbids (build.rs,
        // --fmad=false) in the emulation or the references either
        .args([
            "-std=c++20",
            "-O1",
            "-pthread",
            "-ffp-contract=off",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            src,
            "-o",
        ])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("this test needs a C++20 compiler (`{cxx}`, or set CXX): {e}"));
    assert!(
        built.status.success(),
        "{cxx} {src}:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().expect("run the kernel checks");
    let out = String::from_utf8_lossy(&run.stdout);
    println!("{out}");
    // a sanitizer's report is on standard error
    assert!(
        run.status.success(),
        "kernel checks failed:\n{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // every check ran (a harness that stopped early must not pass)
    assert!(out.contains("108 checks, 0 failures"), "{out}");
}
