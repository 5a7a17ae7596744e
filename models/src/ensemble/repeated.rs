//! Teachers given twice: the same weights seen the same way weigh twice in the mean.

use super::{Ensemble, Teacher};

impl Ensemble {
    /// Pairs `(i, j)`, `i < j`, of teachers that are the same weights seen the same way
    /// (file hash, side, filter, normalisation): the mean counts them twice. Allowed
    /// (a weighted ensemble), but more often a copy-paste slip, which callers warn of;
    /// at another side or normalisation it is another view (test-time augmentation).
    pub fn repeated(&self) -> Vec<(usize, usize)> {
        let key = |t: &Teacher| {
            let i = &t.info;
            (
                i.sha256.clone(),
                i.input_size,
                i.filter.clone(),
                i.mean,
                i.std,
            )
        };
        let mut out = Vec::new();
        for (j, b) in self.teachers.iter().enumerate() {
            if let Some(i) = self.teachers[..j].iter().position(|a| key(a) == key(b)) {
                out.push((i, j));
            }
        }
        out
    }

    /// [`Ensemble::repeated`] in words, one line per pair, each teacher by its name in
    /// `names` (as the caller's command line gives it).
    pub fn repeated_said(&self, names: &[String]) -> Vec<String> {
        self.repeated()
            .into_iter()
            .map(|(i, j)| {
                let sha = &self.teachers[j].info.sha256;
                let name = |k: usize| names.get(k).map_or("?", String::as_str);
                format!(
                    "{} and {} are the same weights (sha256 {}): the ensemble's mean counts \
                     them twice",
                    name(i),
                    name(j),
                    &sha[..12.min(sha.len())]
                )
            })
            .collect()
    }
}
