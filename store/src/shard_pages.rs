//! Where a Parquet shard's PLAIN, uncompressed data pages lie in its memory map, so the
//! reader can address a sample's values by arithmetic (shard_read.rs). Pages another
//! writer laid out otherwise are reported as not addressable and read through arrow.

use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding as PageEncoding};
use parquet::column::page::Page;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::serialized_reader::SerializedPageReader;

use super::label::Encoding;

/// The data pages of one row group, for the leaf columns from `COL_TOP` on.
pub(crate) struct GroupPages {
    pub(crate) cols: Vec<Vec<Span>>,
}

/// One PLAIN data page: values `first .. first + n` of its column chunk start at byte
/// `offset` of the file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) first: usize,
    pub(crate) n: usize,
    pub(crate) offset: usize,
}

/// How a column's PLAIN values are laid out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Width {
    Bytes(usize),
    Bits,
}

impl Width {
    pub(crate) fn len(self, n: usize) -> usize {
        match self {
            Width::Bytes(w) => w * n,
            Width::Bits => n.div_ceil(8),
        }
    }
}

/// The value widths of the leaf columns from `COL_TOP` on, and values per row.
pub(crate) fn widths(enc: Encoding, classes: usize) -> Vec<(Width, usize)> {
    let mut w = vec![(Width::Bytes(4), 1); 4];
    w.push((Width::Bits, 1));
    match enc {
        Encoding::Dense => w.push((Width::Bytes(2), classes)),
        Encoding::TopK { k, f32 } => {
            // uint16 is stored as Parquet INT32
            w.push((Width::Bytes(4), k as usize));
            w.push((Width::Bytes(if f32 { 4 } else { 2 }), k as usize));
        }
    }
    w
}

/// Locate the PLAIN data pages of one column chunk in the map, or `None` when they are
/// not directly addressable (compressed, another encoding, nulls, a copy outside the map).
pub(crate) fn locate_pages(
    bytes: &Bytes,
    meta: &ParquetMetaData,
    rg: usize,
    col: usize,
    width: Width,
    expect: usize,
) -> Option<Vec<Span>> {
    let rgm = meta.row_group(rg);
    let cc = rgm.column(col);
    if cc.compression() != Compression::UNCOMPRESSED {
        return None;
    }
    let (max_rep, max_def) = (
        cc.column_descr().max_rep_level(),
        cc.column_descr().max_def_level(),
    );
    let rows = usize::try_from(rgm.num_rows()).ok()?;
    let reader = SerializedPageReader::new(Arc::new(bytes.clone()), cc, rows, None).ok()?;
    let (lo, hi) = (
        bytes.as_ptr() as usize,
        bytes.as_ptr() as usize + bytes.len(),
    );
    let mut spans = Vec::new();
    let mut v = 0;
    for page in reader {
        let page = page.ok()?;
        let (buf, n, at) = match &page {
            Page::DataPage {
                buf,
                num_values,
                encoding: PageEncoding::PLAIN,
                ..
            } => {
                // v1: [u32 length + repetition levels] [u32 length + definition levels] values
                let mut at = 0usize;
                for present in [max_rep > 0, max_def > 0] {
                    if present {
                        let len = u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?);
                        at = at.checked_add(4 + len as usize)?;
                    }
                }
                (buf, *num_values as usize, at)
            }
            Page::DataPageV2 {
                buf,
                num_values,
                num_nulls: 0,
                encoding: PageEncoding::PLAIN,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed: false,
                ..
            } => (
                buf,
                *num_values as usize,
                (*def_levels_byte_len + *rep_levels_byte_len) as usize,
            ),
            _ => return None,
        };
        let start = buf.as_ptr() as usize;
        if start < lo || start + buf.len() > hi {
            return None;
        }
        // exactly n values after the levels: no nulls, no empty lists
        if buf.len().checked_sub(at)? != width.len(n) {
            return None;
        }
        spans.push(Span {
            first: v,
            n,
            offset: start - lo + at,
        });
        v += n;
    }
    (v == expect).then_some(spans)
}
