//! Shard files: encoding rows to Parquet or safetensors bytes, and reading them back
//! from a memory map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, UInt16Array,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use half::f16;
use meal_data::CropRecord;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::file::properties::WriterProperties;

use super::label::{Encoding, SoftLabel};
use super::StoreError;

/// Key-value metadata key of a shard holding `[[sample_id, width, height], ...]`.
pub const IMAGES_KEY: &str = "meal.images";

/// One stored crop: which crop, its geometry, its soft label.
#[derive(Clone, Debug, PartialEq)]
pub struct CropLabel {
    /// Crop index within the image's pool.
    pub crop_id: u16,
    /// The crop (FKD-normalised box and flip).
    pub record: CropRecord,
    /// The soft label as stored (decode with [`SoftLabel::to_dense`]).
    pub label: SoftLabel,
}

/// The rows of one image, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRows {
    /// Sample id.
    pub sample_id: u32,
    /// Decoded width.
    pub width: u32,
    /// Decoded height.
    pub height: u32,
    /// Its crops.
    pub crops: Vec<CropLabel>,
}

fn schema(enc: Encoding, classes: usize) -> Schema {
    let mut fields = vec![
        Field::new("sample_id", DataType::UInt32, false),
        Field::new("crop_id", DataType::UInt16, false),
        Field::new("top", DataType::Float32, false),
        Field::new("left", DataType::Float32, false),
        Field::new("height", DataType::Float32, false),
        Field::new("width", DataType::Float32, false),
        Field::new("flip", DataType::Boolean, false),
    ];
    let list = |name: &str, dt: DataType, n: usize| {
        Field::new(
            name,
            DataType::FixedSizeList(Arc::new(Field::new("item", dt, false)), n as i32),
            false,
        )
    };
    match enc {
        Encoding::Dense => fields.push(list("prob", DataType::Float16, classes)),
        Encoding::TopK { k, f32 } => {
            fields.push(list("topk_class", DataType::UInt16, k as usize));
            fields.push(list(
                "topk_prob",
                if f32 {
                    DataType::Float32
                } else {
                    DataType::Float16
                },
                k as usize,
            ));
        }
    }
    Schema::new(fields)
}

fn fsl(values: ArrayRef, field: &Field) -> Result<ArrayRef, StoreError> {
    let (item, n) = match field.data_type() {
        DataType::FixedSizeList(item, n) => (item.clone(), *n),
        _ => unreachable!("list fields only"),
    };
    Ok(Arc::new(
        FixedSizeListArray::try_new(item, n, values, None).map_err(StoreError::arrow)?,
    ))
}

fn batch(
    images: &[ImageRows],
    enc: Encoding,
    classes: usize,
    schema: &Arc<Schema>,
) -> Result<RecordBatch, StoreError> {
    let rows = || {
        images
            .iter()
            .flat_map(|im| im.crops.iter().map(move |c| (im.sample_id, c)))
    };
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows().map(|(s, _)| s))),
        Arc::new(UInt16Array::from_iter_values(
            rows().map(|(_, c)| c.crop_id),
        )),
        Arc::new(Float32Array::from_iter_values(
            rows().map(|(_, c)| c.record.top),
        )),
        Arc::new(Float32Array::from_iter_values(
            rows().map(|(_, c)| c.record.left),
        )),
        Arc::new(Float32Array::from_iter_values(
            rows().map(|(_, c)| c.record.height),
        )),
        Arc::new(Float32Array::from_iter_values(
            rows().map(|(_, c)| c.record.width),
        )),
        Arc::new(BooleanArray::from(
            rows().map(|(_, c)| c.record.flip).collect::<Vec<_>>(),
        )),
    ];
    match enc {
        Encoding::Dense => {
            let mut v = Vec::new();
            for (_, c) in rows() {
                let d = c.label.to_dense(classes);
                v.extend(d.iter().map(|&p| f16::from_f32(p)));
            }
            cols.push(fsl(Arc::new(Float16Array::from(v)), schema.field(7))?);
        }
        Encoding::TopK { k, f32 } => {
            let (mut cls, mut p32) = (Vec::new(), Vec::new());
            for (_, c) in rows() {
                match &c.label {
                    SoftLabel::TopK { classes: cs, probs } if cs.len() == k as usize => {
                        cls.extend_from_slice(cs);
                        p32.extend_from_slice(probs);
                    }
                    _ => {
                        return Err(StoreError::Param {
                            name: "--encoding",
                            reason: format!("row is not top-{k}"),
                        })
                    }
                }
            }
            cols.push(fsl(Arc::new(UInt16Array::from(cls)), schema.field(7))?);
            let probs: ArrayRef = if f32 {
                Arc::new(Float32Array::from(p32))
            } else {
                Arc::new(Float16Array::from(
                    p32.iter().map(|&p| f16::from_f32(p)).collect::<Vec<_>>(),
                ))
            };
            cols.push(fsl(probs, schema.field(8))?);
        }
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(StoreError::arrow)
}

fn images_json(images: &[ImageRows]) -> String {
    let v: Vec<[u32; 3]> = images
        .iter()
        .map(|i| [i.sample_id, i.width, i.height])
        .collect();
    serde_json::to_string(&v).expect("serialises")
}

/// A Parquet shard: rows sample-major, each row group holding whole images.
pub fn encode_parquet(
    images: &[ImageRows],
    enc: Encoding,
    classes: usize,
    images_per_row_group: usize,
) -> Result<Vec<u8>, StoreError> {
    let schema = Arc::new(schema(enc, classes));
    let props = WriterProperties::builder()
        // Dictionary (RLE) only where values repeat: an image's crops share its
        // sample_id, and crop_id cycles through the pool. Probabilities and boxes stay
        // PLAIN, so a page decodes by copying from the map.
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled("sample_id".into(), true)
        .set_column_dictionary_enabled("crop_id".into(), true)
        .set_max_row_group_row_count(None)
        .set_max_row_group_bytes(None)
        .set_created_by(format!("meal-v2-rs {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            IMAGES_KEY.to_string(),
            images_json(images),
        )]))
        .build();
    let mut out = Vec::new();
    let mut w =
        ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).map_err(StoreError::parquet)?;
    for group in images.chunks(images_per_row_group.max(1)) {
        if group.iter().all(|i| i.crops.is_empty()) {
            continue;
        }
        w.write(&batch(group, enc, classes, &schema)?)
            .map_err(StoreError::parquet)?;
        w.flush().map_err(StoreError::parquet)?; // row-group boundary between images
    }
    w.close().map_err(StoreError::parquet)?;
    Ok(out)
}

/// A safetensors shard (dense): `prob` `[N, C]` f16, `sample_id` `[N]` u32, `crop_id` `[N]` u16,
/// `box` `[N, 4]` f32 (top, left, height, width), `flip` `[N]` u8.
pub fn encode_safetensors(images: &[ImageRows], classes: usize) -> Result<Vec<u8>, StoreError> {
    use safetensors::tensor::{Dtype, TensorView};
    let n: usize = images.iter().map(|i| i.crops.len()).sum();
    let (mut prob, mut sid, mut cid, mut bx, mut flip) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for im in images {
        for c in &im.crops {
            for p in c.label.to_dense(classes) {
                prob.extend_from_slice(&f16::from_f32(p).to_le_bytes());
            }
            sid.extend_from_slice(&im.sample_id.to_le_bytes());
            cid.extend_from_slice(&c.crop_id.to_le_bytes());
            for v in [c.record.top, c.record.left, c.record.height, c.record.width] {
                bx.extend_from_slice(&v.to_le_bytes());
            }
            flip.push(c.record.flip as u8);
        }
    }
    let err = |e: safetensors::SafeTensorError| StoreError::Param {
        name: "safetensors",
        reason: e.to_string(),
    };
    let views = vec![
        (
            "box",
            TensorView::new(Dtype::F32, vec![n, 4], &bx).map_err(err)?,
        ),
        (
            "crop_id",
            TensorView::new(Dtype::U16, vec![n], &cid).map_err(err)?,
        ),
        (
            "flip",
            TensorView::new(Dtype::U8, vec![n], &flip).map_err(err)?,
        ),
        (
            "prob",
            TensorView::new(Dtype::F16, vec![n, classes], &prob).map_err(err)?,
        ),
        (
            "sample_id",
            TensorView::new(Dtype::U32, vec![n], &sid).map_err(err)?,
        ),
    ];
    let meta: HashMap<String, String> = [(IMAGES_KEY.to_string(), images_json(images))]
        .into_iter()
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(err)
}

/// An opened shard: its mapped bytes and where each sample's rows are.
pub struct ShardReader {
    path: PathBuf,
    bytes: Bytes,
    kind: Kind,
    /// sample id -> (row group, first row in it, rows)
    index: HashMap<u32, (usize, usize, usize)>,
    images: Vec<[u32; 3]>,
    rows: usize,
    /// Sequential-scan cache: after two requests in a row from one row group, that
    /// whole group is decoded once and later requests are served from it.
    cache: std::sync::Mutex<RowGroupCache>,
}

#[derive(Default)]
struct RowGroupCache {
    last: Option<usize>,
    decoded: Option<(usize, Vec<CropLabel>)>,
}

enum Kind {
    /// the footer, parsed once at open
    Parquet(ArrowReaderMetadata),
    /// byte offsets (in the file) of prob, sample_id, crop_id, box, flip
    Safetensors {
        prob: usize,
        crop: usize,
        bx: usize,
        flip: usize,
    },
}

impl ShardReader {
    /// Map and index a shard file.
    pub fn open(path: &Path, enc: Encoding, classes: usize) -> Result<Self, StoreError> {
        let f = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
        // SAFETY: the store's files are written once (temporary name, then rename) and
        // never modified in place; a concurrent writer would replace, not mutate, them.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| StoreError::io(path, e))?;
        let bytes = Bytes::from_owner(map);
        if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            Self::open_safetensors(path, bytes, classes)
        } else {
            Self::open_parquet(path, bytes, enc, classes)
        }
    }

    fn open_parquet(
        path: &Path,
        bytes: Bytes,
        enc: Encoding,
        classes: usize,
    ) -> Result<Self, StoreError> {
        let corrupt = |e: &dyn std::fmt::Display| StoreError::corrupt(path, e);
        let arm = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::default())
            .map_err(|e| corrupt(&e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), arm.clone());
        let want = schema(enc, classes);
        if builder.schema().fields() != want.fields() {
            return Err(corrupt(&format!(
                "schema {:?} is not the store's ({enc}, {classes} classes)",
                builder.schema()
            )));
        }
        let meta = builder.metadata().clone();
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
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [0]);
        let mut index = HashMap::new();
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
                let ids = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<UInt32Array>()
                    .ok_or_else(|| corrupt(&"sample_id is not u32"))?;
                for id in ids.values().iter() {
                    let e = index.entry(*id).or_insert((rg, offset, 0));
                    if e.0 != rg || e.1 + e.2 != offset {
                        return Err(corrupt(&format!(
                            "rows of sample {id} are not contiguous in one row group"
                        )));
                    }
                    e.2 += 1;
                    offset += 1;
                }
            }
            rows += offset;
        }
        Ok(ShardReader {
            path: path.to_path_buf(),
            bytes,
            kind: Kind::Parquet(arm),
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
        let mut index: HashMap<u32, (usize, usize, usize)> = HashMap::new();
        for r in 0..n {
            let o = sid + 4 * r;
            let id = u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
            let e = index.entry(id).or_insert((0, r, 0));
            if e.1 + e.2 != r {
                return Err(corrupt(&format!("rows of sample {id} are not contiguous")));
            }
            e.2 += 1;
        }
        Ok(ShardReader {
            path: path.to_path_buf(),
            bytes,
            kind: Kind::Safetensors {
                prob,
                crop,
                bx,
                flip,
            },
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

    /// Sample ids with rows in this shard.
    pub fn samples(&self) -> impl Iterator<Item = &u32> {
        self.index.keys()
    }

    /// The rows of `sample`, or an empty list when the shard has none for it.
    pub fn crops(
        &self,
        sample: u32,
        enc: Encoding,
        classes: usize,
    ) -> Result<Vec<CropLabel>, StoreError> {
        let Some(&(rg, first, n)) = self.index.get(&sample) else {
            return Ok(Vec::new());
        };
        match &self.kind {
            &Kind::Safetensors {
                prob,
                crop,
                bx,
                flip,
            } => {
                let b = &self.bytes;
                let f32_at =
                    |o: usize| f32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
                Ok((first..first + n)
                    .map(|r| {
                        let p0 = prob + r * classes * 2;
                        let probs = (0..classes)
                            .map(|c| {
                                f16::from_le_bytes([b[p0 + 2 * c], b[p0 + 2 * c + 1]]).to_f32()
                            })
                            .collect();
                        let o = bx + 16 * r;
                        CropLabel {
                            crop_id: u16::from_le_bytes([b[crop + 2 * r], b[crop + 2 * r + 1]]),
                            record: CropRecord {
                                top: f32_at(o),
                                left: f32_at(o + 4),
                                height: f32_at(o + 8),
                                width: f32_at(o + 12),
                                flip: b[flip + r] != 0,
                            },
                            label: SoftLabel::Dense(probs),
                        }
                    })
                    .collect())
            }
            Kind::Parquet(arm) => {
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
        }
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
