//! Soft labels: dense probabilities or top-k with FKD's marginal smoothing.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// How a crop's soft label is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Encoding {
    /// Every class probability as float16 (`prob`).
    Dense,
    /// The `k` largest probabilities, descending, with their class ids
    /// (`topk_class`, `topk_prob`); `f32` stores the probabilities as float32.
    TopK {
        /// Number kept.
        k: u16,
        /// float32 instead of float16 probabilities.
        f32: bool,
    },
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encoding::Dense => write!(f, "dense"),
            Encoding::TopK { k, f32: false } => write!(f, "topk:{k}"),
            Encoding::TopK { k, f32: true } => write!(f, "topk:{k}:f32"),
        }
    }
}

impl From<Encoding> for String {
    fn from(e: Encoding) -> String {
        e.to_string()
    }
}

impl TryFrom<String> for Encoding {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        s.parse()
    }
}

impl std::str::FromStr for Encoding {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::Param {
            name: "encoding",
            reason: format!("{s:?} (expected dense, topk:K or topk:K:f32)"),
        };
        if s == "dense" {
            return Ok(Encoding::Dense);
        }
        let rest = s.strip_prefix("topk:").ok_or_else(bad)?;
        let (k, f32) = match rest.strip_suffix(":f32") {
            Some(k) => (k, true),
            None => (rest, false),
        };
        let k: u16 = k.parse().map_err(|_| bad())?;
        if k == 0 {
            return Err(bad());
        }
        Ok(Encoding::TopK { k, f32 })
    }
}

/// Shannon entropy of a distribution in nats (`0 ln 0 = 0`).
pub fn entropy(p: &[f32]) -> f64 {
    p.iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| -(v as f64) * (v as f64).ln())
        .sum()
}

/// Index of the largest probability (the first one on ties).
pub fn top1(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// A decoded soft label.
#[derive(Clone, Debug, PartialEq)]
pub enum SoftLabel {
    /// All class probabilities.
    Dense(Vec<f32>),
    /// The largest probabilities, descending, and their classes.
    TopK {
        /// Class ids.
        classes: Vec<u16>,
        /// Probabilities.
        probs: Vec<f32>,
    },
}

/// The rules of a top-k row that readers rely on (docs/FORMAT.md): classes distinct and
/// below the store's count, probabilities in descending order (the first is the top
/// class). Fed the row's entries in stored order; the first broken rule is kept.
pub(crate) struct TopKRules {
    classes: usize,
    seen: Vec<u32>,
    prev: Option<f32>,
    /// The first rule broken, said.
    pub(crate) error: Option<String>,
}

impl TopKRules {
    pub(crate) fn new(classes: usize) -> Self {
        TopKRules {
            classes,
            seen: Vec::new(),
            prev: None,
            error: None,
        }
    }

    /// The next entry, class `c` with probability `p`.
    pub(crate) fn push(&mut self, c: u32, p: f32) {
        if self.error.is_some() {
            return;
        }
        let classes = self.classes;
        if c as usize >= classes {
            self.error = Some(format!("top-k class {c} of a store of {classes} classes"));
        } else if self.seen.contains(&c) {
            self.error = Some(format!("top-k class {c} listed twice"));
        } else if let Some(q) = self.prev.filter(|&q| p > q) {
            self.error = Some(format!(
                "top-k probabilities not in descending order ({p} after {q})"
            ));
        }
        self.seen.push(c);
        self.prev = Some(p);
    }
}

impl SoftLabel {
    /// What breaks the format's rules in this label as a store of `classes` classes
    /// ([`TopKRules`] for top-k; a dense label has none beyond its sum). `None` when it
    /// is well formed.
    pub fn rule_error(&self, classes: usize) -> Option<String> {
        match self {
            SoftLabel::Dense(_) => None,
            SoftLabel::TopK {
                classes: cls,
                probs,
            } => {
                let mut rules = TopKRules::new(classes);
                for (&c, &p) in cls.iter().zip(probs) {
                    rules.push(c as u32, p);
                }
                rules.error
            }
        }
    }

    /// Encode dense probabilities: the `k` largest (ties to the lower class id).
    pub fn encode(probs: &[f32], enc: Encoding) -> SoftLabel {
        match enc {
            Encoding::Dense => SoftLabel::Dense(probs.to_vec()),
            Encoding::TopK { k, .. } => {
                // (65536 classes are allowed: `len as u16` was 0, an empty range)
                let mut idx: Vec<u16> = (0..probs.len()).map(|c| c as u16).collect();
                idx.sort_by(|&a, &b| {
                    probs[b as usize]
                        .total_cmp(&probs[a as usize])
                        .then(a.cmp(&b))
                });
                idx.truncate(k as usize);
                SoftLabel::TopK {
                    probs: idx.iter().map(|&c| probs[c as usize]).collect(),
                    classes: idx,
                }
            }
        }
    }

    /// Dense f32 probabilities over `num_classes`. Top-k uses FKD's marginal smoothing
    /// (szq0214/FKD, utils_FKD.py): the mass `1 - sum(top-k)` is spread evenly over the
    /// other `C - k` classes (clamped at 0 when rounding made the sum exceed 1).
    pub fn to_dense(&self, num_classes: usize) -> Vec<f32> {
        let mut out = vec![0.0; num_classes];
        self.dense_into(&mut out);
        out
    }

    /// [`SoftLabel::to_dense`] into `out` (one value per class; classes beyond it are
    /// ignored).
    pub fn dense_into(&self, out: &mut [f32]) {
        match self {
            SoftLabel::Dense(p) => {
                let n = p.len().min(out.len());
                out[..n].copy_from_slice(&p[..n]);
                out[n..].fill(0.0);
            }
            SoftLabel::TopK { classes, probs } => {
                let kept: f32 = probs.iter().sum();
                out.fill(super::crops::smoothing_fill(kept, out.len(), classes.len()));
                for (&c, &p) in classes.iter().zip(probs) {
                    if let Some(o) = out.get_mut(c as usize) {
                        *o = p;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_parse_and_print() {
        for s in ["dense", "topk:5", "topk:10:f32"] {
            assert_eq!(s.parse::<Encoding>().unwrap().to_string(), s);
        }
        for s in ["topk:0", "topk:", "sparse", "topk:5:f64"] {
            assert!(
                s.parse::<Encoding>()
                    .unwrap_err()
                    .to_string()
                    .contains("encoding"),
                "{s}"
            );
        }
    }

    #[test]
    fn topk_is_descending_and_smoothing_fills_the_rest() {
        let p = [0.1f32, 0.5, 0.05, 0.3, 0.05];
        let l = SoftLabel::encode(&p, Encoding::TopK { k: 2, f32: true });
        assert_eq!(
            l,
            SoftLabel::TopK {
                classes: vec![1, 3],
                probs: vec![0.5, 0.3]
            }
        );
        let d = l.to_dense(5);
        let fill = (1.0 - 0.8f32) / 3.0;
        assert_eq!(d, vec![fill, 0.5, fill, 0.3, fill]);
        assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // ties go to the lower class id
        let l = SoftLabel::encode(
            &[0.25, 0.25, 0.25, 0.25],
            Encoding::TopK { k: 2, f32: false },
        );
        assert_eq!(
            l,
            SoftLabel::TopK {
                classes: vec![0, 1],
                probs: vec![0.25, 0.25]
            }
        );
        // the most classes a store holds (65536): the last class id is 65535
        let mut p = vec![0.0f32; 65536];
        p[65535] = 0.75;
        p[7] = 0.25;
        let l = SoftLabel::encode(&p, Encoding::TopK { k: 2, f32: true });
        assert_eq!(
            l,
            SoftLabel::TopK {
                classes: vec![65535, 7],
                probs: vec![0.75, 0.25]
            }
        );
    }
}
