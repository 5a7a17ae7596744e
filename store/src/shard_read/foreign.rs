//! Whether a Parquet file another writer made (pyarrow, DuckDB, Polars) is one the
//! reader can take as a shard: the store's columns, and a codec compiled in.

/// Whether a file's columns are the store's: same names, types and nullability. The
/// name of a list's item field is ignored (arrow-rs writes `item`, pyarrow `element`).
pub(super) fn column_mismatch(
    got: &arrow::datatypes::Fields,
    want: &arrow::datatypes::Fields,
) -> Option<String> {
    use arrow::datatypes::DataType;
    let names = |f: &arrow::datatypes::Fields| {
        f.iter()
            .map(|c| c.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if got.len() != want.len()
        || got
            .iter()
            .zip(want.iter())
            .any(|(g, w)| g.name() != w.name())
    {
        return Some(format!(
            "columns ({}), the store's are ({})",
            names(got),
            names(want)
        ));
    }
    got.iter().zip(want.iter()).find_map(|(g, w)| {
        // nullable columns would let a null pass for a value: ours are required
        let inner = |f: &arrow::datatypes::Field| match f.data_type() {
            DataType::FixedSizeList(i, n) => Some((i.data_type().clone(), i.is_nullable(), *n)),
            _ => None,
        };
        let same_type = match (inner(g), inner(w)) {
            (Some((gt, _, gn)), Some((wt, _, wn))) => gt == wt && gn == wn,
            _ => g.data_type() == w.data_type(),
        };
        if !same_type {
            return Some(format!(
                "column {}: type {}, the store's is {}",
                g.name(),
                g.data_type(),
                w.data_type()
            ));
        }
        let nullable = g.is_nullable() || inner(g).is_some_and(|(_, n, _)| n);
        nullable.then(|| {
            format!(
                "column {} is nullable: the store's columns are required (not null); \
                 pyarrow: a schema with nullable=False fields",
                g.name()
            )
        })
    })
}

/// A column chunk compressed with a codec this build does not decode, named. Snappy
/// (pyarrow's and DuckDB's default), zstd (Polars') and LZ4 are read (decoded, slower
/// than our uncompressed pages); gzip, brotli and LZO are not compiled in.
pub(super) fn unreadable_codec(meta: &parquet::file::metadata::ParquetMetaData) -> Option<String> {
    use parquet::basic::Compression as C;
    meta.row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .find_map(|cc| {
            match cc.compression() {
                C::UNCOMPRESSED | C::SNAPPY | C::ZSTD(_) | C::LZ4 | C::LZ4_RAW => None,
                // GZIP(GzipLevel(6)) is read from a file as GZIP(GzipLevel(..)): the name only
                other => Some(format!(
                    "column {} is compressed with {}, which is not read here: write \
                 shards uncompressed (pyarrow: compression='none'), or with snappy, zstd \
                 or lz4",
                    cc.column_path().string(),
                    other.to_string().split('(').next().unwrap_or_default()
                )),
            }
        })
}
