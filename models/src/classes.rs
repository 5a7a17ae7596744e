//! What a weights file records of the classes it was trained on (`__metadata__`,
//! [`META_TRAINED_ON`]), and how those stand to a dataset's: every command that loads a
//! classifier against a dataset reads them (a classifier taken by index from weights
//! trained on the same classes in another order scored 0 %).

use std::collections::HashMap;
use std::path::Path;

use crate::error::ModelError;
use crate::weights::{safetensors_metadata, META_TRAINED_ON};

/// What a student's weights file records of its training (`__metadata__`, written by
/// `meal-student train`; weights from elsewhere, timm's, record nothing).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainedOn {
    /// Its classes, in logit order.
    pub classes: Option<Vec<String>>,
    /// The side it was trained at.
    pub res: Option<u32>,
}

/// How a dataset's classes map to the logits of weights that record theirs.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassOrder {
    /// Logit `i` is the dataset's class `i`: the same names in the same order, weights
    /// that record none, or numbers on one side (`0`, `1`, ...: a list file whose labels
    /// are the logits' indices, or weights trained on one, met with named classes).
    Same,
    /// The same classes in another order: the dataset's class `i` is logit `rows[i]`.
    Permuted(Vec<usize>),
    /// Some of the recorded classes, by name (a 100-class subset of ImageNet met with
    /// weights trained on all 1000): the dataset's class `i` is logit `rows[i]` of the
    /// `of` the weights record.
    Subset {
        /// The logit of each of the dataset's classes.
        rows: Vec<usize>,
        /// How many classes the weights record.
        of: usize,
    },
    /// The dataset's classes that the weights were not trained on (numbered ones: past
    /// the logits, or a logit named twice).
    Other(Vec<String>),
}

impl TrainedOn {
    /// Read from the weights at `path` (nothing for another format or no metadata). A
    /// record that does not parse, or names a class twice, is an error naming the file:
    /// taken as recording nothing, its classifier would be read by index unseen.
    pub fn of(path: &Path) -> Result<Self, ModelError> {
        let Some(json) = safetensors_metadata(path).and_then(|m| m.get(META_TRAINED_ON).cloned())
        else {
            return Ok(Self::default());
        };
        let bad = |reason: String| ModelError::ClassList {
            path: path.to_path_buf(),
            reason: format!("its {META_TRAINED_ON} record {reason}"),
        };
        let record: Self =
            serde_json::from_str(&json).map_err(|e| bad(format!("does not parse: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = record
            .classes
            .iter()
            .flatten()
            .find(|c| !seen.insert(c.as_str()))
        {
            return Err(bad(format!("names class {d:?} twice")));
        }
        // what the record says decides the model's classes and eval's side: a record
        // that cannot be true is said as such (it read as a bad --res, or as the
        // dataset's class count)
        if let Some(r) = record.res.filter(|r| !(1..=4096).contains(r)) {
            return Err(bad(format!("gives a side of {r} px (expected 1..=4096)")));
        }
        if let Some(c) = &record.classes {
            if c.is_empty() {
                return Err(bad("names no class".into()));
            }
            if let Some(n) = crate::weights::classifier_rows(path).filter(|&n| n != c.len()) {
                return Err(bad(format!(
                    "names {} classes for a classifier of {n} logits",
                    c.len()
                )));
            }
        }
        Ok(record)
    }

    /// How `data`'s classes stand to the recorded ones (see [`ClassOrder`]).
    pub fn order_of(&self, data: &[String]) -> ClassOrder {
        let Some(trained) = &self.classes else {
            return ClassOrder::Same;
        };
        if trained.as_slice() == data {
            return ClassOrder::Same;
        }
        let by_name: HashMap<&str, usize> = trained
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let unknown: Vec<String> = data
            .iter()
            .filter(|c| !by_name.contains_key(c.as_str()))
            .cloned()
            .collect();
        let identity = |r: &[usize]| r.iter().enumerate().all(|(i, &j)| i == j);
        let of = trained.len();
        let rows_of = |rows: Vec<usize>| match rows.len() == of {
            true if identity(&rows) => ClassOrder::Same,
            true => ClassOrder::Permuted(rows),
            false => ClassOrder::Subset { rows, of },
        };
        if unknown.is_empty() {
            return rows_of(data.iter().map(|c| by_name[c.as_str()]).collect());
        }
        // numbers on either side are the logits' indices, as eval counts them: a
        // numbered list file of the same images (ImageNet's 0..999 lists; class "10" is
        // logit 10 wherever a string sort put it), or weights trained on one, whose
        // logit named "i" is the named data's class i
        let numbers = |c: &[String]| -> Option<Vec<usize>> {
            c.iter().map(|c| c.parse::<usize>().ok()).collect()
        };
        if let Some(rows) = numbers(data) {
            // a number past the logits, or one logit under two names ("1", "01"), has
            // no logit of its own: named, not taken by index
            let mut seen = vec![false; of];
            let bad: Vec<String> = data
                .iter()
                .zip(&rows)
                .filter(|(_, &r)| r >= of || std::mem::replace(&mut seen[r], true))
                .map(|(c, _)| c.clone())
                .collect();
            return match bad.is_empty() {
                true => rows_of(rows),
                false => ClassOrder::Other(bad),
            };
        }
        if let Some(named) = numbers(trained).filter(|_| of == data.len()) {
            // the weights' numbers must be 0..N-1 (a list counted from 1 names no
            // logit 0): else neither by name nor by index is known to be right
            let mut rows = vec![usize::MAX; of];
            for (logit, &n) in named.iter().enumerate() {
                if let Some(r) = rows.get_mut(n) {
                    *r = logit;
                }
            }
            if !rows.contains(&usize::MAX) {
                return rows_of(rows);
            }
        }
        ClassOrder::Other(unknown)
    }
}

impl ClassOrder {
    /// The classifier rows to take from weights of this order, and how many rows such
    /// weights have (`None`: take them as they are).
    pub(crate) fn rows(&self) -> Option<(&[usize], usize)> {
        match self {
            ClassOrder::Permuted(r) => Some((r, r.len())),
            ClassOrder::Subset { rows, of } => Some((rows, *of)),
            _ => None,
        }
    }
}

/// A classifier's rows of `sd` (`fc.weight`, `fc.bias`: every model of ours) put in
/// the dataset's order: row `i` becomes the file's row `rows[i]` of its `of`. A
/// classifier of another row count is left as it is (the loader refuses or replaces it).
pub(crate) fn permute_classifier(
    sd: &mut HashMap<String, candle_core::Tensor>,
    rows: &[usize],
    of: usize,
) -> candle_core::Result<()> {
    for name in ["fc.weight", "fc.bias"] {
        let Some(t) = sd.get(name) else { continue };
        if t.dims().first() != Some(&of) {
            continue;
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = candle_core::Tensor::new(idx.as_slice(), t.device())?;
        let p = t.index_select(&idx, 0)?;
        sd.insert(name.to_string(), p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(c: &[&str]) -> TrainedOn {
        TrainedOn {
            classes: Some(c.iter().map(|s| s.to_string()).collect()),
            res: None,
        }
    }
    fn v(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn orders() {
        let t = on(&["cat", "dog", "fox"]);
        assert_eq!(t.order_of(&v(&["cat", "dog", "fox"])), ClassOrder::Same);
        assert_eq!(TrainedOn::default().order_of(&v(&["a"])), ClassOrder::Same);
        assert_eq!(
            t.order_of(&v(&["fox", "cat", "dog"])),
            ClassOrder::Permuted(vec![2, 0, 1])
        );
        assert_eq!(t.order_of(&v(&["0", "1", "2"])), ClassOrder::Same);
        // numbered data: some of the logits, or past them / twice (refused by name)
        assert_eq!(
            t.order_of(&v(&["2", "0"])),
            ClassOrder::Subset {
                rows: vec![2, 0],
                of: 3
            }
        );
        assert_eq!(
            t.order_of(&v(&["1", "2", "3"])),
            ClassOrder::Other(v(&["3"]))
        );
        assert_eq!(
            t.order_of(&v(&["01", "1", "2"])),
            ClassOrder::Other(v(&["1"]))
        );
        // weights numbered from 1: neither by name nor by index
        assert_eq!(
            on(&["1", "2", "3"]).order_of(&v(&["cat", "dog", "fox"])),
            ClassOrder::Other(v(&["cat", "dog", "fox"]))
        );
        // weights trained on a numbered list, met with named classes: by index
        let numbered = on(&["0", "1", "2"]);
        assert_eq!(
            numbered.order_of(&v(&["cat", "dog", "fox"])),
            ClassOrder::Same
        );
        assert_eq!(
            numbered.order_of(&v(&["cat", "dog"])),
            ClassOrder::Other(v(&["cat", "dog"]))
        );
        assert_eq!(
            t.order_of(&v(&["cat", "owl", "fox"])),
            ClassOrder::Other(v(&["owl"]))
        );
        // a subset: its logits by name
        assert_eq!(
            t.order_of(&v(&["fox", "cat"])),
            ClassOrder::Subset {
                rows: vec![2, 0],
                of: 3
            }
        );
        // numbers are the logits' indices wherever a string sort put them: weights
        // trained on a numbered list (logit 2 named "10") met with named classes, and
        // named weights met with a numbered list
        let sorted: Vec<String> = ["0", "1", "10", "2", "3", "4", "5", "6", "7", "8", "9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let named: Vec<String> = (0..11).map(|i| format!("n{i:02}")).collect();
        let record = |c: &[String]| TrainedOn {
            classes: Some(c.to_vec()),
            res: None,
        };
        assert_eq!(
            record(&sorted).order_of(&named),
            ClassOrder::Permuted(vec![0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 2])
        );
        assert_eq!(
            record(&named).order_of(&sorted),
            ClassOrder::Permuted(vec![0, 1, 10, 2, 3, 4, 5, 6, 7, 8, 9])
        );
    }

    #[test]
    fn a_permuted_classifier_takes_the_files_rows() {
        let dev = candle_core::Device::Cpu;
        let w = candle_core::Tensor::new(&[[1f32, 1.], [2., 2.], [3., 3.]], &dev).unwrap();
        let b = candle_core::Tensor::new(&[1f32, 2., 3.], &dev).unwrap();
        let mut sd: HashMap<_, _> = [("fc.weight".to_string(), w), ("fc.bias".to_string(), b)]
            .into_iter()
            .collect();
        let mut sub = sd.clone();
        permute_classifier(&mut sd, &[2, 0, 1], 3).unwrap();
        assert_eq!(sd["fc.bias"].to_vec1::<f32>().unwrap(), [3., 1., 2.]);
        permute_classifier(&mut sub, &[2, 1], 3).unwrap();
        assert_eq!(sub["fc.bias"].to_vec1::<f32>().unwrap(), [3., 2.]);
        assert_eq!(
            sub["fc.weight"].to_vec2::<f32>().unwrap(),
            [[3., 3.], [2., 2.]]
        );
        assert_eq!(
            sd["fc.weight"].to_vec2::<f32>().unwrap(),
            [[3., 3.], [1., 1.], [2., 2.]]
        );
    }
}
