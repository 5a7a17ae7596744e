//! The bf16 GEMM's kernel on CPUs with AMX (Intel Advanced Matrix Extensions, Sapphire
//! Rapids and later): `tdpbf16ps` multiplies a 16x32 bf16 tile by a 32x16 one into a
//! 16x16 f32 tile, 8192 multiply-adds per instruction, where AVX512-BF16's `vdpbf16ps`
//! does 32. Four accumulator tiles (32 rows x 32 columns of `c`) take two tiles of the
//! weights and two of the columns per step of 16 bf16 pairs (Intel SDM vol. 1 ch. 20,
//! "Intel AMX"; the 2x2 blocking of oneDNN's brgemm kernels). One core of a Xeon with
//! AMX here: ~700-850 GFLOP/s in this kernel against ~100-150 for the AVX512-BF16 one
//! (`cargo bench -p meal-models --bench gemm`, BENCHMARKS.md).
//!
//! Rust has no stable AMX intrinsics, so the instructions are inline assembly (stable),
//! each kernel one `asm!` block: the tile registers are never live across blocks.
//!
//! Layouts: the weights in blocks of [`MB`] rows, each `[steps][MB rows][KS pairs]`
//! (a tile: 16 rows of 64 contiguous bytes); the columns are [`super::PackedB`]'s panels
//! `[kp][NR]` unchanged (a tile: 16 pair rows of 64 bytes, row stride `NR * 4`), with
//! `kp` zero-padded to a multiple of [`KS`] on both sides.

use std::arch::asm;
use std::sync::OnceLock;

/// Rows of `c` one kernel call computes (two tiles of 16).
pub const MB: usize = 32;
/// bf16 pairs of `k` in one tile row (64 bytes).
pub const KS: usize = 16;

/// Whether AMX-BF16 runs here: the CPU has it (CPUID), the kernel gives this process the
/// tile state (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, kernel docs
/// `Documentation/arch/x86/xstate.rst`), AVX512-BF16 too (the packing and the stores use
/// it), and `MEAL_AMX` is not `0` (which keeps the AVX512-BF16 kernel, for comparison).
/// Decided once per process.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let off = !crate::switches::switch("MEAL_AMX", true);
        let ok = !off && super::available() && detect();
        tracing::debug!(amx = ok, "bf16 GEMM kernel chosen");
        ok
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE (Intel SDM vol. 2A, CPUID)
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every x86_64 CPU with AVX-512 (checked by the caller)
    let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    if leaf.edx >> 22 & 1 == 0 || leaf.edx >> 24 & 1 == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a system call with integer arguments; it only changes this process's
    // permitted register state (and fails on kernels before 5.16)
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `ldtilecfg`'s operand (palette 1): every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// The tiles of this thread configured for [`kernel`] (the configuration is per thread;
/// a rayon task may land on any worker, so each task configures before its kernels).
///
/// # Safety
/// [`available`] is true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn configure() {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    asm!("ldtilecfg [{0}]", in(reg) &cfg, options(nostack, readonly));
}

/// The tile state of this thread released (so a context switch need not save 8 KiB).
///
/// # Safety
/// [`available`] is true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// `c[i][j] = sum_p a[p][i] . b[p][j]` for `i < 32` (or `< 16` unless `two`), `j < 32`,
/// over `steps * KS` pairs: `a` one block of weights (`[steps][MB][KS]`), `b` one panel
/// (`[steps * KS][NR]`), `c` row-major with a row stride of `ldc` floats.
///
/// # Safety
/// [`configure`] ran on this thread; `a`, `b` hold what the shapes say; `c` is valid for
/// writes of the 16 or 32 rows of 32 floats.
#[cfg(target_arch = "x86_64")]
pub unsafe fn kernel(
    steps: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    two: bool,
) {
    let sc = ldc * 4;
    if two {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "tileloadd tmm4, [{a} + {s64}]",
            "tileloadd tmm6, [{b} + {s128}]",
            "tileloadd tmm7, [{b} + {s128} + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a} + {s64} + 1024]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            "3:",
            "tilestored [{c} + {sc}], tmm0",
            "tilestored [{c} + {sc} + 64], tmm1",
            "tilestored [{c16} + {sc}], tmm2",
            "tilestored [{c16} + {sc} + 64], tmm3",
            n = inout(reg) steps => _,
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            c = in(reg) c,
            c16 = in(reg) c.add(16 * ldc),
            sc = in(reg) sc,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            options(nostack),
        );
    } else {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "tileloadd tmm4, [{a} + {s64}]",
            "tileloadd tmm6, [{b} + {s128}]",
            "tileloadd tmm7, [{b} + {s128} + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            "3:",
            "tilestored [{c} + {sc}], tmm0",
            "tilestored [{c} + {sc} + 64], tmm1",
            n = inout(reg) steps => _,
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            c = in(reg) c,
            sc = in(reg) sc,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            options(nostack),
        );
    }
}

// the kernel's offsets (2048-byte steps, tile rows of 64 bytes) assume these
const _: () = assert!(super::NR == 32 && MB == 32 && KS == 16);
