//! With the `cuda` feature, compile models/kernels/*.cu to PTX (nvcc, through cudaforge
//! as candle-kernels does) and write `$OUT_DIR/ptx.rs` with one `&str` constant per
//! file (`MEAL_OPS`), loaded at run time by `ops::cuda`. Without the feature: nothing.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    if let Err(e) = cuda::build() {
        panic!(
            "compiling models/kernels with nvcc: {e} (scripts/cuda-toolchain.sh sets up CUDA_HOME)"
        );
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    pub fn build() -> cudaforge::Result<()> {
        println!("cargo::rerun-if-changed=kernels");
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        cudaforge::KernelBuilder::new()
            .source_dir("kernels")
            .arg("-std=c++17")
            .arg("-O3")
            // no a*b+c contracted into one FMA: the kernels round as their CPU twins (Rust
            // never contracts), so GPU and CPU ops agree bit for bit where they can; the
            // kernels are memory-bound, the extra rounding step costs nothing measurable
            .arg("--fmad=false")
            .build_ptx()?
            .write(out.join("ptx.rs"))
    }
}
