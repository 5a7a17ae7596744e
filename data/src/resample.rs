//! PIL's antialiased resampling (`Image.resize` with BILINEAR or BICUBIC), bit for bit.
//!
//! A transcription of Pillow's `libImaging/Resample.c` (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`,
//! `ImagingResampleInner`): the filter support widened by the downscale factor, double
//! coefficients normalised per output pixel then rounded to 22-bit fixed point, the
//! horizontal pass first into an 8-bit intermediate (clipped), then the vertical pass.
//!
//! Why not fast_image_resize: we measured it against PIL on our fixtures (it was this
//! crate's first resizer): 15-25% of output values off by one level and, for bicubic,
//! isolated values off by up to 9, because it runs the vertical pass first and uses
//! 16-bit coefficients. Soft labels are computed on these pixels and compared with
//! PyTorch pipelines, so we keep PIL's exact arithmetic; per output value it costs a
//! few integer multiply-adds, far below the JPEG decode (BENCHMARKS.md).

/// Fixed-point precision of the 8-bit path: `32 - 8 - 2` (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's resampling filters with their supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Triangle, support 1 (`bilinear_filter`).
    Triangle,
    /// Keys cubic with a = -0.5, support 2 (`bicubic_filter`).
    Cubic,
}

impl Kernel {
    fn support(self) -> f64 {
        match self {
            Kernel::Triangle => 1.0,
            Kernel::Cubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Kernel::Triangle => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Kernel::Cubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per output pixel: first input index, tap count, and the fixed-point weights
/// (`ksize` slots per output, unused slots zero).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for `out_size` outputs over the input
/// interval `[in0, in1)` of an axis of `in_size` pixels.
fn coeffs(in_size: usize, in0: f64, in1: f64, out_size: usize, k: Kernel) -> Coeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = k.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut kk = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; negatives are clamped to 0 just after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, w) in kk.iter_mut().enumerate().take(n) {
            *w = k.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let w = if ww != 0.0 { kk[x] / ww } else { kk[x] };
            let f = w * (1u32 << PRECISION_BITS) as f64;
            row[x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: the accumulator's integer part clamped to 0..=255 (its lookup
/// table indexed by `v >> PRECISION_BITS`), written branch-free so it vectorises.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize the `bw` x `bh` box at (`bx`, `by`) of an RGB8 image of width `src_w`
/// (row stride `src_w * 3`) to `out_w` x `out_h`, into `out` (`out_w * out_h * 3`
/// bytes), exactly as PIL's `img.crop(box).resize((out_w, out_h), filter)`.
/// `tmp` is scratch space reused between calls.
#[allow(clippy::too_many_arguments)]
pub fn resize_rgb8(
    src: &[u8],
    src_w: usize,
    (bx, by, bw, bh): (usize, usize, usize, usize),
    out_w: usize,
    out_h: usize,
    k: Kernel,
    tmp: &mut Vec<u8>,
    out: &mut [u8],
) {
    debug_assert_eq!(out.len(), out_w * out_h * 3);
    let stride = src_w * 3;
    let row = |y: usize| &src[(by + y) * stride + bx * 3..(by + y) * stride + (bx + bw) * 3];
    let need_h = out_w != bw;
    let need_v = out_h != bh;
    let vert = coeffs(bh, 0.0, bh as f64, out_h, k);
    if !need_h && !need_v {
        for y in 0..bh {
            out[y * out_w * 3..(y + 1) * out_w * 3].copy_from_slice(row(y));
        }
        return;
    }
    // Horizontal pass over the rows the vertical pass will read.
    let (y_first, y_last) = if need_v {
        let (s, n) = vert.bounds[out_h - 1];
        (vert.bounds[0].0, s + n)
    } else {
        (0, bh)
    };
    let horiz_rows = y_last - y_first;
    let (h_src, h_stride): (&[u8], usize) = if need_h {
        let horiz = coeffs(bw, 0.0, bw as f64, out_w, k);
        let dst: &mut [u8] = if need_v {
            tmp.resize(horiz_rows * out_w * 3, 0);
            &mut tmp[..]
        } else {
            &mut out[..]
        };
        for yy in 0..horiz_rows {
            let src_row = row(y_first + yy);
            let dst_row = &mut dst[yy * out_w * 3..(yy + 1) * out_w * 3];
            for (xx, px) in dst_row.chunks_exact_mut(3).enumerate() {
                let (xmin, n) = horiz.bounds[xx];
                // Exact-length slices let the compiler drop the bounds checks.
                let w = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let p = &src_row[xmin * 3..(xmin + n) * 3];
                let half = 1i32 << (PRECISION_BITS - 1);
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (c, q) in w.iter().zip(p.chunks_exact(3)) {
                    s0 += q[0] as i32 * c;
                    s1 += q[1] as i32 * c;
                    s2 += q[2] as i32 * c;
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            }
        }
        if !need_v {
            return;
        }
        (&tmp[..], out_w * 3)
    } else {
        (&src[by * stride + bx * 3..], stride)
    };
    // Vertical pass; rows of `h_src` are numbered from `y_first` (or 0 when the
    // horizontal pass was skipped and `h_src` is the box itself).
    let base = if need_h { y_first } else { 0 };
    let half = 1i32 << (PRECISION_BITS - 1);
    let width_vals = out_w * 3;
    let mut acc = vec![0i32; width_vals];
    for yy in 0..out_h {
        let (ymin, n) = vert.bounds[yy];
        let w = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        acc.fill(half);
        for (j, c) in w.iter().enumerate() {
            let r = (ymin + j - base) * h_stride;
            let src_row = &h_src[r..r + width_vals];
            for (a, &v) in acc.iter_mut().zip(src_row) {
                *a += v as i32 * c;
            }
        }
        for (o, &a) in out[yy * width_vals..(yy + 1) * width_vals]
            .iter_mut()
            .zip(&acc)
        {
            *o = clip8(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(97, 16), (9, 45), (1, 32), (500, 224), (224, 500)] {
            for k in [Kernel::Triangle, Kernel::Cubic] {
                let c = coeffs(n_in, 0.0, n_in as f64, n_out, k);
                for xx in 0..n_out {
                    let s: i64 = c.weights[xx * c.ksize..(xx + 1) * c.ksize]
                        .iter()
                        .map(|&w| w as i64)
                        .sum();
                    let one = 1i64 << PRECISION_BITS;
                    assert!(
                        (s - one).abs() <= c.ksize as i64,
                        "{n_in}->{n_out} {k:?} {xx}: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 31 * 17 * 3];
        let mut out = vec![0u8; 12 * 40 * 3];
        let mut tmp = Vec::new();
        for k in [Kernel::Triangle, Kernel::Cubic] {
            resize_rgb8(&src, 31, (0, 0, 31, 17), 12, 40, k, &mut tmp, &mut out);
            assert!(out.iter().all(|&v| v == 77), "{k:?}");
        }
    }
}
