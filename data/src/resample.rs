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

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for outputs `from..from + count` of
/// `out_size` outputs over the input interval `[in0, in1)` of an axis of `in_size`
/// pixels (each output's coefficients depend only on its index, so a window of the
/// outputs is computed alone, equal to the same outputs of the whole).
fn coeffs(
    in_size: usize,
    in0: f64,
    in1: f64,
    out_size: usize,
    (from, count): (usize, usize),
    k: Kernel,
) -> Coeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = k.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(count);
    let mut weights = vec![0i32; count * ksize];
    let mut kk = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in from..from + count {
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
        let row = &mut weights[(xx - from) * ksize..(xx - from + 1) * ksize];
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

/// Reusable buffers of [`resize_rgb8`] (one per thread).
#[derive(Default)]
pub struct Scratch {
    /// Horizontal pass output, rows x window-width pixels.
    tmp: Vec<u8>,
    /// The source box transposed: columns as contiguous runs of pixels.
    tsrc: Vec<u8>,
    /// Horizontal pass output in transposed layout.
    tinter: Vec<u8>,
    /// Accumulators of one output line.
    acc: Vec<i32>,
}

/// Copy the `cols` x `rows` RGB pixels of `src` (row stride `stride` bytes) into `dst`
/// transposed (`rows` pixels per column, contiguous).
fn transpose_rgb(src: &[u8], stride: usize, cols: usize, rows: usize, dst: &mut [u8]) {
    let dst = &mut dst[..cols * rows * 3];
    for y in 0..rows {
        let line = &src[y * stride..y * stride + cols * 3];
        // Column x of the source is line x of `dst`; pixel y of that line.
        for (px, col) in line.chunks_exact(3).zip(dst.chunks_exact_mut(rows * 3)) {
            let d = &mut col[y * 3..y * 3 + 3];
            d[0] = px[0];
            d[1] = px[1];
            d[2] = px[2];
        }
    }
}

/// One separable pass over lines: output line `o` = sum over taps `t` of
/// `weights[o][t] * line[bounds[o].0 + t]`, element-wise over the line's values.
/// `src` holds lines of `len` values; `dst` receives one line of `len` per output.
/// Contiguous lines make the multiply-add vectorise; integer sums are exact, so the
/// result equals Pillow's per-pixel loops bit for bit whatever the loop order.
fn pass_lines(src: &[u8], len: usize, c: &Coeffs, acc: &mut Vec<i32>, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
        // calling a `#[target_feature(enable = "avx2")]` function.
        unsafe { pass_lines_avx2(src, len, c, acc, dst) };
        return;
    }
    pass_lines_body(src, len, c, acc, dst)
}

/// [`pass_lines_body`] compiled with AVX2 (8 x i32 multiply-adds; the baseline x86-64
/// target has only SSE2, which lacks a 32-bit multiply).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pass_lines_avx2(src: &[u8], len: usize, c: &Coeffs, acc: &mut Vec<i32>, dst: &mut [u8]) {
    pass_lines_body(src, len, c, acc, dst)
}

#[inline(always)]
fn pass_lines_body(src: &[u8], len: usize, c: &Coeffs, acc: &mut Vec<i32>, dst: &mut [u8]) {
    let half = 1i32 << (PRECISION_BITS - 1);
    acc.resize(len, 0);
    for (o, out) in dst.chunks_exact_mut(len).enumerate() {
        let (first, n) = c.bounds[o];
        acc.fill(half);
        for (t, &w) in c.weights[o * c.ksize..o * c.ksize + n].iter().enumerate() {
            let line = &src[(first + t) * len..(first + t + 1) * len];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += v as i32 * w;
            }
        }
        for (d, &a) in out.iter_mut().zip(acc.iter()) {
            *d = clip8(a);
        }
    }
}

/// Pillow's `clip8`: the accumulator's integer part clamped to 0..=255 (its lookup
/// table indexed by `v >> PRECISION_BITS`), written branch-free so it vectorises.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize the `bw` x `bh` box at (`bx`, `by`) of an RGB8 image of width `src_w`
/// (row stride `src_w * 3`) to `out_w` x `out_h` and write the window `win` =
/// (`x0`, `y0`, `ww`, `wh`) of the result into `out` (`ww * wh * 3` bytes), exactly as
/// PIL's `img.crop(box).resize((out_w, out_h), filter).crop(window)`.
///
/// Only the window is computed: the eval transform's centre crop of a long thin image
/// (20 x 60000 px resized to 256 x 768000) needs its 224 x 224 window, not the whole
/// resize (590 MB). Both passes run as `pass_lines` over contiguous lines: the
/// horizontal one on the box transposed (columns become lines) and transposed back,
/// which costs two byte shuffles but lets every multiply-add vectorise.
#[allow(clippy::too_many_arguments)]
pub fn resize_rgb8(
    src: &[u8],
    src_w: usize,
    (bx, by, bw, bh): (usize, usize, usize, usize),
    (out_w, out_h): (usize, usize),
    (x0, y0, ww, wh): (usize, usize, usize, usize),
    k: Kernel,
    scratch: &mut Scratch,
    out: &mut [u8],
) {
    debug_assert_eq!(out.len(), ww * wh * 3);
    debug_assert!(x0 + ww <= out_w && y0 + wh <= out_h);
    let stride = src_w * 3;
    let need_h = out_w != bw;
    let need_v = out_h != bh;
    // an axis left at its size is a plain crop of the box: the window moves the box
    let (bx, bw) = if need_h { (bx, bw) } else { (bx + x0, ww) };
    let (by, bh) = if need_v { (by, bh) } else { (by + y0, wh) };
    let box_at = |y: usize| (by + y) * stride + bx * 3;
    if !need_h && !need_v {
        for y in 0..bh {
            out[y * ww * 3..(y + 1) * ww * 3].copy_from_slice(&src[box_at(y)..box_at(y) + bw * 3]);
        }
        return;
    }
    let vert = coeffs(bh, 0.0, bh as f64, out_h, (y0, wh), k);
    let Scratch {
        tmp,
        tsrc,
        tinter,
        acc,
    } = scratch;
    // Rows the vertical pass reads (Pillow's ybox_first..ybox_last).
    let (y_first, y_last) = if need_v {
        let (s, n) = vert.bounds[wh - 1];
        (vert.bounds[0].0, s + n)
    } else {
        (0, bh)
    };
    let rows = y_last - y_first;
    if need_h {
        let horiz = coeffs(bw, 0.0, bw as f64, out_w, (x0, ww), k);
        // columns the horizontal pass reads
        let (x_first, x_last) = {
            let (s, n) = horiz.bounds[ww - 1];
            (horiz.bounds[0].0, s + n)
        };
        let mut horiz = horiz;
        for b in horiz.bounds.iter_mut() {
            b.0 -= x_first;
        }
        let cols = x_last - x_first;
        tsrc.resize(cols * rows * 3, 0);
        transpose_rgb(
            &src[box_at(y_first) + x_first * 3..],
            stride,
            cols,
            rows,
            tsrc,
        );
        tinter.resize(ww * rows * 3, 0);
        pass_lines(tsrc, rows * 3, &horiz, acc, tinter);
        let dst: &mut [u8] = if need_v {
            tmp.resize(rows * ww * 3, 0);
            tmp
        } else {
            out
        };
        transpose_rgb(tinter, rows * 3, rows, ww, dst);
        if !need_v {
            return;
        }
    }
    let mut vert = vert;
    for b in vert.bounds.iter_mut() {
        b.0 -= y_first;
    }
    if need_h {
        pass_lines(tmp, ww * 3, &vert, acc, out);
    } else {
        // The box's rows are not contiguous lines of the image: copy them out first.
        tmp.resize(rows * bw * 3, 0);
        for y in 0..rows {
            tmp[y * bw * 3..(y + 1) * bw * 3]
                .copy_from_slice(&src[box_at(y_first + y)..box_at(y_first + y) + bw * 3]);
        }
        pass_lines(tmp, bw * 3, &vert, acc, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(97, 16), (9, 45), (1, 32), (500, 224), (224, 500)] {
            for k in [Kernel::Triangle, Kernel::Cubic] {
                let c = coeffs(n_in, 0.0, n_in as f64, n_out, (0, n_out), k);
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
        let mut scratch = Scratch::default();
        for k in [Kernel::Triangle, Kernel::Cubic] {
            resize_rgb8(
                &src,
                31,
                (0, 0, 31, 17),
                (12, 40),
                (0, 0, 12, 40),
                k,
                &mut scratch,
                &mut out,
            );
            assert!(out.iter().all(|&v| v == 77), "{k:?}");
        }
    }

    /// A window of the resize equals that crop of the whole resize, on every path
    /// (both axes resized, one of them kept, neither), for both filters.
    #[test]
    fn a_window_equals_the_crop_of_the_whole() {
        let (w, h) = (37usize, 23usize);
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 97 % 251) as u8).collect();
        let bx = (3, 2, 30, 19);
        let mut scratch = Scratch::default();
        for k in [Kernel::Triangle, Kernel::Cubic] {
            for (ow, oh) in [(64, 41), (11, 7), (30, 41), (64, 19), (30, 19)] {
                let mut whole = vec![0u8; ow * oh * 3];
                resize_rgb8(
                    &src,
                    w,
                    bx,
                    (ow, oh),
                    (0, 0, ow, oh),
                    k,
                    &mut scratch,
                    &mut whole,
                );
                for (x0, y0, ww, wh) in
                    [(0, 0, 5, 4), (ow - 6, oh - 3, 6, 3), (ow / 3, oh / 2, 4, 3)]
                {
                    let mut win = vec![0u8; ww * wh * 3];
                    let r = (x0, y0, ww, wh);
                    resize_rgb8(&src, w, bx, (ow, oh), r, k, &mut scratch, &mut win);
                    for y in 0..wh {
                        let a = &whole[((y0 + y) * ow + x0) * 3..((y0 + y) * ow + x0 + ww) * 3];
                        assert_eq!(
                            &win[y * ww * 3..(y + 1) * ww * 3],
                            a,
                            "{k:?} {ow}x{oh} {r:?}"
                        );
                    }
                }
            }
        }
    }
}
