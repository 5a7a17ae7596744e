//! Reading one shard from its memory map.
//!
//! Our writer makes Parquet pages PLAIN and uncompressed for every column a reader needs
//! per crop (box, flip, label). At open, each such column's data pages are located in
//! the map ([`SerializedPageReader`] hands out slices of the mapped bytes, so a page's
//! address is its place in the file); a sample's rows are then read by arithmetic on the
//! map, with no Parquet reader built per request. A file whose pages are not laid out so
//! (another writer's: dictionary-encoded, compressed), or a sample whose values straddle
//! a page boundary, is decoded through arrow's Parquet reader instead. Safetensors
//! shards are always read directly.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, UInt16Array,
    UInt32Array,
};
use bytes::Bytes;
use meal_data::CropRecord;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::ProjectionMask;

use super::crops::{CropIds, Crops, F32Col, FlipCol, LabelCols, Mapped};
use super::label::{Encoding, SoftLabel};
use super::shard::{schema, CropLabel, IMAGES_KEY};
use super::shard_index::{Entry, Runs};
use super::shard_pages::{locate_pages, widths, GroupPages, Width};
use super::StoreError;

mod foreign;
use foreign::{column_mismatch, unreadable_codec};

/// Leaf columns of a Parquet shard, in schema order.
const COL_CROP: usize = 1;
const COL_TOP: usize = 2;
const COL_FLIP: usize = 6;
const COL_LABEL: usize = 7;

/// An opened shard: its mapped bytes and where each sample's rows are.
pub struct ShardReader {
    path: PathBuf,
    bytes: Bytes,
    kind: Kind,
    /// first sample id of `index`
    base: u32,
    /// by `sample - base`; `n == 0` where the shard has no rows for the sample
    index: Vec<Entry>,
    images: Vec<[u32; 3]>,
    rows: usize,
    /// Decode path only: after two requests in a row from one row group, that whole
    /// group is decoded once and later requests are served from it.
    cache: Mutex<RowGroupCache>,
}

#[derive(Default)]
struct RowGroupCache {
    last: Option<usize>,
    decoded: Option<(usize, Vec<CropLabel>)>,
}

enum Kind {
    /// the footer, parsed once at open, and the pages of each row group when the file
    /// is directly addressable
    Parquet {
        arm: ArrowReaderMetadata,
        pages: Option<Vec<GroupPages>>,
        enc: Encoding,
        classes: usize,
    },
    /// byte offsets (in the file) of prob, crop_id, box, flip
    Safetensors {
        prob: usize,
        crop: usize,
        bx: usize,
        flip: usize,
        classes: usize,
    },
}

impl ShardReader {
    /// Map and index a shard file.
    pub fn open(path: &Path, enc: Encoding, classes: usize) -> Result<Self, StoreError> {
        Self::open_with(path, enc, classes, true)
    }

    /// [`ShardReader::open`]; with `map_pages == false` Parquet rows are always decoded
    /// through arrow's reader (slower; to compare the two paths).
    pub fn open_with(
        path: &Path,
        enc: Encoding,
        classes: usize,
        map_pages: bool,
    ) -> Result<Self, StoreError> {
        // (a pipe at a shard's name would block the open: refused as no regular file)
        let f = meal_data::files::open(path).map_err(|e| StoreError::io(path, e))?;
        // SAFETY: the store's files are written once (temporary name, then rename) and
        // never modified in place; a concurrent writer would replace, not mutate, them.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| StoreError::io(path, e))?;
        let bytes = Bytes::from_owner(MappedFile::new(map, path));
        if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            Self::open_safetensors(path, bytes, classes)
        } else {
            Self::open_parquet(path, bytes, enc, classes, map_pages)
        }
    }

    fn open_parquet(
        path: &Path,
        bytes: Bytes,
        enc: Encoding,
        classes: usize,
        map_pages: bool,
    ) -> Result<Self, StoreError> {
        let corrupt = |e: &dyn std::fmt::Display| StoreError::corrupt(path, e);
        let arm = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::default())
            .map_err(|e| corrupt(&e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), arm.clone());
        let want = schema(enc, classes);
        let foreign = |reason: String| StoreError::Foreign {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(why) = column_mismatch(builder.schema().fields(), want.fields()) {
            return Err(foreign(format!(
                "not the store's schema ({enc}, {classes} classes; docs/FORMAT.md): {why}"
            )));
        }
        let meta = builder.metadata().clone();
        if let Some(why) = unreadable_codec(&meta) {
            return Err(foreign(why));
        }
        let images = meta
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| {
                kv.iter()
                    .find(|k| k.key == IMAGES_KEY)
                    .and_then(|k| k.value.clone())
            })
            .ok_or_else(|| corrupt(&"no meal.images metadata"))?;
        let images: Vec<[u32; 3]> = serde_json::from_str(&images).map_err(|e| corrupt(&e))?;
        // sample and crop ids of every row, once
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [0, COL_CROP]);
        let mut runs = Runs::default();
        let mut rows = 0;
        for rg in 0..meta.num_row_groups() {
            let reader =
                ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), arm.clone())
                    .with_projection(mask.clone())
                    .with_row_groups(vec![rg])
                    .build()
                    .map_err(|e| corrupt(&e))?;
            let mut offset = 0;
            for b in reader {
                let b = b.map_err(|e| corrupt(&e))?;
                let (ids, crops) = (
                    b.column(0).as_any().downcast_ref::<UInt32Array>(),
                    b.column(1).as_any().downcast_ref::<UInt16Array>(),
                );
                let (Some(ids), Some(crops)) = (ids, crops) else {
                    return Err(corrupt(&"sample_id/crop_id are not u32/u16"));
                };
                for (&id, &c) in ids.values().iter().zip(crops.values().iter()) {
                    runs.push(id, c, rg, offset).map_err(|e| corrupt(&e))?;
                    offset += 1;
                }
            }
            rows += offset;
        }
        let (base, index) = runs.finish(rows).map_err(|e| corrupt(&e))?;
        let pages = if map_pages {
            let ws = widths(enc, classes);
            (0..meta.num_row_groups())
                .map(|rg| {
                    // (a count from the footer: a negative or vast one leaves the
                    // pages unmapped, read by the decoder, which checks them)
                    let n = usize::try_from(meta.row_group(rg).num_rows()).ok()?;
                    ws.iter()
                        .enumerate()
                        .map(|(i, &(w, per_row))| {
                            locate_pages(&bytes, &meta, rg, COL_TOP + i, w, n.checked_mul(per_row)?)
                        })
                        .collect::<Option<Vec<_>>>()
                        .map(|cols| GroupPages { cols })
                })
                .collect::<Option<Vec<_>>>()
        } else {
            None
        };
        Ok(ShardReader {
            path: path.to_path_buf(),
            bytes,
            kind: Kind::Parquet {
                arm,
                pages,
                enc,
                classes,
            },
            base,
            index,
            images,
            rows,
            cache: Default::default(),
        })
    }

    fn open_safetensors(path: &Path, bytes: Bytes, classes: usize) -> Result<Self, StoreError> {
        use safetensors::tensor::Dtype;
        let corrupt = |e: &dyn std::fmt::Display| StoreError::corrupt(path, e);
        let (header, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&e))?;
        let base = 8 + header;
        let info = |name: &str, dt: Dtype, inner: usize| -> Result<(usize, usize), StoreError> {
            let t = meta
                .info(name)
                .ok_or_else(|| corrupt(&format!("no tensor {name}")))?;
            let n = *t.shape.first().unwrap_or(&0);
            if t.dtype != dt || t.shape.iter().skip(1).product::<usize>() != inner {
                return Err(corrupt(&format!(
                    "tensor {name} is {:?} {:?}",
                    t.dtype, t.shape
                )));
            }
            Ok((base + t.data_offsets.0, n))
        };
        let (prob, n) = info("prob", Dtype::F16, classes)?;
        let (sid, n2) = info("sample_id", Dtype::U32, 1)?;
        let (crop, n3) = info("crop_id", Dtype::U16, 1)?;
        let (bx, n4) = info("box", Dtype::F32, 4)?;
        let (flip, n5) = info("flip", Dtype::U8, 1)?;
        if [n2, n3, n4, n5].iter().any(|&m| m != n)
            || base
                + meta
                    .tensors()
                    .values()
                    .map(|t| t.data_offsets.1)
                    .max()
                    .unwrap_or(0)
                > bytes.len()
        {
            return Err(corrupt(&"tensor lengths disagree or exceed the file"));
        }
        let images = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(IMAGES_KEY).cloned())
            .ok_or_else(|| corrupt(&"no meal.images metadata"))?;
        let images: Vec<[u32; 3]> = serde_json::from_str(&images).map_err(|e| corrupt(&e))?;
        let mut runs = Runs::default();
        for r in 0..n {
            let id = u32::from_le_bytes(bytes[sid + 4 * r..][..4].try_into().expect("4 bytes"));
            let c = u16::from_le_bytes(bytes[crop + 2 * r..][..2].try_into().expect("2 bytes"));
            runs.push(id, c, 0, r).map_err(|e| corrupt(&e))?;
        }
        let (base_id, index) = runs.finish(n).map_err(|e| corrupt(&e))?;
        Ok(ShardReader {
            path: path.to_path_buf(),
            bytes,
            kind: Kind::Safetensors {
                prob,
                crop,
                bx,
                flip,
                classes,
            },
            base: base_id,
            index,
            images,
            rows: n,
            cache: Default::default(),
        })
    }

    /// The shard file's bytes (memory-mapped).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Rows in the shard.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `[sample_id, width, height]` of every image the shard covers with rows.
    pub fn images(&self) -> &[[u32; 3]] {
        &self.images
    }

    /// Sample ids with rows in this shard, ascending.
    pub fn samples(&self) -> impl Iterator<Item = u32> + '_ {
        self.index
            .iter()
            .enumerate()
            .filter(|(_, e)| e.n > 0)
            .map(|(i, _)| self.base + i as u32)
    }

    /// Whether the shard holds rows of `sample`.
    pub(crate) fn has_rows(&self, sample: u32) -> bool {
        self.entry(sample).is_some()
    }

    /// The first sample whose rows are not crops `0..per_image` in order (a writer
    /// stores each image's whole pool, sorted by crop id), with its row count.
    pub(crate) fn odd_crop_run(&self, per_image: u32) -> Option<(u32, u32)> {
        self.index
            .iter()
            .enumerate()
            .find(|(_, e)| e.n > 0 && (e.n != per_image || e.crop0 != 0))
            .map(|(i, e)| (self.base + i as u32, e.n))
    }

    /// Whether Parquet rows are read directly from the mapped pages (always for
    /// safetensors).
    pub fn is_mapped(&self) -> bool {
        match &self.kind {
            Kind::Parquet { pages, .. } => pages.is_some(),
            Kind::Safetensors { .. } => true,
        }
    }

    fn entry(&self, sample: u32) -> Option<Entry> {
        let i = sample.checked_sub(self.base)? as usize;
        self.index.get(i).copied().filter(|e| e.n > 0)
    }

    /// The rows of `sample` (empty when the shard has none for it).
    pub fn crops(&self, sample: u32) -> Result<Crops<'_>, StoreError> {
        let Some(e) = self.entry(sample) else {
            return Ok(Crops::decoded(Vec::new()));
        };
        let (first, n) = (e.first as usize, e.n as usize);
        match &self.kind {
            &Kind::Safetensors {
                prob,
                crop,
                bx,
                flip,
                classes,
            } => {
                let b = &self.bytes[..];
                let boxes = |k: usize| F32Col::new(&b[bx + 16 * first + 4 * k..], 16, n);
                Ok(Crops::mapped(Mapped {
                    n,
                    crop: CropIds::U16(&b[crop + 2 * first..][..2 * n]),
                    boxes: [boxes(0), boxes(1), boxes(2), boxes(3)],
                    flip: FlipCol::Bytes(&b[flip + first..][..n]),
                    label: LabelCols::Dense {
                        p: &b[prob + 2 * classes * first..][..2 * classes * n],
                        classes,
                    },
                }))
            }
            Kind::Parquet {
                arm,
                pages,
                enc,
                classes,
            } => {
                if let Some(m) = pages
                    .as_ref()
                    .and_then(|p| self.mapped(&p[e.rg as usize], e, *enc, *classes))
                {
                    return Ok(Crops::mapped(m));
                }
                self.decode(arm, e, *enc).map(Crops::decoded)
            }
        }
    }

    /// The mapped rows of one sample, or `None` when a column's values straddle pages
    /// or the crop ids are not consecutive.
    fn mapped(
        &self,
        g: &GroupPages,
        e: Entry,
        enc: Encoding,
        classes: usize,
    ) -> Option<Mapped<'_>> {
        let crop0 = u16::try_from(e.crop0).ok()?;
        let (first, n) = (e.first as usize, e.n as usize);
        let b = &self.bytes[..];
        // the bytes of values `v0 .. v0 + len` of leaf column `col` (one page), and the
        // bit offset of the first for bit-packed columns
        let slice = |col: usize, per_row: usize, w: Width| -> Option<(&[u8], usize)> {
            let spans = &g.cols[col - COL_TOP];
            let (v0, len) = (first * per_row, n * per_row);
            let s = spans.get(spans.partition_point(|s| s.first + s.n <= v0))?;
            if v0 < s.first || v0 + len > s.first + s.n {
                return None;
            }
            let k = v0 - s.first;
            Some(match w {
                Width::Bytes(w) => (&b[s.offset + w * k..][..w * len], 0),
                Width::Bits => {
                    let start = s.offset + k / 8;
                    (&b[start..s.offset + Width::Bits.len(s.n)], k % 8)
                }
            })
        };
        let f = |k: usize| -> Option<F32Col<'_>> {
            Some(F32Col::new(slice(COL_TOP + k, 1, Width::Bytes(4))?.0, 4, n))
        };
        let (fb, bit) = slice(COL_FLIP, 1, Width::Bits)?;
        let label = match enc {
            Encoding::Dense => LabelCols::Dense {
                p: slice(COL_LABEL, classes, Width::Bytes(2))?.0,
                classes,
            },
            Encoding::TopK { k, f32 } => {
                let k = k as usize;
                let w = if f32 { 4 } else { 2 };
                LabelCols::TopK {
                    cls: slice(COL_LABEL, k, Width::Bytes(4))?.0,
                    p: slice(COL_LABEL + 1, k, Width::Bytes(w))?.0,
                    k,
                    f32,
                }
            }
        };
        Some(Mapped {
            n,
            crop: CropIds::From(crop0),
            boxes: [f(0)?, f(1)?, f(2)?, f(3)?],
            flip: FlipCol::Bits { b: fb, bit },
            label,
        })
    }

    /// Decode one sample's rows through arrow's reader.
    fn decode(
        &self,
        arm: &ArrowReaderMetadata,
        e: Entry,
        enc: Encoding,
    ) -> Result<Vec<CropLabel>, StoreError> {
        let (rg, first, n) = (e.rg as usize, e.first as usize, e.n as usize);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, rows)) = &c.decoded {
            if *g == rg {
                return Ok(rows[first..first + n].to_vec());
            }
        }
        if c.last == Some(rg) {
            let all = self.parquet_rows(arm, rg, 0, usize::MAX, enc)?;
            if first + n > all.len() {
                return Err(StoreError::corrupt(
                    &self.path,
                    "row group shorter than its index",
                ));
            }
            let out = all[first..first + n].to_vec();
            c.decoded = Some((rg, all));
            return Ok(out);
        }
        c.last = Some(rg);
        drop(c);
        self.parquet_rows(arm, rg, first, n, enc)
    }

    fn parquet_rows(
        &self,
        arm: &ArrowReaderMetadata,
        rg: usize,
        first: usize,
        n: usize,
        enc: Encoding,
    ) -> Result<Vec<CropLabel>, StoreError> {
        let corrupt = |e: &dyn std::fmt::Display| StoreError::corrupt(&self.path, e);
        let sel = RowSelection::from(vec![RowSelector::skip(first), RowSelector::select(n)]);
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(self.bytes.clone(), arm.clone())
                .with_row_groups(vec![rg])
                .with_row_selection(sel)
                .build()
                .map_err(|e| corrupt(&e))?;
        let mut out = Vec::with_capacity(n.min(1 << 16));
        for b in reader {
            let b = b.map_err(|e| corrupt(&e))?;
            let col = |i: usize| b.column(i).clone();
            macro_rules! down {
                ($a:expr, $t:ty) => {
                    $a.as_any()
                        .downcast_ref::<$t>()
                        .ok_or_else(|| corrupt(&"unexpected column type"))?
                };
            }
            let (c1, c2, c3, c4, c5, c6) = (col(1), col(2), col(3), col(4), col(5), col(6));
            let crop = down!(c1, UInt16Array);
            let (top, left, h, w) = (
                down!(c2, Float32Array),
                down!(c3, Float32Array),
                down!(c4, Float32Array),
                down!(c5, Float32Array),
            );
            let flip = down!(c6, BooleanArray);
            let values = |i: usize| -> Result<ArrayRef, StoreError> {
                Ok(down!(b.column(i), FixedSizeListArray).values().clone())
            };
            let floats = |a: &ArrayRef| -> Result<Vec<f32>, StoreError> {
                if let Some(x) = a.as_any().downcast_ref::<Float16Array>() {
                    Ok(x.values().iter().map(|v| v.to_f32()).collect())
                } else if let Some(x) = a.as_any().downcast_ref::<Float32Array>() {
                    Ok(x.values().to_vec())
                } else {
                    Err(corrupt(&"probabilities are not float16/float32"))
                }
            };
            let (labels_a, labels_b) = match enc {
                Encoding::Dense => (floats(&values(7)?)?, Vec::new()),
                Encoding::TopK { .. } => {
                    let v = values(7)?;
                    let cls = down!(v, UInt16Array).values().to_vec();
                    (floats(&values(8)?)?, cls)
                }
            };
            let rows = b.num_rows();
            let width = labels_a.len().checked_div(rows).unwrap_or(0);
            for r in 0..rows {
                let probs = labels_a[r * width..(r + 1) * width].to_vec();
                let label = match enc {
                    Encoding::Dense => SoftLabel::Dense(probs),
                    Encoding::TopK { .. } => SoftLabel::TopK {
                        classes: labels_b[r * width..(r + 1) * width].to_vec(),
                        probs,
                    },
                };
                out.push(CropLabel {
                    crop_id: crop.value(r),
                    record: CropRecord {
                        top: top.value(r),
                        left: left.value(r),
                        height: h.value(r),
                        width: w.value(r),
                        flip: flip.value(r),
                    },
                    label,
                });
            }
        }
        Ok(out)
    }
}

/// A shard's mapped bytes, named for the SIGBUS report while mapped: a shard truncated
/// under a run faults on read, and the report names it ([`meal_data::mapped`]).
struct MappedFile {
    // (dropped first: the name goes before the pages are unmapped)
    _name: Option<meal_data::mapped::Registration>,
    map: memmap2::Mmap,
}

impl MappedFile {
    fn new(map: memmap2::Mmap, path: &Path) -> Self {
        MappedFile {
            _name: meal_data::mapped::register(&map, path),
            map,
        }
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}
