//! A teacher as a command line or config names it:
//! `ARCH=WEIGHTS[,size=N][,filter=...][,mean=R:G:B][,std=R:G:B][,crop_pct=F][,classes=FILE]`.

use std::path::PathBuf;

use meal_data::{CropSpec, Filter, Normalize};

use crate::error::{ModelError, Result};
use crate::input_config;

/// One teacher as asked for on a command line:
/// `ARCH=WEIGHTS[,size=N][,filter=bilinear|bicubic][,mean=R:G:B][,std=R:G:B][,crop_pct=F][,classes=FILE]`,
/// the input config defaulting to the preset's timm pretrained config (`crop_pct`: the
/// eval transform's, for `meal-student eval --teacher`; `classes`: the weights' classes
/// in logit order, one per line, for weights that record none, as timm's).
#[derive(Clone, Debug, PartialEq)]
pub struct TeacherArg {
    /// Preset name.
    pub arch: String,
    /// Weights file.
    pub weights: PathBuf,
    /// Input side.
    pub size: u32,
    /// Whether the spec gave `size=` (else `size` is the preset's, and weights that
    /// record the side they were trained at run at that side).
    pub size_given: bool,
    /// Resize filter.
    pub filter: Filter,
    /// Normalisation.
    pub normalize: Normalize,
    /// Eval centre-crop fraction (used when the ensemble is evaluated), when the spec
    /// gives one; else the preset's (timm's `pretrained_cfg`).
    pub crop_pct: Option<f64>,
    /// A file naming the weights' classes in logit order (timm's
    /// `imagenet_synsets.txt`), for weights that record none.
    pub classes: Option<PathBuf>,
}

fn triple(s: &str, key: &str, spec: &str) -> Result<[f32; 3]> {
    let bad = || ModelError::spec(spec, format!("{key}= needs three numbers R:G:B"));
    let v: Vec<f32> = s
        .split(':')
        .map(|x| x.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad())?;
    match v.as_slice() {
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(bad()),
    }
}

impl std::str::FromStr for TeacherArg {
    type Err = ModelError;
    fn from_str(spec: &str) -> Result<Self> {
        // the weights: the longest run of comma-separated parts that names a file that
        // is there (a path with `,size=` in it), else the first part
        let all: Vec<&str> = spec.split(',').collect();
        let taken = (2..=all.len())
            .rev()
            .find(|&k| {
                all[..k]
                    .join(",")
                    .split_once('=')
                    .is_some_and(|(_, w)| std::path::Path::new(w).is_file())
            })
            .unwrap_or(1);
        let head_owned = all[..taken].join(",");
        let head = head_owned.as_str();
        let parts = all[taken..].iter().copied();
        let Some((arch, weights)) = head
            .split_once('=')
            .filter(|(a, w)| !a.is_empty() && !w.is_empty())
        else {
            return Err(ModelError::spec(
                spec,
                String::from("expected ARCH=WEIGHTS[,key=value...]"),
            ));
        };
        crate::preset(arch).map_err(|e| ModelError::spec(spec, e.to_string()))?;
        let d = input_config(arch)?;
        let mut t = TeacherArg {
            arch: arch.to_string(),
            weights: PathBuf::from(weights),
            size: d.size,
            size_given: false,
            filter: d.filter,
            normalize: d.normalize,
            crop_pct: None,
            classes: None,
        };
        let mut given: Vec<&str> = Vec::new();
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                // a path with a comma in it (`runs/a,b/w.safetensors`): what follows the
                // comma is no key=value, so it goes on the path before it
                match given.last() {
                    _ if kv.is_empty() => {
                        return Err(ModelError::spec(spec, "nothing after a comma".into()))
                    }
                    None => t.weights.as_mut_os_string().push(format!(",{kv}")),
                    Some(&"classes") => {
                        if let Some(c) = t.classes.as_mut() {
                            c.as_mut_os_string().push(format!(",{kv}"))
                        }
                    }
                    Some(_) => {
                        return Err(ModelError::spec(spec, format!("{kv:?} is not key=value")))
                    }
                }
                continue;
            };
            // a repeated key would have the last one win silently
            if given.contains(&k) {
                return Err(ModelError::spec(spec, format!("{k} given twice")));
            }
            given.push(k);
            match k {
                "size" => {
                    t.size_given = true;
                    t.size =
                        v.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
                            ModelError::spec(spec, format!("size={v} is not a side"))
                        })?
                }
                "filter" => {
                    t.filter = v
                        .parse()
                        .map_err(|e: meal_data::DataError| ModelError::spec(spec, e.to_string()))?
                }
                "crop_pct" => {
                    t.crop_pct = Some(
                        v.parse()
                            .ok()
                            .filter(|p: &f64| (0.01..=1.0).contains(p))
                            .ok_or_else(|| {
                                ModelError::spec(
                                    spec,
                                    format!("crop_pct={v} is not a fraction in [0.01, 1]"),
                                )
                            })?,
                    )
                }
                "classes" if v.is_empty() => {
                    return Err(ModelError::spec(
                        spec,
                        "classes= needs a file naming the weights' classes, one per line".into(),
                    ))
                }
                "classes" => t.classes = Some(PathBuf::from(v)),
                "mean" => t.normalize.mean = triple(v, k, spec)?,
                "std" => t.normalize.std = triple(v, k, spec)?,
                _ => {
                    return Err(ModelError::spec(
                        spec,
                        format!(
                            "unknown key {k:?} (size, filter, mean, std, classes; crop_pct for an \
                         evaluation)"
                        ),
                    ))
                }
            }
        }
        Ok(t)
    }
}

impl TeacherArg {
    /// Parse every spec of a repeated flag; the first bad one is the error.
    pub fn parse_all(specs: &[String]) -> Result<Vec<TeacherArg>> {
        specs.iter().map(|s| s.parse()).collect()
    }

    /// The classes its `classes=` file names, in logit order: one per line, blank lines
    /// and surrounding spaces left out (timm's `imagenet_synsets.txt`).
    pub fn class_list(&self) -> Result<Option<Vec<String>>> {
        let Some(path) = &self.classes else {
            return Ok(None);
        };
        let io = |reason: String| ModelError::ClassList {
            path: path.clone(),
            reason,
        };
        let text = meal_data::files::read_text(path).map_err(|e| ModelError::Io {
            path: path.clone(),
            reason: format!("classes=: {e}"),
        })?;
        // (a byte-order mark, as some editors write, is not part of the first name)
        let names: Vec<String> = text
            .trim_start_matches('\u{feff}')
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.is_empty() {
            return Err(io("classes=: names no class (one per line)".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(io(format!("classes=: {d:?} is named twice")));
        }
        Ok(Some(names))
    }

    /// The crop spec of its inputs.
    pub fn spec(&self) -> Result<CropSpec> {
        let pct = match self.crop_pct {
            Some(p) => p,
            None => input_config(&self.arch)?.crop_pct,
        };
        CropSpec::new(self.size, self.filter, self.normalize)
            .and_then(|s| s.with_crop_pct(pct))
            .map_err(|e| ModelError::Config(format!("teacher {}: {e}", self.arch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_args_parse_with_defaults_and_overrides() {
        let t: TeacherArg = "resnet152s=/w/a.safetensors".parse().unwrap();
        assert_eq!((t.size, t.filter), (224, Filter::Bicubic));
        let t: TeacherArg = "demo_tiny=a.pth,size=32,filter=bicubic,mean=0.5:0.5:0.5"
            .parse()
            .unwrap();
        assert_eq!((t.size, t.filter), (32, Filter::Bicubic));
        assert_eq!(t.normalize.mean, [0.5; 3]);
        for bad in [
            "resnet152s",
            "nope=a.pth",
            "demo_tiny=a.pth,size=0",
            "demo_tiny=a.pth,colour=red",
            "demo_tiny=a.pth,mean=1:2",
        ] {
            let e = bad.parse::<TeacherArg>().unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e:#}");
        }
        // a repeated key is refused, not won by the last one; crop_pct is recorded only
        // when given (precompute and online teachers refuse it)
        let e = "demo_tiny=a.pth,size=64,size=32"
            .parse::<TeacherArg>()
            .unwrap_err();
        assert!(e.to_string().contains("size given twice"), "{e}");
        let t: TeacherArg = "demo_tiny=a.pth,crop_pct=0.5".parse().unwrap();
        assert_eq!(t.crop_pct, Some(0.5));
        assert_eq!(
            "demo_tiny=a.pth".parse::<TeacherArg>().unwrap().crop_pct,
            None
        );
        // classes=: a file of names, one per line; empty or repeated names refused
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("synsets.txt");
        std::fs::write(&list, "\u{feff}n01\r\n  n02 \n\nn03\n").unwrap();
        let t: TeacherArg = format!("demo_tiny=a.pth,classes={}", list.display())
            .parse()
            .unwrap();
        assert_eq!(t.class_list().unwrap().unwrap(), ["n01", "n02", "n03"]);
        std::fs::write(&list, "n01\nn02\nn01\n").unwrap();
        let e = t.class_list().unwrap_err().to_string();
        assert!(
            e.contains("synsets.txt") && e.contains("\"n01\" is named twice"),
            "{e}"
        );
        std::fs::write(&list, "\n").unwrap();
        assert!(t.class_list().is_err());
        let e = "demo_tiny=a.pth,classes="
            .parse::<TeacherArg>()
            .unwrap_err();
        assert!(e.to_string().contains("classes= needs a file"), "{e}");
        // a path whose comma is followed by key=value is taken whole where it is a file
        let odd = dir.path().join("d,size=32");
        std::fs::create_dir(&odd).unwrap();
        std::fs::write(odd.join("w.pth"), b"").unwrap();
        let t: TeacherArg = format!("demo_tiny={}/w.pth,size=48", odd.display())
            .parse()
            .unwrap();
        assert_eq!((t.weights, t.size), (odd.join("w.pth"), 48));
        // a comma inside a path: what follows it is no key=value, so it is the path's
        let t: TeacherArg = "demo_tiny=runs/a,b/w.pth,size=32,classes=x,y.txt"
            .parse()
            .unwrap();
        assert_eq!(t.weights, PathBuf::from("runs/a,b/w.pth"));
        assert_eq!(t.classes, Some(PathBuf::from("x,y.txt")));
        assert_eq!(t.size, 32);
        for bad in ["demo_tiny=a.pth,", "demo_tiny=a.pth,size=32,b"] {
            assert!(bad.parse::<TeacherArg>().is_err(), "{bad}");
        }
    }
}
