//! A shard's per-sample row index: where each sample's rows are, built from the rows
//! in file order when the shard is opened.

/// Where one sample's rows are.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Entry {
    pub(crate) rg: u32,
    /// first row within the row group
    pub(crate) first: u32,
    pub(crate) n: u32,
    /// the first crop id when the rows' ids run `crop0, crop0 + 1, ...`, else `u32::MAX`
    pub(crate) crop0: u32,
}

/// Builds the sample index from rows in file order, checking each sample's rows are
/// contiguous (and, for the mapped path, whether its crop ids run consecutively).
#[derive(Default)]
pub(crate) struct Runs {
    runs: Vec<(u32, Entry)>,
    seen: std::collections::HashSet<u32>,
}

impl Runs {
    pub(crate) fn push(&mut self, id: u32, crop: u16, rg: usize, row: usize) -> Result<(), String> {
        if let Some((last, e)) = self.runs.last_mut() {
            if *last == id && e.rg as usize == rg && (e.first + e.n) as usize == row {
                if e.crop0 != u32::MAX && e.crop0 + e.n != crop as u32 {
                    e.crop0 = u32::MAX;
                }
                e.n += 1;
                return Ok(());
            }
        }
        if !self.seen.insert(id) {
            // the previous run is this sample's, cut at a row-group boundary
            let straddles = self
                .runs
                .last()
                .is_some_and(|(last, e)| *last == id && e.rg as usize != rg);
            return Err(match straddles {
                true => format!(
                    "the rows of sample {id} straddle two row groups (a shard keeps each \
                     image's rows in one row group: docs/FORMAT.md; pyarrow's \
                     row_group_size must be a multiple of the crops per image)"
                ),
                false => format!("the rows of sample {id} are not contiguous"),
            });
        }
        // samples in ascending order, as written (docs/FORMAT.md): a reader may take a
        // shard's first and last rows as its range
        if let Some((last, _)) = self.runs.last() {
            if id < *last {
                return Err(format!(
                    "the rows of sample {id} come after sample {last}'s (a shard's samples \
                     are in ascending order)"
                ));
            }
        }
        let narrow = |v: usize| u32::try_from(v).map_err(|_| format!("row {v} beyond u32"));
        self.runs.push((
            id,
            Entry {
                rg: narrow(rg)?,
                first: narrow(row)?,
                n: 1,
                crop0: crop as u32,
            },
        ));
        Ok(())
    }

    pub(crate) fn finish(self, rows: usize) -> Result<(u32, Vec<Entry>), String> {
        let lo = self.runs.iter().map(|r| r.0).min().unwrap_or(0);
        // (u64: a corrupt id of u32::MAX overflowed `h + 1`)
        let hi = self
            .runs
            .iter()
            .map(|r| r.0 as u64)
            .max()
            .map_or(0, |h| h + 1);
        // a shard covers one range of samples; ids far apart mean a corrupt column
        // (and would size the index by garbage)
        if hi - lo as u64 > 16 * rows as u64 + 65_536 {
            return Err(format!(
                "sample ids {lo}..{hi} span far more than its {rows} rows"
            ));
        }
        let mut index = vec![Entry::default(); (hi - lo as u64) as usize];
        for (id, e) in self.runs {
            index[(id - lo) as usize] = e;
        }
        Ok((lo, index))
    }
}
