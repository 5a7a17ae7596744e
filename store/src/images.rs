//! `images.parquet`, the store's image table (docs/FORMAT.md): one row per stored image
//! with its path and hard label. Written once a store is complete (by its single writer
//! or by [`crate::merge`]); a trainer takes its images from it.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use super::manifest::{write_atomic, Manifest};
use super::shard_read::ShardReader;
use super::{sha256_hex, StoreError};

/// The table's file name in a store.
pub const IMAGES: &str = "images.parquet";

/// One row of `images.parquet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Sample id.
    pub sample_id: u32,
    /// Path relative to the data root.
    pub path: String,
    /// Hard label.
    pub label: u32,
    /// Decoded width.
    pub width: u32,
    /// Decoded height.
    pub height: u32,
}

/// Writes `images.parquet`: one row per image with rows (sample_id, path, label, width,
/// height), class names in the key-value metadata `meal.classes`. Returns the file's
/// SHA-256 (for the manifest's `images_sha256`).
pub(crate) fn write(
    dir: &Path,
    m: &Manifest,
    paths: &[String],
    labels: &[u32],
) -> Result<String, StoreError> {
    let mut imgs: Vec<[u32; 3]> = Vec::new();
    for s in &m.shards {
        let r = ShardReader::open(
            &dir.join(&s.file),
            m.config.encoding,
            m.config.classes.len(),
        )?;
        // (ids checked against the rows when a shard is opened: contents_error; here
        // against the lists they index, so that no id is out of them)
        if let Some(im) = r
            .images()
            .iter()
            .find(|im| im[0] as usize >= paths.len().min(labels.len()))
        {
            return Err(StoreError::corrupt(
                &dir.join(&s.file),
                format!(
                    "meal.images lists sample {} of a dataset of {}",
                    im[0],
                    paths.len()
                ),
            ));
        }
        imgs.extend_from_slice(r.images());
    }
    imgs.sort();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::UInt32, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
    ]));
    let col = |f: &dyn Fn(&[u32; 3]) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(imgs.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            col(&|i| i[0]),
            Arc::new(StringArray::from_iter_values(
                imgs.iter().map(|i| paths[i[0] as usize].as_str()),
            )),
            col(&|i| labels[i[0] as usize]),
            col(&|i| i[1]),
            col(&|i| i[2]),
        ],
    )
    .map_err(StoreError::arrow)?;
    let props = WriterProperties::builder()
        .set_created_by(format!("meal-v2-rs {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "meal.classes".to_string(),
            serde_json::to_string(&m.config.classes).expect("serialises"),
        )]))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(StoreError::parquet)?;
    w.write(&batch).map_err(StoreError::parquet)?;
    w.close().map_err(StoreError::parquet)?;
    write_atomic(dir, IMAGES, &out, &mut |_| Ok(()))?;
    Ok(sha256_hex(&out))
}

/// Whether `m` records its image table's checksum and `dir`'s `images.parquet` reads
/// with it: a rerun or a merge then need not write the table again.
pub(crate) fn intact(dir: &Path, m: &Manifest) -> bool {
    m.images_sha256
        .as_deref()
        .is_some_and(|sha| read(dir, Some(sha)).is_ok())
}

/// The rows of `dir`'s `images.parquet`, the file checked against `sha256` when given.
pub(crate) fn read(dir: &Path, sha256: Option<&str>) -> Result<Vec<ImageInfo>, StoreError> {
    Ok(read_with_classes(dir, sha256)?.0)
}

/// [`read`], with the class names the file records (`meal.classes`; `None` where it
/// records none or not as a list of names).
pub(crate) fn read_with_classes(
    dir: &Path,
    sha256: Option<&str>,
) -> Result<(Vec<ImageInfo>, Option<Vec<String>>), StoreError> {
    let path = dir.join(IMAGES);
    let bytes = meal_data::files::read(&path).map_err(|e| StoreError::io(&path, e))?;
    if let Some(want) = sha256 {
        if sha256_hex(&bytes) != want {
            return Err(StoreError::corrupt(&path, "checksum mismatch"));
        }
    }
    let bad = |e: &dyn std::fmt::Display| StoreError::corrupt(&path, e.to_string());
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).map_err(|e| bad(&e))?;
    let classes = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "meal.classes"))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok());
    let reader = builder.build().map_err(|e| bad(&e))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| bad(&e))?;
        let u32s = |name: &str| -> Result<&UInt32Array, StoreError> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
                .ok_or_else(|| bad(&format!("column {name} missing or not uint32")))
        };
        let (ids, labels, ws, hs) = (
            u32s("sample_id")?,
            u32s("label")?,
            u32s("width")?,
            u32s("height")?,
        );
        let paths = b
            .column_by_name("path")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad(&"column path missing or not utf8"))?;
        for i in 0..b.num_rows() {
            out.push(ImageInfo {
                sample_id: ids.value(i),
                path: paths.value(i).to_string(),
                label: labels.value(i),
                width: ws.value(i),
                height: hs.value(i),
            });
        }
    }
    Ok((out, classes))
}

/// Checks the table's `rows` against the images the shards hold (`stored`: sample,
/// width, height): each image listed once, the same images and sizes, every label one
/// of `classes`. The check for stores written before `images_sha256` was recorded.
pub(crate) fn check_against_shards(
    dir: &Path,
    rows: &[ImageInfo],
    mut stored: Vec<[u32; 3]>,
    classes: usize,
) -> Result<(), StoreError> {
    let path = dir.join(IMAGES);
    let mut listed: Vec<[u32; 3]> = Vec::with_capacity(rows.len());
    for i in rows {
        // docs/FORMAT.md: relative, `/`-separated, no empty, `.` or `..` component (a
        // reader joins it to the dataset's root)
        if i.path.starts_with('/')
            || i.path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "sample {}: path {:?} is not relative to the dataset's root (no empty, \
                     `.` or `..` part)",
                    i.sample_id, i.path
                ),
            ));
        }
        if i.label as usize >= classes {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "sample {}: label {} of {classes} classes",
                    i.sample_id, i.label
                ),
            ));
        }
        listed.push([i.sample_id, i.width, i.height]);
    }
    listed.sort_unstable();
    if let Some(w) = listed.windows(2).find(|w| w[0][0] == w[1][0]) {
        return Err(StoreError::corrupt(
            &path,
            format!("sample {} listed twice", w[0][0]),
        ));
    }
    stored.sort_unstable();
    if listed != stored {
        let diff = listed
            .iter()
            .zip(&stored)
            .find(|(a, b)| a != b)
            .map(|(a, b)| {
                format!(
                    "first difference: it lists {a:?}, the shards hold {b:?} (sample, width, height)"
                )
            })
            .unwrap_or_else(|| {
                format!(
                    "it lists {} images, the shards {}",
                    listed.len(),
                    stored.len()
                )
            });
        return Err(StoreError::corrupt(
            &path,
            format!("does not match the shards: {diff}"),
        ));
    }
    Ok(())
}
