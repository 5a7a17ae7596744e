//! The first difference between two listings of a dataset, in words: what a refusal
//! over a changed fingerprint names, so a user sees which image changed.

use std::collections::{HashMap, HashSet};

use super::Sample;
use crate::error::first_few;

/// The first difference between the listing `was` (classes and samples, as recorded)
/// and `now`, in words: other class names, images only in one of them (the first few),
/// an image of another class, another file size (the fingerprint hashes sizes), the
/// same files in another order; `None` when they are the same.
pub fn first_difference(
    was: (&[String], &[Sample]),
    now: (&[String], &[Sample]),
) -> Option<String> {
    let ((wc, ws), (nc, ns)) = (was, now);
    if wc != nc {
        let at = wc.iter().zip(nc).position(|(a, b)| a != b);
        return Some(match at {
            Some(i) => format!(
                "other class names ({} and {}; class {i}: \"{}\" then, \"{}\" now)",
                wc.len(),
                nc.len(),
                wc[i],
                nc[i]
            ),
            None => format!("{} classes then, {} now", wc.len(), nc.len()),
        });
    }
    let by_path: HashMap<&str, &Sample> = ns.iter().map(|s| (s.path.as_str(), s)).collect();
    let then: HashSet<&str> = ws.iter().map(|s| s.path.as_str()).collect();
    let gone: Vec<&str> = ws
        .iter()
        .map(|s| s.path.as_str())
        .filter(|p| !by_path.contains_key(p))
        .collect();
    let added: Vec<&str> = ns
        .iter()
        .map(|s| s.path.as_str())
        .filter(|p| !then.contains(p))
        .collect();
    if let Some(moved) = other_root(&gone, &added) {
        // the moved images under their earlier paths: what differs beyond the paths
        // (a label, the order, an image truly gone) is said too, or following the
        // advice met a second refusal
        let back = moved.back(ns, &gone, &added);
        return Some(match first_difference((wc, ws), (nc, &back)) {
            Some(rest) => format!("{}; beyond the paths, {rest}", moved.words()),
            None => moved.words(),
        });
    }
    if !gone.is_empty() {
        return Some(format!(
            "{} of its images {} gone ({})",
            gone.len(),
            if gone.len() == 1 { "is" } else { "are" },
            first_few(&gone, 3)
        ));
    }
    if !added.is_empty() {
        return Some(format!(
            "{} {} added ({})",
            added.len(),
            if added.len() == 1 {
                "image was"
            } else {
                "images were"
            },
            first_few(&added, 3)
        ));
    }
    let class = |l: u32| wc.get(l as usize).map_or("?", String::as_str);
    if let Some((w, n)) = ws
        .iter()
        .map(|w| (w, by_path[w.path.as_str()]))
        .find(|(w, n)| w.label != n.label)
    {
        return Some(format!(
            "{} is of class {} now, {} then",
            w.path,
            class(n.label),
            class(w.label)
        ));
    }
    if let Some((w, n)) = ws
        .iter()
        .map(|w| (w, by_path[w.path.as_str()]))
        .find(|(w, n)| w.bytes != n.bytes)
    {
        return Some(format!(
            "{} changed ({} bytes then, {} now)",
            w.path, w.bytes, n.bytes
        ));
    }
    ws.iter()
        .zip(ns)
        .find(|(w, n)| w.path != n.path)
        .map(|(w, n)| {
            format!(
                "the same files in another order (sample {} is {} then, {} now: a list file \
                 reordered?)",
                w.id, w.path, n.path
            )
        })
}

/// Images of a later listing found under another root than in an earlier one (each
/// `P` then is `d/P` now, or the other way, or `a/P` then is `b/P` now: a list file
/// written in a parent folder, the data given one folder deeper, part of it moved to
/// another folder): [`other_root`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// What the earlier paths began with (empty, or ending in `/`).
    then_prefix: String,
    /// What the later paths begin with instead (empty, or ending in `/`).
    now_prefix: String,
    /// How many of the earlier listing's missing paths are found so.
    count: usize,
    /// One of them, then and now.
    example: (String, String),
}

impl Moved {
    /// The earlier path of the later listing's `now`, where it moved with the rest (a
    /// path of neither listing is left out by the caller).
    pub fn then_of(&self, now: &str) -> Option<String> {
        now.strip_prefix(&self.now_prefix)
            .map(|rest| format!("{}{rest}", self.then_prefix))
    }

    /// The later listing's `samples` with the moved ones under their earlier paths
    /// (those of `added`, the paths only the later listing has, whose earlier path is
    /// among `gone`, those only the earlier one has): what differs beyond the paths is
    /// then their difference. An image of both listings keeps its path.
    pub fn back(&self, samples: &[Sample], gone: &[&str], added: &[&str]) -> Vec<Sample> {
        let gone: HashSet<&str> = gone.iter().copied().collect();
        let added: HashSet<&str> = added.iter().copied().collect();
        samples
            .iter()
            .map(|x| match self.then_of(&x.path) {
                Some(p) if added.contains(x.path.as_str()) && gone.contains(p.as_str()) => Sample {
                    path: p,
                    ..x.clone()
                },
                _ => x.clone(),
            })
            .collect()
    }

    /// The move in words, with what to do.
    pub fn words(&self) -> String {
        let (then, now) = &self.example;
        let (tp, np) = (&self.then_prefix, &self.now_prefix);
        format!(
            "the same {} under other paths: {} ({then} then, {now} now); images are named \
             by their path relative to the data's root (a list file's folder), so give them \
             from the same root as before",
            match self.count {
                1 => "image".to_string(),
                n => format!("{n} images"),
            },
            match (tp.is_empty(), self.count) {
                (true, 1) => format!("its path now begins with \"{np}\""),
                (true, _) => format!("each path now begins with \"{np}\""),
                (false, 1) if np.is_empty() => format!("its path then began with \"{tp}\""),
                (false, _) if np.is_empty() => format!("each path then began with \"{tp}\""),
                (false, 1) => format!("its path began with \"{tp}\" then, \"{np}\" now"),
                (false, _) => format!("each path began with \"{tp}\" then, \"{np}\" now"),
            },
        )
    }
}

/// When some of the paths only in the earlier listing (`gone`) are among those only in
/// the later one (`added`) under another root, that move ([`Moved`]); `None` otherwise.
/// Images are keyed by their path relative to the data's root (docs/DATA.md), so such
/// listings are other datasets to a fingerprint, and "40 images gone" named the
/// symptom, not the cause. The caller says what differs beyond the paths.
pub fn other_root(gone: &[&str], added: &[&str]) -> Option<Moved> {
    // the prefixes of a pair whose ends agree past a `/` in both, that end holding a
    // folder and a file at least (`c/x.jpg`): a file moved from class `c` to `d`
    // (`c/x.jpg`, `d/x.jpg`) is a relabel, not a move of the root. The first few of
    // each side are tried, as some may be truly gone or added
    let split = |then: &str, now: &str| -> Option<(String, String)> {
        let common = then
            .bytes()
            .rev()
            .zip(now.bytes().rev())
            .take_while(|(a, b)| a == b)
            .count();
        // the longest common end that starts a path component on both sides
        (1..=common).rev().find_map(|n| {
            // (bytes agree from the end, so a cut may fall inside a character that
            // differs in its first byte: `é` and `©` share their last)
            let (t, w) = (then.len() - n, now.len() - n);
            if !then.is_char_boundary(t) || !now.is_char_boundary(w) {
                return None;
            }
            let (tp, rest) = then.split_at(t);
            let np = &now[..w];
            let starts = |p: &str| p.is_empty() || p.ends_with('/');
            (starts(tp) && starts(np) && tp != np && rest.contains('/'))
                .then(|| (tp.to_string(), np.to_string()))
        })
    };
    const TRIED: usize = 16;
    let (then_prefix, now_prefix) = gone
        .iter()
        .take(TRIED)
        .find_map(|g| added.iter().find_map(|a| split(g, a)))?;
    let added: HashSet<&str> = added.iter().copied().collect();
    let found: Vec<&str> = gone
        .iter()
        .copied()
        .filter(|g| {
            g.strip_prefix(then_prefix.as_str())
                .is_some_and(|rest| added.contains(format!("{now_prefix}{rest}").as_str()))
        })
        .collect();
    let first = *found.first()?;
    let example = (
        first.to_string(),
        format!("{now_prefix}{}", &first[then_prefix.len()..]),
    );
    Some(Moved {
        then_prefix,
        now_prefix,
        count: found.len(),
        example,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u32, path: &str, label: u32, bytes: u64) -> Sample {
        Sample {
            id,
            path: path.into(),
            label,
            bytes,
        }
    }

    #[test]
    fn the_first_difference_is_named() {
        let c: Vec<String> = vec!["a".into(), "b".into()];
        let base = vec![s(0, "a/1.png", 0, 10), s(1, "b/2.png", 1, 20)];
        let same = first_difference((&c, &base), (&c, &base));
        assert_eq!(same, None);
        let other: Vec<String> = vec!["a".into(), "c".into()];
        let d = first_difference((&c, &base), (&other, &base)).unwrap();
        assert!(d.contains("class 1: \"b\" then, \"c\" now"), "{d}");
        let d = first_difference((&c, &base), (&c, &base[..1])).unwrap();
        assert_eq!(d, "1 of its images is gone (b/2.png)");
        let mut more = base.clone();
        more.push(s(2, "b/3.png", 1, 5));
        let d = first_difference((&c, &base), (&c, &more)).unwrap();
        assert_eq!(d, "1 image was added (b/3.png)");
        let mut relabelled = base.clone();
        relabelled[0].label = 1;
        let d = first_difference((&c, &base), (&c, &relabelled)).unwrap();
        assert_eq!(d, "a/1.png is of class b now, a then");
        let mut resized = base.clone();
        resized[1].bytes = 21;
        let d = first_difference((&c, &base), (&c, &resized)).unwrap();
        assert_eq!(d, "b/2.png changed (20 bytes then, 21 now)");
        // the same files listed from a parent folder, and back
        let deeper: Vec<Sample> = base
            .iter()
            .map(|x| Sample {
                path: format!("d/{}", x.path),
                ..x.clone()
            })
            .collect();
        let d = first_difference((&c, &base), (&c, &deeper)).unwrap();
        assert!(
            d.starts_with(
                "the same 2 images under other paths: each path now begins with \"d/\" \
                 (a/1.png then, d/a/1.png now)"
            ),
            "{d}"
        );
        let d = first_difference((&c, &deeper), (&c, &base)).unwrap();
        assert!(
            d.contains("each path then began with \"d/\" (d/a/1.png then, a/1.png now)"),
            "{d}"
        );
        // (another file under the prefix is no such move)
        let mut half = deeper.clone();
        half[0].path = "d/a/9.png".into();
        half[1].path = "b/2.png".into();
        let d = first_difference((&c, &base), (&c, &half)).unwrap();
        assert_eq!(d, "1 of its images is gone (a/1.png)");
        // what differs beyond the paths is said too: a label, an image truly gone
        let mut relabelled = deeper.clone();
        relabelled[1].label = 0;
        let d = first_difference((&c, &base), (&c, &relabelled)).unwrap();
        assert!(
            d.ends_with("; beyond the paths, b/2.png is of class a now, b then"),
            "{d}"
        );
        let d = first_difference((&c, &base), (&c, &deeper[..1])).unwrap();
        assert!(
            d.starts_with("the same image under other paths")
                && d.ends_with("; beyond the paths, 1 of its images is gone (b/2.png)"),
            "{d}"
        );
        // one root for another (part of the data moved to another folder)
        let other: Vec<Sample> = deeper
            .iter()
            .map(|x| Sample {
                path: x.path.replacen("d/", "e/", 1),
                ..x.clone()
            })
            .collect();
        let d = first_difference((&c, &deeper), (&c, &other)).unwrap();
        assert!(
            d.contains(
                "each path began with \"d/\" then, \"e/\" now (d/a/1.png then, e/a/1.png now)"
            ) && !d.contains("beyond"),
            "{d}"
        );
        // names whose last bytes agree inside a character (`é`, `©`): no panic
        let accents = vec![s(0, "x/café/1.png", 0, 10), s(1, "b/2.png", 1, 20)];
        let copy = vec![s(0, "y/caf©/1.png", 0, 10), s(1, "b/2.png", 1, 20)];
        let d = first_difference((&c, &accents), (&c, &copy)).unwrap();
        assert_eq!(d, "1 of its images is gone (x/café/1.png)");
        let moved = vec![s(0, "y/café/1.png", 0, 10), s(1, "b/2.png", 1, 20)];
        let d = first_difference((&c, &accents), (&c, &moved)).unwrap();
        assert!(
            d.contains("its path began with \"x/\" then, \"y/\" now"),
            "{d}"
        );
        // an image of both listings keeps its path (d/a/1.png was there before too)
        let was = vec![
            s(0, "a/1.png", 0, 10),
            s(1, "b/2.png", 1, 20),
            s(2, "d/a/1.png", 0, 10),
        ];
        let now = vec![s(0, "d/a/1.png", 0, 10), s(1, "d/b/2.png", 1, 20)];
        let d = first_difference((&c, &was), (&c, &now)).unwrap();
        assert!(
            d.ends_with("beyond the paths, 1 of its images is gone (a/1.png)"),
            "{d}"
        );
        // a file moved from one class folder to another is no move of the root
        let refiled = vec![s(0, "a/1.png", 0, 10), s(1, "a/2.png", 1, 20)];
        let d = first_difference((&c, &base), (&c, &refiled)).unwrap();
        assert_eq!(d, "1 of its images is gone (b/2.png)");
        let reordered = vec![s(0, "b/2.png", 1, 20), s(1, "a/1.png", 0, 10)];
        let d = first_difference((&c, &base), (&c, &reordered)).unwrap();
        assert!(
            d.starts_with("the same files in another order (sample 0 is a/1.png then, b/2.png now"),
            "{d}"
        );
    }
}
