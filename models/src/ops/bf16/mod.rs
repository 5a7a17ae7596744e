//! bf16 GEMMs for CPU inference, on CPUs with AVX512-BF16: the convolutions of a teacher
//! asked for `bf16` on the CPU run here, with everything else in f32, as PyTorch's CPU
//! autocast does (conv inputs and weights rounded to bf16, products accumulated in f32).
//! `vdpbf16ps` does two bf16 multiply-adds per f32 lane, twice an f32 FMA's work per
//! instruction: a 14x32 microkernel measured 155 vs 77 GFLOP/s for the same kernel in
//! f32 FMAs on one core of the AMD EPYC (Zen 4) of BENCHMARKS.md. On CPUs with AMX the
//! kernel is [`amx`]'s tile kernel instead, several times faster again.
//!
//! Layout: both operands are packed as bf16 pairs along `k` in one `u32` (`k` even and
//! odd in the low and high half), the weights in panels of [`MR`] rows `[k/2][MR]` (AMX:
//! [`amx`]'s blocks of 32 rows), the columns in panels of [`NR`] columns `[k/2][NR]`,
//! zero-padded; the kernel computes one `MR x NR` tile over the whole `k` (both panels
//! stay in L2: 28 `vdpbf16ps` per 184 bytes read, far below its bandwidth).

pub mod amx;

/// Rows of a weight panel (28 accumulators + 2 column vectors + 1 broadcast of 32 zmm).
pub const MR: usize = 14;
/// Columns of a column panel (two zmm of 16 f32).
pub const NR: usize = 32;

/// Whether this CPU has the instructions ([`gemm`] refuses to run elsewhere).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `v` rounded to bf16 (nearest, ties to even, as `vcvtneps2bf16`), as its bits.
fn bf(v: f32) -> u32 {
    half::bf16::from_f32(v).to_bits() as u32
}

/// The packed length of `k` values: `k/2` pairs, rounded up to whole tile rows (of
/// zeros) where the AMX kernel runs, on both operands so that they agree.
fn pairs(k: usize) -> usize {
    let kp = k.div_ceil(2);
    if amx::available() {
        kp.next_multiple_of(amx::KS)
    } else {
        kp
    }
}

/// Weights `[m, k]` (row-major, row stride `ld`) packed in [`MR`]-row panels, or in
/// [`amx::MB`]-row blocks for the AMX kernel.
pub struct PackedA {
    data: Vec<u32>,
    m: usize,
    kp: usize,
    amx: bool,
}

impl PackedA {
    /// Pack `m` rows of `k` values of `w` (row `i` at `w[i * ld..]`): each row rounded
    /// to bf16 pairs in one vector pass, then laid into its panel; for the AMX kernel
    /// where it runs, whatever `m`: it computes 16 or 32 rows a call, yet even for 4
    /// rows (a SENet-154 group) it measured ~1.7x the AVX512-BF16 kernel's 14
    /// (`cargo bench -p meal-models --bench gemm`, BENCHMARKS.md).
    pub fn new(w: &[f32], m: usize, k: usize, ld: usize) -> Self {
        Self::with_kernel(w, m, k, ld, amx::available())
    }

    /// As [`PackedA::new`], for the AMX kernel when `amx` (which [`amx::available`]
    /// must then be).
    pub fn with_kernel(w: &[f32], m: usize, k: usize, ld: usize, amx: bool) -> Self {
        use rayon::prelude::*;
        assert!(
            !amx || amx::available(),
            "bf16 GEMM: AMX asked for where it does not run"
        );
        let (kp, real) = (pairs(k), k.div_ceil(2));
        // rows per block and where pair p of a block's row i goes
        let (rows, at): (usize, fn(usize, usize) -> usize) = if amx {
            // [steps][MB][KS]
            (amx::MB, |i, p| {
                (p / amx::KS * amx::MB + i) * amx::KS + p % amx::KS
            })
        } else {
            // [kp][MR]
            (MR, |i, p| p * MR + i)
        };
        let mut data = vec![0u32; m.div_ceil(rows) * kp * rows];
        data.par_chunks_mut(kp * rows)
            .enumerate()
            .for_each(|(ib, block)| {
                let mut pairs = vec![0u32; real];
                for i in 0..rows.min(m - ib * rows) {
                    row_pairs(&w[(ib * rows + i) * ld..][..k], &mut pairs);
                    for (p, &v) in pairs.iter().enumerate() {
                        block[at(i, p)] = v;
                    }
                }
            });
        PackedA { data, m, kp, amx }
    }
}

/// `row` as bf16 pairs: `pairs[p] = bf(row[2p]) | bf(row[2p + 1]) << 16` (0 past the end).
fn row_pairs(row: &[f32], pairs: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the features were detected above.
        done = unsafe { x86::row_pairs(row, pairs) };
    }
    for p in done..pairs.len() {
        let hi = row.get(2 * p + 1).map_or(0, |&v| bf(v));
        pairs[p] = bf(row[2 * p]) | hi << 16;
    }
}

/// A per-row affine applied to the GEMM's sums before they are stored, `c[i][j] =
/// relu?(sum * scale[i] + shift[i])`: an eval-mode BatchNorm (+ReLU) after a
/// convolution, folded into its store instead of a pass of its own over the output. The
/// same operations as the separate pass (`ops::bn` `affine_fill`: a product, then a sum,
/// then the ReLU that keeps NaN), so the same floats.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Per row of `c`.
    pub scale: &'a [f32],
    /// Per row of `c`.
    pub shift: &'a [f32],
    /// `max(., 0)` after it (NaN kept).
    pub relu: bool,
}

/// The columns operand `[k, n]` packed in [`NR`]-column panels, `[n/NR][k/2][NR]`,
/// zero-padded (from [`pack_b`] or [`pack_rows`]).
pub struct PackedB {
    data: Vec<u32>,
    n: usize,
    kp: usize,
}

/// Pair `p` of rows (`lo`, and `hi` unless `k` is odd and this is the last pair), `n`
/// columns, into its slots of every panel of `out` (`kp` pairs per panel).
///
/// # Safety
/// `out` is valid for writes of `n.div_ceil(NR) * kp * NR` values, and no other thread
/// writes pair `p`'s slots meanwhile.
unsafe fn pack_pair(lo: &[f32], hi: Option<&[f32]>, out: *mut u32, p: usize, kp: usize, n: usize) {
    let at = |c: usize| ((c / NR) * kp + p) * NR + c % NR;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: features detected; every store is slot at(c..c+16) of pair p, inside
        // `out` (the caller's contract)
        done = x86::pack_pair_row(&lo[..n], hi.map(|h| &h[..n]), out.add(p * NR), kp * NR);
    }
    for c in done..n.div_ceil(NR) * NR {
        let v = if c < n {
            bf(lo[c]) | hi.map_or(0, |h| bf(h[c])) << 16
        } else {
            0
        };
        // SAFETY: as above
        *out.add(at(c)) = v;
    }
}

/// `k` rows of `n` columns packed pair by pair (pairs in parallel when `parallel`):
/// `pair(scratch, p, out)` packs pair `p` into `out` with [`pack_pair`], `scratch` its
/// task's own (from `init`).
fn pack_pairs<S>(
    k: usize,
    n: usize,
    parallel: bool,
    init: impl Fn() -> S + Sync + Send,
    pair: impl Fn(&mut S, usize, *mut u32) + Sync + Send,
) -> PackedB {
    use rayon::prelude::*;
    let (kp, real) = (pairs(k), k.div_ceil(2));
    let len = n.div_ceil(NR) * kp * NR;
    let mut data: Vec<u32> = Vec::with_capacity(len);
    let optr = data.as_mut_ptr() as usize;
    if parallel {
        (0..real)
            .into_par_iter()
            .for_each_init(&init, |s, p| pair(s, p, optr as *mut u32));
    } else {
        let mut s = init();
        (0..real).for_each(|p| pair(&mut s, p, optr as *mut u32));
    }
    for j in 0..n.div_ceil(NR) {
        // SAFETY: the padding pairs of panel j, inside the allocation of `len`
        unsafe {
            data.as_mut_ptr()
                .add((j * kp + real) * NR)
                .write_bytes(0, (kp - real) * NR)
        };
    }
    // SAFETY: every slot of every pair was written above (columns up to the padded width,
    // pairs up to the padded count)
    unsafe { data.set_len(len) };
    PackedB { data, n, kp }
}

/// Rows `[k, n]` of `b` (row `r` at `b[r * ld..]`) packed: each pair of rows read in
/// order, 16 columns at a time stored into their panel; pairs in parallel when
/// `parallel`.
///
/// # Panics
/// When `b` is shorter than the shape says.
pub fn pack_b(b: &[f32], k: usize, n: usize, ld: usize, parallel: bool) -> PackedB {
    let kp = pairs(k);
    assert!(
        k == 0 || b.len() >= (k - 1) * ld + n,
        "bf16 GEMM: b too short"
    );
    pack_pairs(
        k,
        n,
        parallel,
        || (),
        |_, p, out| {
            let lo = &b[2 * p * ld..][..n];
            let hi = (2 * p + 1 < k).then(|| &b[(2 * p + 1) * ld..][..n]);
            // SAFETY: `out` holds the panels of pack_pairs, pair p is this call's alone
            unsafe { pack_pair(lo, hi, out, p, kp, n) };
        },
    )
}

/// `k` rows of `n` columns packed from `row(r, buf)`, which writes row `r`'s `n` values
/// into `buf`: rows made on the fly (a convolution's column matrix, from its input),
/// never stored whole in f32. Pairs in parallel when `parallel`, each task with its own
/// two row buffers (in cache while they are packed).
pub fn pack_rows(
    k: usize,
    n: usize,
    parallel: bool,
    row: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> PackedB {
    let kp = pairs(k);
    let bufs = || (vec![0f32; n], vec![0f32; n]);
    pack_pairs(k, n, parallel, bufs, |(lo, hi), p, out| {
        row(2 * p, lo);
        let hi = (2 * p + 1 < k).then(|| {
            row(2 * p + 1, hi);
            &hi[..]
        });
        // SAFETY: `out` holds the panels of pack_pairs, pair p is this call's alone
        unsafe { pack_pair(lo, hi, out, p, kp, n) };
    })
}

/// Row-major `c[m, n] = a * b` (`c` row stride `ldc`, written whole), `a` packed, `b`
/// rows `[k, n]` with row stride `ldb`, in bf16 products with f32 sums: [`pack_b`], then
/// [`gemm_packed`].
///
/// # Safety
/// As [`gemm_packed`].
///
/// # Panics
/// Where [`available`] is false (the callers check it first), or when `b` is shorter
/// than the shape says.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    a: &PackedA,
    b: &[f32],
    k: usize,
    n: usize,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    parallel: bool,
) {
    assert!(available(), "bf16 GEMM on a CPU without AVX512-BF16");
    if a.m == 0 || n == 0 {
        return;
    }
    gemm_packed(a, &pack_b(b, k, n, ldb, parallel), c, ldc, parallel, None)
}

/// Row-major `c[m, n] = a * b` (`c` row stride `ldc`, written whole) of packed operands,
/// in bf16 products with f32 sums, through `epi` when given. Column panels in parallel
/// (rayon) when `parallel`.
///
/// # Safety
/// `c` is valid for writes of `(m - 1) * ldc + n` floats (it may be uninitialised) and
/// nothing else accesses them meanwhile.
///
/// # Panics
/// Where [`available`] is false, when the operands' `k` differ, or when `epi` has fewer
/// than `m` rows.
pub unsafe fn gemm_packed(
    a: &PackedA,
    bp: &PackedB,
    c: *mut f32,
    ldc: usize,
    parallel: bool,
    epi: Option<Epilogue>,
) {
    use rayon::prelude::*;
    assert!(available(), "bf16 GEMM on a CPU without AVX512-BF16");
    assert_eq!(a.kp, bp.kp, "bf16 GEMM: packed k differs");
    let (m, n, kp) = (a.m, bp.n, a.kp);
    if let Some(e) = epi {
        assert!(
            e.scale.len() >= m && e.shift.len() >= m,
            "bf16 GEMM: epilogue for {} rows, {m} wanted",
            e.scale.len().min(e.shift.len())
        );
    }
    if m == 0 || n == 0 {
        return;
    }
    let bp = &bp.data;
    let cptr = c as usize;
    let panel = |j: usize| {
        let (c0, w) = (j * NR, NR.min(n - j * NR));
        let bpan = &bp[j * kp * NR..][..kp * NR];
        #[cfg(target_arch = "x86_64")]
        if a.amx {
            return amx_panel(a, bpan, (cptr as *mut f32).add(c0), ldc, w, epi);
        }
        let mut tile = [0f32; MR * NR];
        for ib in 0..m.div_ceil(MR) {
            let apan = &a.data[ib * kp * MR..][..kp * MR];
            let rows = MR.min(m - ib * MR);
            let at = (cptr as *mut f32).add(ib * MR * ldc + c0);
            // this panel's rows of the epilogue (padded: the kernel reads MR of each)
            let mut rows_epi = [[0f32; MR]; 2];
            let e = epi.map(|e| {
                rows_epi[0][..rows].copy_from_slice(&e.scale[ib * MR..][..rows]);
                rows_epi[1][..rows].copy_from_slice(&e.shift[ib * MR..][..rows]);
                (&rows_epi, e.relu)
            });
            #[cfg(target_arch = "x86_64")]
            if rows == MR && w == NR {
                // a whole tile: stored straight into c (rows ib*MR.., columns c0..c0+NR,
                // this panel's own)
                x86::kernel(kp, apan.as_ptr(), bpan.as_ptr(), at, ldc, e);
                continue;
            } else {
                x86::kernel(kp, apan.as_ptr(), bpan.as_ptr(), tile.as_mut_ptr(), NR, e);
            }
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(tile.as_ptr().add(i * NR), at.add(i * ldc), w);
            }
        }
    };
    let panels = n.div_ceil(NR);
    if parallel {
        (0..panels).into_par_iter().for_each(panel);
    } else {
        (0..panels).for_each(panel);
    }
}

/// One panel of `c` (`w` columns from `c`) through the AMX kernel: blocks of 32 rows
/// (16 when that is all that is left), each tile stored straight into `c` when whole,
/// else through a scratch tile; then the epilogue over the rows, in place.
///
/// # Safety
/// As [`gemm_packed`], for this panel's columns; `a` is packed for AMX.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_panel(
    a: &PackedA,
    bpan: &[u32],
    c: *mut f32,
    ldc: usize,
    w: usize,
    epi: Option<Epilogue>,
) {
    let (m, mb) = (a.m, amx::MB);
    let block = a.kp * mb;
    let mut tile = [0f32; amx::MB * NR];
    amx::configure();
    for ib in 0..m.div_ceil(mb) {
        let rows = mb.min(m - ib * mb);
        let at = c.add(ib * mb * ldc);
        let ablk = a.data[ib * block..][..block].as_ptr();
        let steps = a.kp / amx::KS;
        if rows == mb && w == NR {
            amx::kernel(steps, ablk, bpan.as_ptr(), at, ldc, true);
        } else {
            amx::kernel(steps, ablk, bpan.as_ptr(), tile.as_mut_ptr(), NR, rows > 16);
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(tile.as_ptr().add(i * NR), at.add(i * ldc), w);
            }
        }
        if let Some(e) = epi {
            for i in 0..rows {
                let row = std::slice::from_raw_parts_mut(at.add(i * ldc), w);
                let r = ib * mb + i;
                affine_row(row, e.scale[r], e.shift[r], e.relu);
            }
        }
    }
    amx::release();
}

/// `row` through the epilogue's affine in place: a product, then a sum (no FMA: Rust
/// never contracts), then the ReLU that keeps NaN (as the AVX512-BF16 kernel's).
fn affine_row(row: &mut [f32], scale: f32, shift: f32, relu: bool) {
    for v in row {
        let y = *v * scale + shift;
        *v = if relu && y <= 0.0 { 0.0 } else { y };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
