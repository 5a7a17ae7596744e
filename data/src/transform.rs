//! Replay of a crop record and the eval transform: cut, resize with PIL's antialiased
//! filters, flip, normalise, and write into a caller's f32 CHW buffer.
//!
//! Resizing is [`crate::resample`], PIL's `ImagingResample` transcribed (support widened
//! by the downscale factor, 22-bit fixed-point coefficients, horizontal then vertical
//! pass); parity is tested against PIL on committed fixtures (data/tests/resize_parity.rs). Normalisation is torchvision's
//! `ToTensor` (`x / 255`) then `Normalize` (`(x - mean) / std`), in f32, in that order.
//! A crop can also be written as its raw 8-bit levels ([`CropPixel`] for `u8`), to be
//! normalised later by the same table ([`Normalize::lut`]) where the network runs:
//! a quarter of the bytes to copy to a GPU.

use std::cell::RefCell;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crop::{CropRecord, PixelBox};
use crate::decode::RgbImage;
use crate::error::{DataError, Result};
use crate::resample::{resize_rgb8, Kernel, Scratch};

/// ImageNet channel means (torchvision / timm `IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (torchvision / timm `IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The default eval crop fraction, 224/256 = 0.875 (torchvision reference scripts,
/// MEAL V2 `test.py`: shorter side 256, then a centre crop of 224).
pub const DEFAULT_CROP_PCT: f64 = 0.875;

/// Resampling filter, PIL's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// PIL `BILINEAR` (triangle, support 1): torchvision's default, the student's.
    Bilinear,
    /// PIL `BICUBIC` (Keys cubic, a = -0.5, support 2): timm's teachers.
    Bicubic,
}

impl Filter {
    fn kernel(self) -> Kernel {
        match self {
            Filter::Bilinear => Kernel::Triangle,
            Filter::Bicubic => Kernel::Cubic,
        }
    }
}

impl std::str::FromStr for Filter {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bilinear" => Ok(Filter::Bilinear),
            "bicubic" => Ok(Filter::Bicubic),
            _ => Err(DataError::param(
                "filter",
                format!("{s:?} (expected bilinear or bicubic)"),
            )),
        }
    }
}

/// Per-channel normalisation, applied after scaling to `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Channel means (R, G, B).
    pub mean: [f32; 3],
    /// Channel standard deviations (R, G, B).
    pub std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize::IMAGENET
    }
}

impl Normalize {
    /// ImageNet's mean and std (the default).
    pub const IMAGENET: Normalize = Normalize {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };

    /// For each channel, the normalised value of each 8-bit level, computed exactly as
    /// torchvision does per pixel (`(v / 255 - mean) / std` in f32). Whoever normalises
    /// raw levels later uses this table, so both routes give the same floats.
    pub fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        lut
    }
}

/// What one crop becomes: output side, filter, normalisation, and for the eval
/// transform the centre-crop fraction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropSpec {
    /// Output side S (the tensor is 3 x S x S).
    pub size: u32,
    /// Resampling filter.
    pub filter: Filter,
    /// Normalisation.
    pub normalize: Normalize,
    /// Eval only: the shorter side is resized to `floor(S / crop_pct)` before the
    /// centre crop (timm `transforms_imagenet_eval`, torchvision `Resize(int(S / pct))`).
    #[serde(default = "default_crop_pct")]
    pub crop_pct: f64,
}

fn default_crop_pct() -> f64 {
    DEFAULT_CROP_PCT
}

impl CropSpec {
    /// Floats one crop occupies in a CHW buffer: `3 * S * S`.
    pub fn len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Whether the output is empty (size 0; refused by [`CropSpec::new`]).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// A checked spec.
    pub fn new(size: u32, filter: Filter, normalize: Normalize) -> Result<Self> {
        if size == 0 || size > 4096 {
            return Err(DataError::param(
                "size",
                format!("{size} (expected 1..=4096)"),
            ));
        }
        // pixels are on the [0, 1] scale, as torchvision's ToTensor gives them: a mean
        // or deviation of the 0-255 scale (123.675, 58.395) or a degenerate one (a std of
        // 1e-38 made every label one-hot) is refused
        if normalize.std.iter().any(|s| !(1e-3..=10.0).contains(s))
            || normalize.mean.iter().any(|m| !(-1.0..=2.0).contains(m))
        {
            return Err(DataError::param(
                "mean/std",
                format!(
                    "mean {:?}, std {:?}: means must lie in [-1, 2] and standard deviations \
                     in [0.001, 10], on the [0, 1] pixel scale (ImageNet's: mean \
                     0.485:0.456:0.406, std 0.229:0.224:0.225)",
                    normalize.mean, normalize.std
                ),
            ));
        }
        Ok(CropSpec {
            size,
            filter,
            normalize,
            crop_pct: DEFAULT_CROP_PCT,
        })
    }

    /// The same spec with eval crop fraction `pct` (in [0.01, 1]).
    pub fn with_crop_pct(self, pct: f64) -> Result<Self> {
        // (timm's presets use 0.75..1; below 0.01 the resize would be over 100 times
        // the crop a side, a typo rather than a transform)
        if !(0.01..=1.0).contains(&pct) {
            return Err(DataError::param(
                "crop_pct",
                format!("{pct} (expected a fraction in [0.01, 1])"),
            ));
        }
        Ok(CropSpec {
            crop_pct: pct,
            ..self
        })
    }
}

/// What one element of a crop is written as: `f32`, the normalised network input, or
/// `u8`, the raw 8-bit level (normalised later with [`Normalize::lut`]).
pub trait CropPixel: Copy + Default + Send + Sync + 'static {
    /// The element for 8-bit level `v` of channel `c` (`lut` is the spec's table).
    fn from_level(lut: &[[f32; 256]; 3], c: usize, v: u8) -> Self;
}

impl CropPixel for f32 {
    #[inline(always)]
    fn from_level(lut: &[[f32; 256]; 3], c: usize, v: u8) -> Self {
        lut[c][v as usize]
    }
}

impl CropPixel for u8 {
    #[inline(always)]
    fn from_level(_: &[[f32; 256]; 3], _: usize, v: u8) -> Self {
        v
    }
}

/// Reusable per-thread state: the resizer's buffers and the u8 scratch image.
#[derive(Default)]
pub struct Replayer {
    tmp: Scratch,
    scratch: Vec<u8>,
    lut: Option<(Normalize, Box<[[f32; 256]; 3]>)>,
}

thread_local! {
    static REPLAYER: RefCell<Replayer> = RefCell::new(Replayer::default());
}

/// Run `f` with this thread's [`Replayer`].
pub fn with_replayer<T>(f: impl FnOnce(&mut Replayer) -> T) -> T {
    REPLAYER.with(|r| f(&mut r.borrow_mut()))
}

impl Replayer {
    /// Resize the pixel box `b` of `img` to `out` = (width, height) and keep the window
    /// `win` = (x, y, width, height) of it in the scratch buffer.
    fn resize(
        &mut self,
        img: &RgbImage,
        b: PixelBox,
        out: (usize, usize),
        win: (usize, usize, usize, usize),
        filter: Filter,
    ) {
        self.scratch.resize(win.2 * win.3 * 3, 0);
        resize_rgb8(
            &img.data,
            img.width as usize,
            (
                b.left as usize,
                b.top as usize,
                b.width as usize,
                b.height as usize,
            ),
            out,
            win,
            filter.kernel(),
            &mut self.tmp,
            &mut self.scratch,
        );
    }

    fn lut(&mut self, n: &Normalize) -> &[[f32; 256]; 3] {
        if self.lut.as_ref().map(|(k, _)| k != n).unwrap_or(true) {
            self.lut = Some((*n, Box::new(n.lut())));
        }
        &self.lut.as_ref().expect("set above").1
    }

    /// Write the `S x S` window at (`x0`, `y0`) of the scratch image (of width
    /// `src_w`) into `out` as CHW [`CropPixel`]s, mirrored if `flip`.
    #[allow(clippy::too_many_arguments)] // a private helper; the window is 4 numbers
    fn emit<P: CropPixel>(
        &mut self,
        src_w: u32,
        x0: u32,
        y0: u32,
        s: u32,
        flip: bool,
        n: &Normalize,
        out: &mut [P],
    ) {
        let scratch = std::mem::take(&mut self.scratch);
        let lut = self.lut(n);
        let s = s as usize;
        let plane = s * s;
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        for y in 0..s {
            let row_start = ((y0 as usize + y) * src_w as usize + x0 as usize) * 3;
            let row = &scratch[row_start..row_start + s * 3];
            let o = y * s;
            for x in 0..s {
                let xs = if flip { s - 1 - x } else { x };
                let p = &row[xs * 3..xs * 3 + 3];
                r_out[o + x] = P::from_level(lut, 0, p[0]);
                g_out[o + x] = P::from_level(lut, 1, p[1]);
                b_out[o + x] = P::from_level(lut, 2, p[2]);
            }
        }
        self.scratch = scratch;
    }

    /// Replay `rec` on `img`: cut its box, resize to `spec.size` square, flip, normalise,
    /// write `3 * S * S` values (CHW) into `out`. `path` names the image in errors.
    pub fn replay<P: CropPixel>(
        &mut self,
        img: &RgbImage,
        rec: &CropRecord,
        spec: &CropSpec,
        out: &mut [P],
        path: &Path,
    ) -> Result<()> {
        check_out(out, spec, path)?;
        let b = rec.to_pixels(img.width, img.height);
        let side = spec.size as usize;
        self.resize(img, b, (side, side), (0, 0, side, side), spec.filter);
        self.emit(spec.size, 0, 0, spec.size, rec.flip, &spec.normalize, out);
        Ok(())
    }

    /// The eval transform: resize the shorter side to `floor(S / crop_pct)` (the longer
    /// side `int(new_short * long / short)`, torchvision `Resize`), centre-crop S
    /// (torchvision `CenterCrop`: offset `int(round((n - S) / 2))`), normalise into `out`.
    pub fn eval<P: CropPixel>(
        &mut self,
        img: &RgbImage,
        spec: &CropSpec,
        out: &mut [P],
        path: &Path,
    ) -> Result<()> {
        check_out(out, spec, path)?;
        let (new_w, new_h) = eval_resize_dims(img.width, img.height, spec.size, spec.crop_pct);
        let full = PixelBox {
            top: 0,
            left: 0,
            height: img.height,
            width: img.width,
        };
        let s = spec.size as u64;
        // the resize is at least S a side (crop_pct <= 1): only its centre S x S is made
        let top = ((new_h - s) as f64 / 2.0).round_ties_even() as usize;
        let left = ((new_w - s) as f64 / 2.0).round_ties_even() as usize;
        let (size, s) = ((new_w as usize, new_h as usize), s as usize);
        self.resize(img, full, size, (left, top, s, s), spec.filter);
        self.emit(s as u32, 0, 0, s as u32, false, &spec.normalize, out);
        Ok(())
    }
}

fn check_out<P>(out: &[P], spec: &CropSpec, path: &Path) -> Result<()> {
    if out.len() != spec.len() {
        return Err(DataError::Resize {
            path: path.to_path_buf(),
            reason: format!(
                "output buffer holds {} values, need {}",
                out.len(),
                spec.len()
            ),
        });
    }
    Ok(())
}

/// Image size after the eval transform's resize, for a `w` x `h` image, crop `s` and
/// crop fraction `crop_pct`. Computed in f64 exactly as Python's
/// `math.floor(s / crop_pct)` (timm) and `int(new_short * long / short)` (torchvision).
pub fn eval_resize_dims(w: u32, h: u32, s: u32, crop_pct: f64) -> (u64, u64) {
    let short_target = (s as f64 / crop_pct).floor() as u64;
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (short_target as f64 * long as f64 / short as f64) as u64;
    if w <= h {
        (short_target, new_long.max(1))
    } else {
        (new_long.max(1), short_target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisations_off_the_unit_pixel_scale_are_refused() {
        let spec = |mean: f32, std: f32| {
            CropSpec::new(
                8,
                Filter::Bilinear,
                Normalize {
                    mean: [mean; 3],
                    std: [std; 3],
                },
            )
        };
        assert!(spec(0.485, 0.229).is_ok() && spec(0.5, 0.5).is_ok() && spec(0.0, 1.0).is_ok());
        // 0-255 scale values, a vanishing or absurd deviation, non-finite values
        for (m, s) in [
            (123.675, 0.229),
            (0.5, 58.395),
            (0.5, 1e-38),
            (1e30, 0.5),
            (f32::NAN, 0.5),
        ] {
            let e = spec(m, s).unwrap_err().to_string();
            assert!(e.contains("[0, 1] pixel scale"), "{m} {s}: {e}");
        }
    }

    #[test]
    fn eval_dims_follow_torchvision() {
        // 500x375 at S=224: short 256, long int(256*500/375) = 341
        assert_eq!(eval_resize_dims(500, 375, 224, 0.875), (341, 256));
        assert_eq!(eval_resize_dims(375, 500, 224, 0.875), (256, 341));
        assert_eq!(eval_resize_dims(100, 100, 112, 0.875), (128, 128));
        // timm resnet50.a1_in1k: crop_pct 0.95 -> floor(224 / 0.95) = 235
        assert_eq!(eval_resize_dims(500, 375, 224, 0.95), (313, 235));
    }

    #[test]
    fn lut_matches_formula() {
        let n = Normalize::default();
        let lut = n.lut();
        assert_eq!(lut[0][0], (0.0 - 0.485f32) / 0.229);
        assert_eq!(lut[2][255], (1.0 - 0.406f32) / 0.225);
    }
}
