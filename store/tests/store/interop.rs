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

/// pyarrow, DuckDB and Polars read the shards, and docs/FORMAT.md's Python blocks run
/// as written there against real stores (dense, top-k, safetensors): their DuckDB and
/// Polars top-k decoders give the Rust reader's labels, the pixel boxes round back, the
/// safetensors reader gives the Parquet store's values bit for bit, and the hash
/// functions give the manifest's hashes. A recipe edited wrong in the docs fails here.
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
    let sft = tmp.path().join("safetensors");
    write_all(
        &sft,
        &ds,
        &config(&ds, Encoding::Dense, ShardFormat::Safetensors),
        None,
    )
    .unwrap();
    // what the Python side compares with: the Rust reader's dense labels of the top-k
    // store, in store order, and the dataset's (path, size, label) for the hashes
    let want = tmp.path().join("want.json");
    let st = LabelStore::open(&topk).unwrap();
    let mut labels: Vec<Vec<f32>> = Vec::new();
    for id in 0..ds.len() as u32 {
        let crops = st.view(id).unwrap();
        for i in 0..crops.len() {
            let mut d = vec![0f32; 10];
            crops.dense_into(i, &mut d);
            labels.push(d);
        }
    }
    std::fs::write(&want, serde_json::to_vec(&labels).unwrap()).unwrap();
    let samples = tmp.path().join("samples.json");
    let listed: Vec<(String, u64, u32)> = ds
        .samples()
        .iter()
        .map(|s| (s.path.clone(), s.bytes, s.label))
        .collect();
    std::fs::write(&samples, serde_json::to_vec(&listed).unwrap()).unwrap();
    let script = format!(
        r##"
import sys
try:
    import pyarrow.parquet as pq, duckdb, polars as pl, numpy
except ImportError as e:
    sys.exit(f"missing {{e.name}}: pip install pyarrow duckdb polars numpy (make test installs them)")
dense, topk, sft, rows = {dense:?}, {topk:?}, {sft:?}, {rows}
import glob, json
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

# docs/FORMAT.md's Python blocks, run as written there, statement by statement: each
# expression's value is kept (a DuckDB relation fetched, so its query runs)
import ast, re
doc = open({doc:?}).read()
blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
assert len(blocks) == 5, [b[:40] for b in blocks]
B_READ, B_PY, B_TOPK, B_ST, B_HASH = blocks
def run(block, ns, skip=None):
    vals = []
    tree = ast.parse("\n".join(l for l in block.splitlines() if not (skip and skip in l)))
    for node in tree.body:
        if isinstance(node, ast.Expr):
            v = eval(compile(ast.Expression(node.value), "FORMAT.md", "eval"), ns)
            vals.append(v.fetchall() if hasattr(v, "fetchall") else v)
        else:
            exec(compile(ast.Module([node], []), "FORMAT.md", "exec"), ns)
    return vals
want = json.load(open({want:?}))        # the Rust reader's dense labels of the top-k store
for S in (dense, topk):
    ns = {{"S": S}}
    run(B_READ, ns)
    assert ns["writer_running"](S) is False
    is_dense = S == dense
    other = "top-k:" if is_dense else "dense:"   # the other encoding's lines left out
    vals = run(B_PY, ns, skip="# " + other)
    t, crops, sizes = ns["t"], ns["crops"], ns["sizes"]
    assert t.num_rows == rows and ns["images"].num_rows == rows // 4 and len(sizes[0]) == 3, sizes
    # the join: store order, the image's size renamed, its path and label
    assert crops["sample_id"].to_list() == t["sample_id"].to_pylist(), "join order"
    assert crops["crop_id"].to_list() == t["crop_id"].to_pylist(), "join order"
    assert {{"image_width", "image_height", "path", "label", "width"}} <= set(crops.columns), crops.columns
    box = vals[0]                             # DuckDB: the boxes in pixels, in store order
    assert [(r[0], r[1]) for r in box] == list(zip(t["sample_id"].to_pylist(), t["crop_id"].to_pylist()))
    for r, top, left, h, w in zip(box, t["top"].to_pylist(), t["left"].to_pylist(), t["height"].to_pylist(), t["width"].to_pylist()):
        iw, ih = r[4], r[5]
        assert (r[6], r[7], r[8], r[9]) == (round(top * ih), round(left * iw), round(h * ih), round(w * iw)), r
        assert abs(top * ih - r[6]) < 1e-3 and r[7] + r[9] <= iw and r[6] + r[8] <= ih, r
    if is_dense:
        assert all(abs(v[0] - 1) < 1e-2 for v in vals[1]), "dense sums"
    assert json.loads(vals[-3][0][0]) == sizes, "meal.images through DuckDB"
    assert json.loads(vals[-1]) == sizes, "meal.images through Polars"
    top = vals[-2].to_series().to_list()
    assert len(top) == rows and 0 <= min(top) and max(top) < 10, top
    if not is_dense:
        decoded = run(B_TOPK, ns)
        duck = [r[2] for r in decoded[0]]
        polar = decoded[1]["prob"].to_list()
        for got in (duck, polar):
            assert len(got) == rows
            worst = max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w))
            assert worst < 1e-6, worst          # ours decodes in f32, these in f64
        assert top == [max(range(10), key=lambda c: w[c]) for w in want], "top-k's first = argmax"
# the safetensors reader: the dense store's values, bit for bit
ns = {{"S": sft}}
run(B_READ, ns)
run(B_ST, ns)
m, files = ns["store_files"](sft)
t = pq.read_table(ns["store_files"](dense)[1])
import numpy as np
got = [ns["read_shard"](f) for f in files]
prob = np.concatenate([g[1]["prob"] for g in got])
assert np.array_equal(prob.astype(np.float32), np.array(t["prob"].to_pylist(), np.float32))
assert np.array_equal(np.concatenate([g[1]["flip"] for g in got]).astype(bool), np.array(t["flip"].to_pylist()))
assert json.loads(got[0][0]["meal.images"]) == json.loads(pq.read_metadata(ns["store_files"](dense)[1][0]).metadata[b"meal.images"])
# the hashes, from the dataset's files
ns = {{}}
run(B_HASH, ns)
m = json.load(open(dense + "/manifest.json"))
samples = json.load(open({samples:?}))
assert ns["fingerprint"](m["config"]["classes"], samples) == m["config"]["dataset"]["sha256"]
for sh in m["shards"]:
    part = samples[sh["first_sample"]:sh["end_sample"]]
    assert ns["listing_sha256"](part) == sh["listing_sha256"], sh["file"]
    assert ns["sizes_sha256"](part) == sh["sizes_sha256"], sh["file"]

# the two ways give one top class per crop
d = pl.read_parquet(f"{{dense}}/shard-*.parquet").select("sample_id", "crop_id", pl.col("prob").arr.arg_max().alias("a"))
k = pl.read_parquet(f"{{topk}}/shard-*.parquet").select("sample_id", "crop_id", pl.col("topk_class").arr.first().cast(pl.UInt32).alias("b"))
both = d.join(k, on=["sample_id", "crop_id"])
assert both.height == rows and (both["a"].cast(pl.UInt32) == both["b"]).mean() > 0.99, both
print("ok", rows)
"##,
        rows = (ds.len() - 1) * POOL as usize,
        doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md"),
        want = want.display().to_string(),
        samples = samples.display().to_string(),
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
        (
            "images",
            "meal.images metadata lists other samples than its rows",
        ),
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
elif case == "images":
    # an id the rows do not have, far past the dataset (merge indexed paths by it)
    import json
    imgs = json.loads(kv[b"meal.images"])
    imgs[-1][0] = 99999999
    kv[b"meal.images"] = json.dumps(imgs).encode()
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
        // and a reader's owned crops check each row's rules (inspect printed such a
        // row, a class id past 16 bits as another class)
        if !["samples", "images"].contains(&case) {
            let st = LabelStore::open(&dir).unwrap();
            let e = (0..ds.len() as u32)
                .find_map(|id| st.crops(id).err())
                .expect(case)
                .to_string();
            assert!(
                e.contains(want) && e.contains("shard-000000.parquet"),
                "{case}: {e}"
            );
        }
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
