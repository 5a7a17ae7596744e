//! Crop geometry: torchvision's `RandomResizedCrop` sampling, reproduced exactly, drawn
//! from a counter-based RNG so any crop is a pure function of (seed, sample id, crop index).
//!
//! Algorithm: torchvision `transforms.RandomResizedCrop.get_params` and
//! `RandomHorizontalFlip` (pytorch/vision, torchvision/transforms/transforms.py); see
//! docs/DATA.md. Crops are exchanged in FKD's normalised convention (szq0214/FKD,
//! FKD_SLG/utils_FKD.py): `top/H, left/W, height/H, width/W` plus a flip flag.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// torchvision's default RandomResizedCrop area scale range.
pub const DEFAULT_SCALE: (f64, f64) = (0.08, 1.0);
/// torchvision's default RandomResizedCrop aspect-ratio range, 3/4 to 4/3.
pub const DEFAULT_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// torchvision's number of rejection-sampling attempts before the central fallback.
const MAX_ATTEMPTS: usize = 10;
/// torchvision's RandomHorizontalFlip probability (MEAL V2 uses the default).
pub const FLIP_PROB: f64 = 0.5;

/// One crop of an image, normalised by the original image size (FKD's convention),
/// plus whether it is mirrored after cropping.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropRecord {
    /// Top edge divided by the image height.
    pub top: f32,
    /// Left edge divided by the image width.
    pub left: f32,
    /// Crop height divided by the image height.
    pub height: f32,
    /// Crop width divided by the image width.
    pub width: f32,
    /// Mirror horizontally after cropping.
    pub flip: bool,
}

/// As the store's columns name it: `top 0.1, left 0.2, height 0.5, width 0.4, flip`.
impl std::fmt::Display for CropRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "top {}, left {}, height {}, width {}{}",
            self.top,
            self.left,
            self.height,
            self.width,
            if self.flip { ", flipped" } else { "" }
        )
    }
}

/// A crop in integer pixels of a concrete image: rows `top..top+height`, columns
/// `left..left+width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelBox {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Number of rows.
    pub height: u32,
    /// Number of columns.
    pub width: u32,
}

impl CropRecord {
    /// The record of a pixel box on a `w` x `h` image.
    pub fn from_pixels(b: PixelBox, flip: bool, w: u32, h: u32) -> Self {
        CropRecord {
            top: (b.top as f64 / h as f64) as f32,
            left: (b.left as f64 / w as f64) as f32,
            height: (b.height as f64 / h as f64) as f32,
            width: (b.width as f64 / w as f64) as f32,
            flip,
        }
    }

    /// The integer pixel box of this record on a `w` x `h` image.
    ///
    /// Records made by [`CropRecord::from_pixels`] on the same size round-trip exactly
    /// (f32 keeps 24 bits, far more than any image side needs). The box is clamped to
    /// the image and is at least 1x1, so a record from another image size never
    /// indexes out of bounds.
    pub fn to_pixels(&self, w: u32, h: u32) -> PixelBox {
        let conv = |v: f32, n: u32| -> u32 {
            let x = (v as f64 * n as f64).round();
            if x.is_finite() && x > 0.0 {
                (x as u64).min(n as u64) as u32
            } else {
                0
            }
        };
        let top = conv(self.top, h).min(h.saturating_sub(1));
        let left = conv(self.left, w).min(w.saturating_sub(1));
        let height = conv(self.height, h).clamp(1, h - top);
        let width = conv(self.width, w).clamp(1, w - left);
        PixelBox {
            top,
            left,
            height,
            width,
        }
    }

    /// Whether all fields are finite and the box lies within the unit square.
    pub fn is_valid(&self) -> bool {
        let ok = |v: f32| v.is_finite() && (0.0..=1.0).contains(&v);
        ok(self.top)
            && ok(self.left)
            && ok(self.height)
            && ok(self.width)
            && self.height > 0.0
            && self.width > 0.0
            && self.top + self.height <= 1.0 + 1e-6
            && self.left + self.width <= 1.0 + 1e-6
    }
}

/// A source of uniform draws in `[0, 1)`. The sampler takes draws only through this,
/// so tests can inject the draws a torchvision run consumed.
pub trait UniformSource {
    /// The next uniform draw in `[0, 1)`.
    fn next_uniform(&mut self) -> f64;
}

/// Counter-based stream of uniforms keyed by (seed, sample id, crop index).
///
/// ChaCha8 with a 256-bit key derived from the seed and a 64-bit stream number
/// `sample_id << 32 | crop_index`: each crop has its own independent stream, so a
/// crop does not depend on the order, batch or thread it is drawn in.
pub struct CropRng(ChaCha8Rng);

impl CropRng {
    /// The stream of crop `crop` of sample `sample` under `seed`.
    pub fn new(seed: u64, sample: u32, crop: u32) -> Self {
        let mut rng = ChaCha8Rng::from_seed(expand_seed(seed, DOMAIN_CROP));
        rng.set_stream(((sample as u64) << 32) | crop as u64);
        CropRng(rng)
    }
}

impl UniformSource for CropRng {
    fn next_uniform(&mut self) -> f64 {
        u64_to_unit(self.0.next_u64())
    }
}

/// Domain separators so crop streams and shuffles under one seed never share a key.
pub(crate) const DOMAIN_CROP: u64 = 0x6372_6f70; // "crop"
pub(crate) const DOMAIN_SHUFFLE: u64 = 0x7368_7566; // "shuf"

/// A 256-bit ChaCha key from a 64-bit seed and a domain, by SplitMix64 (Steele et al.).
pub(crate) fn expand_seed(seed: u64, domain: u64) -> [u8; 32] {
    let mut state = seed ^ domain.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    key
}

/// The top 53 bits of `x` as a double in `[0, 1)`.
pub(crate) fn u64_to_unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// RandomResizedCrop parameters: area scale range and aspect-ratio range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RrcParams {
    /// Range of the crop area as a fraction of the image area.
    pub scale: (f64, f64),
    /// Range of the crop aspect ratio (width / height).
    pub ratio: (f64, f64),
}

impl Default for RrcParams {
    fn default() -> Self {
        RrcParams {
            scale: DEFAULT_SCALE,
            ratio: DEFAULT_RATIO,
        }
    }
}

impl RrcParams {
    /// Checked parameters: `0 < scale.0 <= scale.1 <= 1`, `0 < ratio.0 <= ratio.1`.
    pub fn new(scale: (f64, f64), ratio: (f64, f64)) -> Result<Self> {
        // each range checked on its own, so the error names the one at fault
        let finite = |a: f64, b: f64| a.is_finite() && b.is_finite();
        if !(finite(scale.0, scale.1) && scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
            return Err(DataError::param(
                "scale",
                format!("need 0 < min <= max <= 1, got {}..{}", scale.0, scale.1),
            ));
        }
        if !(finite(ratio.0, ratio.1) && ratio.0 > 0.0 && ratio.0 <= ratio.1) {
            return Err(DataError::param(
                "ratio",
                format!("need 0 < min <= max, got {}..{}", ratio.0, ratio.1),
            ));
        }
        Ok(RrcParams { scale, ratio })
    }

    /// torchvision's `RandomResizedCrop.get_params` on a `width` x `height` image,
    /// taking its uniform draws from `src` in the order torchvision consumes them:
    /// per attempt `scale`, `log-ratio`, and on success `top`, `left`.
    ///
    /// torchvision draws these as float32 tensors (`torch.empty(1).uniform_(a, b)`),
    /// the log-ratio bounds and `exp` in float32; `randint(lo, hi)` is modelled as
    /// `lo + floor(u * (hi - lo))`, and Python's `round` (half to even) as
    /// `round_ties_even`. `width`, `height` must be at least 1.
    pub fn sample_box(&self, width: u32, height: u32, src: &mut impl UniformSource) -> PixelBox {
        let (w_img, h_img) = (width as f64, height as f64);
        let area = w_img * h_img;
        let log_lo = (self.ratio.0 as f32).ln();
        let log_hi = (self.ratio.1 as f32).ln();
        for _ in 0..MAX_ATTEMPTS {
            let s = uniform_f32(src, self.scale.0, self.scale.1) as f64;
            let target_area = area * s;
            let aspect = uniform_f32(src, log_lo as f64, log_hi as f64).exp() as f64;
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if 0.0 < w && w <= w_img && 0.0 < h && h <= h_img {
                let (w, h) = (w as u32, h as u32);
                let top = randint(src, 0, height - h + 1);
                let left = randint(src, 0, width - w + 1);
                return PixelBox {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        // Fallback: the central crop, clamped to the ratio range.
        let in_ratio = w_img / h_img;
        let (min_r, max_r) = (self.ratio.0, self.ratio.1);
        let (w, h) = if in_ratio < min_r {
            let w = width;
            let h = (w as f64 / min_r).round_ties_even() as u32;
            (w, h)
        } else if in_ratio > max_r {
            let h = height;
            let w = (h as f64 * max_r).round_ties_even() as u32;
            (w, h)
        } else {
            (width, height)
        };
        let (w, h) = (w.clamp(1, width), h.clamp(1, height));
        PixelBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }

    /// One RandomResizedCrop + RandomHorizontalFlip draw as a normalised record.
    pub fn sample(&self, width: u32, height: u32, src: &mut impl UniformSource) -> CropRecord {
        let b = self.sample_box(width, height, src);
        // torchvision: `if torch.rand(1) < self.p: flip`
        let flip = (src.next_uniform() as f32 as f64) < FLIP_PROB;
        CropRecord::from_pixels(b, flip, width, height)
    }
}

/// A float32 uniform in `[lo, hi)` as `torch.empty(1).uniform_(lo, hi)` gives it.
fn uniform_f32(src: &mut impl UniformSource, lo: f64, hi: f64) -> f32 {
    (lo + (hi - lo) * src.next_uniform()) as f32
}

/// `torch.randint(lo, hi, (1,))` from one uniform: `lo + floor(u * (hi - lo))`.
fn randint(src: &mut impl UniformSource, lo: u32, hi: u32) -> u32 {
    let span = (hi - lo) as f64;
    lo + ((src.next_uniform() * span) as u32).min(hi - lo - 1)
}

/// Draws crop pools: crop `k` of sample `s` is always the same record for a seed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropSampler {
    /// Seed of the whole pool.
    pub seed: u64,
    /// RandomResizedCrop parameters.
    pub params: RrcParams,
}

impl CropSampler {
    /// A sampler with the given seed and parameters.
    pub fn new(seed: u64, params: RrcParams) -> Self {
        CropSampler { seed, params }
    }

    /// Crop `crop` of sample `sample`, an image of `width` x `height`.
    pub fn crop(&self, sample: u32, crop: u32, width: u32, height: u32) -> CropRecord {
        let mut rng = CropRng::new(self.seed, sample, crop);
        self.params.sample(width, height, &mut rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<f64>, usize);
    impl UniformSource for Fixed {
        fn next_uniform(&mut self) -> f64 {
            let v = self.0[self.1];
            self.1 += 1;
            v
        }
    }

    #[test]
    fn pixel_round_trip_is_exact() {
        for (w, h) in [(1u32, 1u32), (500, 375), (4031, 3023), (17, 9000)] {
            for k in 0..200u32 {
                let b = CropSampler::new(7, RrcParams::default()).params.sample_box(
                    w,
                    h,
                    &mut CropRng::new(3, k, 1),
                );
                let r = CropRecord::from_pixels(b, false, w, h);
                assert_eq!(r.to_pixels(w, h), b, "{w}x{h} crop {k}");
                assert!(r.is_valid());
            }
        }
    }

    #[test]
    fn fallback_when_draws_never_fit() {
        // scale 1 and an extreme ratio never fit a 100x10 image: 10 failed attempts.
        let p = RrcParams::new((1.0, 1.0), (1.0, 1.0)).unwrap();
        let mut src = Fixed(vec![0.5; 20], 0);
        let b = p.sample_box(100, 10, &mut src);
        assert_eq!(src.1, 20, "10 attempts x 2 draws");
        // in_ratio 10 > max 1: h = H, w = round(10 * 1)
        assert_eq!(
            b,
            PixelBox {
                top: 0,
                left: 45,
                height: 10,
                width: 10
            }
        );
    }

    #[test]
    fn streams_differ_by_key() {
        let a = CropRng::new(1, 2, 3).next_uniform();
        assert_ne!(a, CropRng::new(1, 2, 4).next_uniform());
        assert_ne!(a, CropRng::new(1, 3, 3).next_uniform());
        assert_ne!(a, CropRng::new(2, 2, 3).next_uniform());
        assert_eq!(a, CropRng::new(1, 2, 3).next_uniform());
    }

    #[test]
    fn bad_params_are_refused_with_the_flag() {
        let e = RrcParams::new((0.5, 0.1), DEFAULT_RATIO).unwrap_err();
        assert!(e.to_string().contains("scale"), "{e}");
        let e = RrcParams::new(DEFAULT_SCALE, (0.0, 1.0)).unwrap_err();
        assert!(e.to_string().contains("ratio"), "{e}");
    }
}
