//! Third-party writers and readers: shards from other Parquet writers, pyarrow, DuckDB
//! and Polars reading ours, shards rewritten by pyarrow.

use super::*;

/// Rewrite `shard` with `props` (as another Parquet writer might) and record its new
/// size and checksum in the manifest.
fn rewrite_shard(dir: &Path, shard: &str, props: parquet::file::properties::WriterProperties) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let path = dir.join(shard);
    let f = std::fs::File::open(&path).unwrap();
    let r = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let kv = r.metadata().file_metadata().key_value_metadata().cloned();
    let schema = r.schema().clone();
    let props = props.into_builder().set_key_value_metadata(kv).build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    for b in r.build().unwrap() {
        w.write(&b.unwrap()).unwrap();
    }
    w.close().unwrap();
    std::fs::write(&path, &out).unwrap();
    record_shard(dir, shard);
}

/// Record `shard`'s size and checksum, as on disk, in the manifest.
fn record_shard(dir: &Path, shard: &str) {
    use sha2::Digest;
    let out = std::fs::read(dir.join(shard)).unwrap();
    let mpath = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for s in m["shards"].as_array_mut().unwrap() {
        if s["file"] == shard {
            s["bytes"] = out.len().into();
            s["sha256"] = hex::encode(sha2::Sha256::digest(&out)).into();
        }
    }
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn shards_from_other_parquet_writers_are_decoded_through_arrow() {
    use parquet::file::properties::WriterProperties;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    for enc in [Encoding::TopK { k: 3, f32: false }, Encoding::Dense] {
        let dir = tmp.path().join(format!("s-{enc}").replace(':', "_"));
        write_all(&dir, &ds, &config(&ds, enc, ShardFormat::Parquet), None).unwrap();
        let want: Vec<_> = {
            let st = LabelStore::open(&dir).unwrap();
            (0..ds.len() as u32).map(|i| st.crops(i).unwrap()).collect()
        };
        // shard 0: dictionary-encoded everywhere (not addressable in the map)
        rewrite_shard(
            &dir,
            "shard-000000.parquet",
            WriterProperties::builder().build(),
        );
        // shard 1: PLAIN but pages of a few values, so samples straddle pages
        rewrite_shard(
            &dir,
            "shard-000001.parquet",
            WriterProperties::builder()
                .set_dictionary_enabled(false)
                // pages of 6 rows: samples are 4 rows, so some straddle two pages
                .set_write_batch_size(6)
                .set_data_page_row_count_limit(6)
                .build(),
        );
        let st = LabelStore::open(&dir).unwrap();
        assert!(!st.is_mapped(), "{enc}: shard 0 is not addressable");
        let (mut mapped, mut decoded) = (0, 0);
        for id in 0..ds.len() as u32 {
            let v = st.view(id).unwrap();
            assert_eq!(v.to_vec(), want[id as usize], "{enc} sample {id}");
            if !v.is_empty() {
                if v.is_mapped() {
                    mapped += 1
                } else {
                    decoded += 1
                }
            }
        }
        // shard 0's 6 samples (5 was skipped) are decoded; of shard 1's 7, those whose
        // rows straddle a page are decoded and the others mapped; shards 2.. stay mapped
        assert!(decoded > 6 && decoded < 6 + 7, "{enc}: {decoded} decoded");
        assert!(mapped > 16, "{enc}: {mapped} mapped");
        let rep = st.verify().unwrap();
        assert!(rep.max_sum_error < 1e-2 && rep.rows > 0, "{enc}");
    }
}

/// Files our reader cannot take are refused naming why: a nullable column (Polars writes
/// every column nullable) and an image cut across two row groups.
#[test]
fn nullable_columns_and_images_across_row_groups_are_refused_by_name() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::properties::WriterProperties;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    for case in ["nullable", "row groups"] {
        let dir = tmp.path().join(case.replace(' ', "_"));
        write_all(
            &dir,
            &ds,
            &config(&ds, Encoding::Dense, ShardFormat::Parquet),
            None,
        )
        .unwrap();
        let path = dir.join("shard-000000.parquet");
        let r =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        let kv = r.metadata().file_metadata().key_value_metadata().cloned();
        let schema = r.schema().clone();
        let (schema, props) = match case {
            "nullable" => (
                Arc::new(arrow::datatypes::Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone().with_nullable(true))
                        .collect::<Vec<_>>(),
                )),
                WriterProperties::builder(),
            ),
            // POOL crops per image, row groups of POOL - 1 rows
            _ => (
                schema,
                WriterProperties::builder().set_max_row_group_row_count(Some(POOL as usize - 1)),
            ),
        };
        let props = props
            .set_dictionary_enabled(false)
            .set_key_value_metadata(kv)
            .build();
        let mut out = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).unwrap();
        for b in r.build().unwrap() {
            let b = b.unwrap();
            w.write(
                &arrow::record_batch::RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                    .unwrap(),
            )
            .unwrap();
        }
        w.close().unwrap();
        std::fs::write(&path, &out).unwrap();
        record_shard(&dir, "shard-000000.parquet");
        let e = match LabelStore::open(&dir) {
            Ok(st) => st.view(0).map(|_| ()).and_then(|_| st.verify().map(|_| ())),
            Err(e) => Err(e),
        }
        .unwrap_err()
        .to_string();
        let want = match case {
            "nullable" => "column sample_id is nullable",
            _ => "straddle two row groups",
        };
        assert!(
            e.contains(want) && e.contains("shard-000000.parquet"),
            "{case}: {e}"
        );
    }
}

#[test]
fn arrow_tools_read_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let dense = tmp.path().join("dense");
    write_all(
        &dense,
        &ds,
        &config(&ds, Encoding::Dense, ShardFormat::Parquet),
        None,
    )
    .unwrap();
    let topk = tmp.path().join("topk");
    write_all(
        &topk,
        &ds,
        &config(
            &ds,
            Encoding::TopK { k: 5, f32: false },
            ShardFormat::Parquet,
        ),
        None,
    )
    .unwrap();
    let script = format!(
        r#"
import sys
try:
    import pyarrow.parquet as pq, duckdb, polars as pl
except ImportError as e:
    sys.exit(f"missing {{e.name}}: pip install pyarrow duckdb polars (make test installs them)")
dense, topk, rows = {dense:?}, {topk:?}, {rows}
import glob
t = pq.read_table(sorted(glob.glob(dense + "/shard-*.parquet")))
assert t.num_rows == rows, t.num_rows
want = ["sample_id", "crop_id", "top", "left", "height", "width", "flip", "prob"]
assert t.column_names == want, t.column_names
assert str(t.schema.field("prob").type) == "fixed_size_list<item: halffloat not null>[10]", t.schema.field("prob").type
assert str(t.schema.field("sample_id").type) == "uint32" and str(t.schema.field("crop_id").type) == "uint16"
s = duckdb.sql(f"select min(list_sum(prob::float[])), max(list_sum(prob::float[])), count(*) from '{{dense}}/shard-*.parquet'").fetchall()[0]
assert abs(s[0] - 1) < 1e-2 and abs(s[1] - 1) < 1e-2 and s[2] == rows, s
imgs = duckdb.sql(f"select count(*), min(width) from '{{dense}}/images.parquet'").fetchall()[0]
assert imgs[0] == rows // 4 and imgs[1] >= 100, imgs
df = pl.read_parquet(f"{{topk}}/shard-*.parquet")
assert df.height == rows and df.columns[-2:] == ["topk_class", "topk_prob"], df.columns
sums = df.select(pl.col("topk_prob").arr.sum()).to_series()
assert sums.max() <= 1.0 + 1e-2, sums.max()

# docs/FORMAT.md, "Reading the labels from Python", as written there
import json
for S in (dense, topk):
    t = pq.read_table(sorted(glob.glob(f"{{S}}/shard-*.parquet")))      # one row per crop
    images = pq.read_table(f"{{S}}/images.parquet")                     # sample_id, path, label, ...
    sizes = json.loads(pq.read_metadata(f"{{S}}/shard-000000.parquet").metadata[b"meal.images"])
    assert t.num_rows == rows and images.num_rows == rows // 4 and len(sizes[0]) == 3, sizes
    kv = duckdb.sql(f"""SELECT decode(value) FROM parquet_kv_metadata('{{S}}/shard-000000.parquet')
                   WHERE key = 'meal.images'""").fetchall()
    assert json.loads(kv[0][0]) == sizes, kv
    crops = (pl.scan_parquet(f"{{S}}/shard-*.parquet")
               .join(pl.scan_parquet(f"{{S}}/images.parquet"), on="sample_id").collect())
    assert crops.height == rows and "path" in crops.columns and "label" in crops.columns
    assert json.loads(pl.read_parquet_metadata(f"{{S}}/shard-000000.parquet")["meal.images"]) == sizes
    if S == dense:
        j = duckdb.sql(f"""SELECT i.path, i.label, s.crop_id, s.top, s."left", s.flip,
                          list_sum(s.prob::FLOAT[]) AS total
                   FROM '{{S}}/shard-*.parquet' s JOIN '{{S}}/images.parquet' i USING (sample_id)""").fetchall()
        assert len(j) == rows and all(abs(r[-1] - 1) < 1e-2 for r in j), len(j)
        top = crops.select(pl.col("prob").arr.arg_max()).to_series()
    else:
        top = crops.select(pl.col("topk_class").arr.first()).to_series()
    assert top.len() == rows and 0 <= top.min() and top.max() < 10, top
# the two ways give one top class per crop
d = pl.read_parquet(f"{{dense}}/shard-*.parquet").select("sample_id", "crop_id", pl.col("prob").arr.arg_max().alias("a"))
k = pl.read_parquet(f"{{topk}}/shard-*.parquet").select("sample_id", "crop_id", pl.col("topk_class").arr.first().cast(pl.UInt32).alias("b"))
both = d.join(k, on=["sample_id", "crop_id"])
assert both.height == rows and (both["a"].cast(pl.UInt32) == both["b"]).mean() > 0.99, both
print("ok", rows)
"#,
        rows = (ds.len() - 1) * POOL as usize
    );
    run_python(&script);
}

/// pyarrow's defaults (dictionary pages, its own page sizes, snappy), zstd (Polars'
/// default) and no compression are read; gzip (not compiled in) is refused naming the
/// shard, the column and the codec.
#[test]
fn shards_rewritten_by_pyarrow_are_read_and_gzip_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let dir = tmp.path().join("topk");
    let cfg = config(
        &ds,
        Encoding::TopK { k: 5, f32: false },
        ShardFormat::Parquet,
    );
    write_all(&dir, &ds, &cfg, None).unwrap();
    let want: Vec<_> = {
        let st = LabelStore::open(&dir).unwrap();
        (0..ds.len() as u32).map(|i| st.crops(i).unwrap()).collect()
    };
    let script = format!(
        r#"
import sys
try:
    import pyarrow.parquet as pq
except ImportError as e:
    sys.exit(f"missing {{e.name}}: pip install pyarrow (make test installs it)")
d = {dir:?}
def load(name):
    # a shard's file-level key-value metadata (meal.images) travels with the table
    kv = pq.read_metadata(d + name).metadata
    t = pq.read_table(d + name)
    return t.replace_schema_metadata({{k: v for k, v in kv.items() if k != b"ARROW:schema"}})
pq.write_table(load("/shard-000001.parquet"), d + "/shard-000001.parquet")
pq.write_table(load("/shard-000002.parquet"), d + "/shard-000002.parquet", compression="none")
pq.write_table(load("/shard-000003.parquet"), d + "/shard-000003.parquet", compression="zstd")
pq.write_table(load("/shard-000000.parquet"), d + "/shard-000000.gzip", compression="gzip")
"#
    );
    run_python(&script);
    for shard in 1..=3 {
        record_shard(&dir, &format!("shard-{shard:06}.parquet"));
    }
    let st = LabelStore::open(&dir).unwrap();
    for id in 0..ds.len() as u32 {
        assert_eq!(st.crops(id).unwrap(), want[id as usize], "sample {id}");
    }
    assert!(st.view(14).unwrap().len() == POOL as usize);
    st.verify().unwrap();
    drop(st);
    std::fs::rename(
        dir.join("shard-000000.gzip"),
        dir.join("shard-000000.parquet"),
    )
    .unwrap();
    record_shard(&dir, "shard-000000.parquet");
    let e = LabelStore::open(&dir)
        .err()
        .expect("gzip is refused")
        .to_string();
    assert!(
        e.contains("shard-000000.parquet")
            && e.contains("column sample_id is compressed with GZIP")
            && e.contains("compression='none'"),
        "{e}"
    );
}

/// A shard that breaks a rule of docs/FORMAT.md that readers rely on, with its manifest
/// checksum updated (so only the rule can catch it), is refused by `verify`, naming the
/// shard, the row and the rule: top-k probabilities out of descending order (readers
/// take the first as the top class), a class beyond the store's or listed twice,
/// samples out of ascending order (refused at open), a flip byte not 0 or 1.
#[test]
fn rows_breaking_the_formats_rules_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(
        &ds,
        Encoding::TopK { k: 3, f32: false },
        ShardFormat::Parquet,
    );
    let cases = [
        ("reversed", "top-k probabilities not in descending order"),
        ("beyond", "top-k class 10 of a store of 10 classes"),
        ("twice", "listed twice"),
        ("samples", "come after sample"),
    ];
    for (case, want) in cases {
        let dir = tmp.path().join(case);
        write_all(&dir, &ds, &cfg, None).unwrap();
        let script = format!(
            r#"
import sys
try:
    import pyarrow as pa, pyarrow.parquet as pq
except ImportError as e:
    sys.exit(f"missing {{e.name}}: pip install pyarrow (make test installs it)")
p = {path:?}
kv = pq.read_metadata(p).metadata
t = pq.read_table(p)
case = {case:?}
rows = t.to_pylist()
if case == "samples":
    # each image's rows kept together and in crop order, the images last to first
    rows.sort(key=lambda r: (-r["sample_id"], r["crop_id"]))
else:
    r = rows[1]
    if case == "reversed":
        r["topk_class"] = r["topk_class"][::-1]
        r["topk_prob"] = r["topk_prob"][::-1]
    elif case == "beyond":
        r["topk_class"][2] = 10
    else:
        r["topk_class"][1] = r["topk_class"][0]
t = pa.Table.from_pylist(rows, schema=t.schema)
t = t.replace_schema_metadata({{k: v for k, v in kv.items() if k != b"ARROW:schema"}})
pq.write_table(t, p, compression="none")
"#,
            path = dir.join("shard-000000.parquet").display().to_string(),
        );
        run_python(&script);
        record_shard(&dir, "shard-000000.parquet");
        let e = match LabelStore::open(&dir) {
            Ok(st) => st.verify().map(|_| ()),
            Err(e) => Err(e),
        }
        .expect_err(case)
        .to_string();
        assert!(
            e.contains(want) && e.contains("shard-000000.parquet"),
            "{case}: {e}"
        );
    }
    // a safetensors store's flip byte
    let dir = tmp.path().join("flip");
    write_all(
        &dir,
        &ds,
        &config(&ds, Encoding::Dense, ShardFormat::Safetensors),
        None,
    )
    .unwrap();
    let path = dir.join("shard-000000.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["flip"]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[8 + n + start] = 2;
    std::fs::write(&path, &bytes).unwrap();
    record_shard(&dir, "shard-000000.safetensors");
    let e = LabelStore::open(&dir)
        .unwrap()
        .verify()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("flip 2 (0 or 1)") && e.contains("shard-000000.safetensors"),
        "{e}"
    );
}
