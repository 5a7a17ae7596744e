//! [`Crops`]: one sample's stored crops, borrowed from the shard's memory map where the
//! file allows it, decoded per field on access with no allocation.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use meal_data::CropRecord;

use super::label::{SoftLabel, TopKRules};
use super::shard::CropLabel;

/// One sample's stored crops (in crop-id order, as written).
///
/// Reading a field decodes it from the mapped bytes; nothing is copied or allocated
/// until [`Crops::label`], [`Crops::get`] or [`Crops::to_vec`] ask for owned values.
pub struct Crops<'a>(Inner<'a>);

enum Inner<'a> {
    Mapped(Mapped<'a>),
    Decoded(Vec<CropLabel>),
}

/// Column slices of one sample's rows, each starting at its first row.
pub(crate) struct Mapped<'a> {
    pub n: usize,
    pub crop: CropIds<'a>,
    /// top, left, height, width
    pub boxes: [F32Col<'a>; 4],
    pub flip: FlipCol<'a>,
    pub label: LabelCols<'a>,
}

/// Little-endian f32 values `stride` bytes apart.
#[derive(Clone, Copy)]
pub(crate) struct F32Col<'a> {
    b: &'a [u8],
    stride: usize,
}

impl<'a> F32Col<'a> {
    /// `n` values from the start of `b` (panics, at construction, when `b` is short:
    /// callers slice from validated offsets).
    pub fn new(b: &'a [u8], stride: usize, n: usize) -> Self {
        let len = if n == 0 { 0 } else { stride * (n - 1) + 4 };
        F32Col {
            b: &b[..len],
            stride,
        }
    }
    #[inline]
    fn get(&self, i: usize) -> f32 {
        let o = i * self.stride;
        f32::from_le_bytes([self.b[o], self.b[o + 1], self.b[o + 2], self.b[o + 3]])
    }
}

pub(crate) enum CropIds<'a> {
    /// ids run from this one
    From(u16),
    /// little-endian u16 per row
    U16(&'a [u8]),
}

pub(crate) enum FlipCol<'a> {
    /// Parquet PLAIN booleans: LSB-first bits from bit `bit` of `b`
    Bits { b: &'a [u8], bit: usize },
    /// one byte per row
    Bytes(&'a [u8]),
}

pub(crate) enum LabelCols<'a> {
    /// f16 probabilities, `classes` per row
    Dense { p: &'a [u8], classes: usize },
    /// `k` classes (little-endian 32-bit, Parquet's INT32 for uint16) and `k` f16 or f32
    /// probabilities per row
    TopK {
        cls: &'a [u8],
        p: &'a [u8],
        k: usize,
        f32: bool,
    },
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
}

/// IEEE half to single, exact for every value (zero, subnormals, inf, NaN), inlined.
/// `half`'s scalar `to_f32` checks for F16C at run time and calls out per value, about
/// twice the cost of this on the top-k read path (BENCHMARKS.md); bulk dense rows still
/// go through `half`'s vector conversion. After F. Giesen's `half_to_float_fast`.
#[inline]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    const SHIFTED_EXP: u32 = 0x7c00 << 13;
    let mut o = ((h & 0x7fff) as u32) << 13;
    let exp = SHIFTED_EXP & o;
    o += (127 - 15) << 23;
    if exp == SHIFTED_EXP {
        o += (128 - 16) << 23; // inf / NaN
    } else if exp == 0 {
        // zero / subnormal: renormalise through a float subtraction
        o += 1 << 23;
        o = (f32::from_bits(o) - f32::from_bits(113 << 23)).to_bits();
    }
    f32::from_bits(o | ((h & 0x8000) as u32) << 16)
}

#[inline]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Visit mapped top-k row `i` as `(class, p)`: its `k` classes (stored as 32 bits) and
/// f16 or f32 probabilities, in stored order.
#[inline]
fn topk_row(cls: &[u8], p: &[u8], k: usize, f32: bool, i: usize, mut f: impl FnMut(u32, f32)) {
    let (cls, w) = (&cls[4 * k * i..][..4 * k], if f32 { 4 } else { 2 });
    let p = &p[w * k * i..][..w * k];
    for j in 0..k {
        let v = if f32 {
            f32::from_bits(u32_at(p, j))
        } else {
            f16_at(p, j)
        };
        f(u32_at(cls, j), v);
    }
}

impl<'a> Crops<'a> {
    pub(crate) fn mapped(m: Mapped<'a>) -> Self {
        Crops(Inner::Mapped(m))
    }

    pub(crate) fn decoded(v: Vec<CropLabel>) -> Self {
        Crops(Inner::Decoded(v))
    }

    /// Number of stored crops.
    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Mapped(m) => m.n,
            Inner::Decoded(v) => v.len(),
        }
    }

    /// Whether the sample has no stored crops (skipped at precompute time).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the rows are read from the map (false: decoded through arrow's reader).
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Inner::Mapped(_))
    }

    /// Crop id of row `i` (panics when `i >= len()`, like slice indexing).
    #[inline]
    pub fn crop_id(&self, i: usize) -> u16 {
        match &self.0 {
            Inner::Mapped(m) => {
                assert!(i < m.n, "crop {i} of {}", m.n);
                match m.crop {
                    CropIds::From(c) => c + i as u16,
                    CropIds::U16(b) => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]),
                }
            }
            Inner::Decoded(v) => v[i].crop_id,
        }
    }

    /// The row holding crop `crop_id`, if stored.
    pub fn position(&self, crop_id: u16) -> Option<usize> {
        if let Inner::Mapped(Mapped {
            crop: CropIds::From(c0),
            n,
            ..
        }) = &self.0
        {
            let i = crop_id.checked_sub(*c0)? as usize;
            return (i < *n).then_some(i);
        }
        (0..self.len()).find(|&i| self.crop_id(i) == crop_id)
    }

    /// Box and flip of row `i`.
    #[inline]
    pub fn record(&self, i: usize) -> CropRecord {
        match &self.0 {
            Inner::Mapped(m) => {
                assert!(i < m.n, "crop {i} of {}", m.n);
                let [t, l, h, w] = &m.boxes;
                CropRecord {
                    top: t.get(i),
                    left: l.get(i),
                    height: h.get(i),
                    width: w.get(i),
                    flip: match m.flip {
                        FlipCol::Bits { b, bit } => {
                            let j = bit + i;
                            b[j / 8] >> (j % 8) & 1 == 1
                        }
                        FlipCol::Bytes(b) => b[i] != 0,
                    },
                }
            }
            Inner::Decoded(v) => v[i].record,
        }
    }

    /// What is wrong with row `i` beyond its probabilities' sum (which
    /// [`crate::distribution_error`] checks), as a store of `classes` classes: a top-k
    /// row's classes must be distinct and below `classes`, its probabilities in
    /// descending order (readers take the first as the top class: docs/FORMAT.md), and a
    /// stored flip byte 0 or 1. `None` when the row is well formed.
    pub fn row_error(&self, i: usize, classes: usize) -> Option<String> {
        let mut rules = TopKRules::new(classes);
        match &self.0 {
            Inner::Mapped(m) => {
                assert!(i < m.n, "crop {i} of {}", m.n);
                if let FlipCol::Bytes(b) = m.flip {
                    if b[i] > 1 {
                        return Some(format!("flip {} (0 or 1)", b[i]));
                    }
                }
                if let LabelCols::TopK { cls, p, k, f32 } = m.label {
                    topk_row(cls, p, k, f32, i, |c, p| rules.push(c, p));
                }
            }
            Inner::Decoded(v) => return v[i].label.rule_error(classes),
        }
        rules.error
    }

    /// Visit the stored probabilities of row `i` as `(class, p)`: every class in order
    /// for dense labels, the K kept ones (descending) for top-k.
    #[inline]
    pub fn for_each_prob(&self, i: usize, mut f: impl FnMut(u16, f32)) {
        match &self.0 {
            Inner::Mapped(m) => {
                assert!(i < m.n, "crop {i} of {}", m.n);
                match m.label {
                    LabelCols::Dense { p, classes } => {
                        let row = &p[2 * classes * i..][..2 * classes];
                        for c in 0..classes {
                            f(c as u16, f16_at(row, c));
                        }
                    }
                    LabelCols::TopK { cls, p, k, f32 } => {
                        topk_row(cls, p, k, f32, i, |c, v| f(c as u16, v));
                    }
                }
            }
            Inner::Decoded(v) => match &v[i].label {
                SoftLabel::Dense(p) => {
                    for (c, &x) in p.iter().enumerate() {
                        f(c as u16, x)
                    }
                }
                SoftLabel::TopK { classes, probs } => {
                    for (&c, &x) in classes.iter().zip(probs) {
                        f(c, x)
                    }
                }
            },
        }
    }

    /// Row `i`'s label as dense f32 probabilities written into `out` (one per class);
    /// top-k labels get FKD's marginal smoothing, as [`SoftLabel::to_dense`].
    pub fn dense_into(&self, i: usize, out: &mut [f32]) {
        match &self.0 {
            Inner::Mapped(Mapped {
                label: LabelCols::TopK { k, .. },
                ..
            }) => {
                let mut kept = 0f32;
                self.for_each_prob(i, |_, p| kept += p);
                out.fill(smoothing_fill(kept, out.len(), *k));
                self.for_each_prob(i, |c, p| {
                    if let Some(o) = out.get_mut(c as usize) {
                        *o = p
                    }
                });
            }
            Inner::Mapped(Mapped {
                label: LabelCols::Dense { p, classes },
                n,
                ..
            }) => {
                assert!(i < *n, "crop {i} of {n}");
                let row = &p[2 * classes * i..][..2 * classes];
                let m = (*classes).min(out.len());
                out[m..].fill(0.0);
                // through an aligned buffer, so half converts 8 at a time (F16C) instead
                // of one call per value: the mapped bytes have no alignment
                let mut bits = [0u16; 64];
                for (src, dst) in row[..2 * m].chunks(128).zip(out[..m].chunks_mut(64)) {
                    let b = &mut bits[..dst.len()];
                    for (x, s) in b.iter_mut().zip(src.chunks_exact(2)) {
                        *x = u16::from_le_bytes([s[0], s[1]]);
                    }
                    let h: &[f16] = (*b).reinterpret_cast();
                    h.convert_to_f32_slice(dst);
                }
            }
            Inner::Decoded(v) => v[i].label.dense_into(out),
        }
    }

    /// Row `i`'s label, owned.
    pub fn label(&self, i: usize) -> SoftLabel {
        match &self.0 {
            Inner::Mapped(m) => match m.label {
                LabelCols::Dense { classes, .. } => {
                    let mut p = Vec::with_capacity(classes);
                    self.for_each_prob(i, |_, x| p.push(x));
                    SoftLabel::Dense(p)
                }
                LabelCols::TopK { k, .. } => {
                    let (mut classes, mut probs) = (Vec::with_capacity(k), Vec::with_capacity(k));
                    self.for_each_prob(i, |c, x| {
                        classes.push(c);
                        probs.push(x)
                    });
                    SoftLabel::TopK { classes, probs }
                }
            },
            Inner::Decoded(v) => v[i].label.clone(),
        }
    }

    /// Row `i`, owned.
    pub fn get(&self, i: usize) -> CropLabel {
        match &self.0 {
            Inner::Decoded(v) => v[i].clone(),
            Inner::Mapped(_) => CropLabel {
                crop_id: self.crop_id(i),
                record: self.record(i),
                label: self.label(i),
            },
        }
    }

    /// Every row, owned.
    pub fn to_vec(&self) -> Vec<CropLabel> {
        match &self.0 {
            Inner::Decoded(v) => v.clone(),
            Inner::Mapped(_) => (0..self.len()).map(|i| self.get(i)).collect(),
        }
    }

    /// Every row, owned (no copy on the decode path).
    pub fn into_vec(self) -> Vec<CropLabel> {
        match self.0 {
            Inner::Decoded(v) => v,
            Inner::Mapped(_) => self.to_vec(),
        }
    }
}

/// FKD's marginal smoothing: the probability of each of the `classes - k` classes not
/// kept, `(1 - kept) / (classes - k)`, at least 0.
pub(crate) fn smoothing_fill(kept: f32, classes: usize, k: usize) -> f32 {
    let others = classes.saturating_sub(k);
    if others > 0 {
        ((1.0 - kept) / others as f32).max(0.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_equals_half_for_every_value() {
        for h in 0..=u16::MAX {
            let (ours, theirs) = (f16_to_f32(h), f16::from_bits(h).to_f32());
            assert!(
                ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
                "{h:#06x}: {ours} vs {theirs}"
            );
        }
    }
}
