//! The image table (`images.parquet`): its checksum, and its rows against the shards
//! (each stored image once) and against the listing each shard recorded of its images
//! (paths and labels), the paths relative to the dataset's root.

use super::*;

#[test]
fn a_damaged_images_table_is_detected() {
    use arrow::array::{Array, UInt32Array};
    use arrow::record_batch::RecordBatch;
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, dir) = written(tmp.path(), Encoding::Dense, ShardFormat::Parquet);
    let table = dir.join("images.parquet");
    let verify_err = || {
        let st = LabelStore::open(&dir).unwrap();
        st.verify().unwrap_err().to_string()
    };
    let good = std::fs::read(&table).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    std::fs::write(&table, &bad).unwrap();
    let e = verify_err();
    assert!(
        e.contains("images.parquet") && e.contains("checksum"),
        "{e}"
    );
    std::fs::write(&table, &good).unwrap();
    let rep = LabelStore::open(&dir).unwrap().verify().unwrap();
    // (the fixture skips an image: the table has no label to check its shard's by)
    let with_skipped = |st: &LabelStore| {
        st.manifest()
            .shards
            .iter()
            .filter(|s| s.images > 0 && !s.skipped.is_empty())
            .count()
    };
    let st = LabelStore::open(&dir).unwrap();
    assert_eq!(with_skipped(&st), 1);
    assert_eq!(rep.unchecked_listings.skipped, 1);
    assert_eq!(
        rep.unchecked_listings.unrecorded, 0,
        "every other listing checked"
    );

    // an older store (no recorded checksum) whose table lists sample 1 where sample 2
    // was: sample 1 twice, sample 2 never
    let manifest = dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert!(m["images_sha256"].is_string(), "the checksum is recorded");
    m.as_object_mut().unwrap().remove("images_sha256");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // the table rewritten with column `col` mapped by `f`
    let rewrite = |col: usize, f: &dyn Fn(&dyn Array) -> Arc<dyn Array>| {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&table).unwrap(),
        )
        .unwrap();
        let schema = reader.schema().clone();
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
        for b in batches {
            let mut cols = b.columns().to_vec();
            cols[col] = f(b.column(col).as_ref());
            w.write(&RecordBatch::try_new(b.schema(), cols).unwrap())
                .unwrap();
        }
        w.close().unwrap();
        std::fs::write(&table, &out).unwrap();
    };
    let kept = std::fs::read(&table).unwrap();
    rewrite(0, &|a| {
        let ids = a.as_any().downcast_ref::<UInt32Array>().unwrap();
        Arc::new(
            (0..ids.len())
                .map(|i| if ids.value(i) == 2 { 1 } else { ids.value(i) })
                .collect::<UInt32Array>(),
        )
    });
    let e = verify_err();
    assert!(
        e.contains("images.parquet") && e.contains("sample 1 listed twice"),
        "{e}"
    );
    // labels rotated, or a path that leaves the root: refused by the shards' listing
    // hashes and the path rule (a reader of the table would take them as written)
    std::fs::write(&table, &kept).unwrap();
    rewrite(2, &|a| {
        let l = a.as_any().downcast_ref::<UInt32Array>().unwrap();
        Arc::new(
            (0..l.len())
                .map(|i| (l.value(i) + 1) % 10)
                .collect::<UInt32Array>(),
        )
    });
    let e = verify_err();
    assert!(
        e.contains("images.parquet") && e.contains(".parquet was written for (its listing_sha256"),
        "{e}"
    );
    std::fs::write(&table, &kept).unwrap();
    rewrite(1, &|a| {
        let p = a
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        Arc::new(
            (0..p.len())
                .map(|i| {
                    if i == 0 {
                        "../../etc/passwd".to_string()
                    } else {
                        p.value(i).to_string()
                    }
                })
                .map(Some)
                .collect::<arrow::array::StringArray>(),
        )
    });
    let e = verify_err();
    assert!(
        e.contains("images.parquet") && e.contains("\"../../etc/passwd\" is not relative"),
        "{e}"
    );

    // a shard's listing hash dropped from the manifest (as stores before it lack it):
    // its rotated labels pass, and the report counts the shard as unchecked
    std::fs::write(&table, &kept).unwrap();
    rewrite(2, &|a| {
        let l = a.as_any().downcast_ref::<UInt32Array>().unwrap();
        Arc::new(
            (0..l.len())
                .map(|i| (l.value(i) + 1) % 10)
                .collect::<UInt32Array>(),
        )
    });
    for s in m["shards"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("listing_sha256");
    }
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let st = LabelStore::open(&dir).unwrap();
    let rep = st.verify().unwrap();
    assert_eq!(
        rep.unchecked_listings.unrecorded,
        st.manifest().shards.len() - with_skipped(&st)
    );
    assert_eq!(rep.unchecked_listings.skipped, 1);
    // a pipe at the table's name is refused, not read (the read waited for a writer)
    std::fs::remove_file(&table).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&table)
        .status()
        .unwrap();
    assert!(made.success());
    let e = verify_err();
    assert!(
        e.contains("images.parquet") && e.contains("not a regular file"),
        "{e}"
    );
}
