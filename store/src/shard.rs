//! Shard files: encoding rows to Parquet or safetensors bytes (reading them back from a
//! memory map is shard_read.rs).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, UInt16Array,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use half::f16;
use meal_data::CropRecord;
use parquet::arrow::ArrowWriter;
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

pub(crate) fn schema(enc: Encoding, classes: usize) -> Schema {
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

/// The rows `(sample_id, crop)` as one Arrow batch.
fn batch(
    rows: &[(u32, &CropLabel)],
    enc: Encoding,
    classes: usize,
    schema: &Arc<Schema>,
) -> Result<RecordBatch, StoreError> {
    let rows = || rows.iter().copied();
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
                            name: "encoding",
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

/// Label values (probabilities or classes) handed to the Parquet writer in one batch.
const PIECE_VALUES: usize = 1 << 16;

/// Values a row's label holds.
fn label_width(enc: Encoding, classes: usize) -> usize {
    match enc {
        Encoding::Dense => classes.max(1),
        Encoding::TopK { k, .. } => usize::from(k).max(1),
    }
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
        // One data page per column chunk: a sample's values then never straddle pages,
        // so the reader addresses every row in the map (shard_read.rs). A row group is
        // buffered whole by the writer anyway, so larger pages cost no memory.
        .set_data_page_size_limit(usize::MAX)
        .set_data_page_row_count_limit(usize::MAX)
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
        // A row group goes to the writer a few rows at a time: each piece's Arrow
        // arrays and level buffers (about 40 bytes a value when a whole dense row group
        // was one batch) are freed before the next, while the column chunks, still one
        // page each, grow in the writer. The file's bytes are the same either way.
        let rows: Vec<(u32, &CropLabel)> = group
            .iter()
            .flat_map(|im| im.crops.iter().map(move |c| (im.sample_id, c)))
            .collect();
        for piece in rows.chunks((PIECE_VALUES / label_width(enc, classes)).max(1)) {
            w.write(&batch(piece, enc, classes, &schema)?)
                .map_err(StoreError::parquet)?;
        }
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
    let err = |e: safetensors::SafeTensorError| StoreError::Encode {
        format: "safetensors",
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
