//! Weights in timm's names: load a state dict from safetensors or a PyTorch `.pth`
//! (zip) file with strict checking, and save one that timm loads strictly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::params::{Entry, Kind};
use crate::error::{ModelError, Result};

/// Read every tensor of a state-dict file: `.safetensors`, or a PyTorch zip checkpoint
/// (`.pth`, `.pt`, `.bin`; a checkpoint whose top level holds no tensor is unwrapped at
/// its `state_dict`, `model` or `state_dict_ema` key, and a DataParallel `module.`
/// prefix is dropped).
pub fn read_state_dict(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let fail = |reason: String| ModelError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let io = |e: candle_core::Error| fail(e.to_string());
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !path.exists() {
        return Err(fail("no such file".into()));
    }
    if path.is_dir() {
        return Err(fail(
            "a directory, not a weights file (.safetensors or a PyTorch .pth/.pt)".into(),
        ));
    }
    // a FIFO or device would block the read (or never end): weights are a file
    if !path.is_file() {
        return Err(fail(
            "not a regular file (a FIFO, socket or device?)".into(),
        ));
    }
    // the format by content where it shows (a zip's `PK`; safetensors' header length
    // then `{`), else by extension: a safetensors file renamed .pth was read as a zip
    let mut head = [0u8; 9];
    let n = meal_data::files::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| fail(e.to_string()))?;
    let safetensors = match &head[..n] {
        [b'P', b'K', ..] => false,
        [_, _, _, _, _, _, _, _, b'{'] => true,
        _ => ext == "safetensors",
    };
    let map: HashMap<String, Tensor> = if safetensors {
        candle_core::safetensors::load(path, device).map_err(|e| {
            let why = match e.to_string() {
                s if s.contains("incomplete metadata") || s.contains("header too small") => {
                    "cut short".to_string()
                }
                s => s,
            };
            fail(format!("not a readable safetensors file ({why})"))
        })?
    } else {
        // PyTorch's files since 1.6 are zip archives holding a pickle (crate::pth)
        let v = crate::pth::read(path).map_err(|e| {
            fail(format!(
                "not a readable PyTorch weights file (a zip archive from torch.save) nor a \
                 safetensors file: {e}"
            ))
        })?;
        if v.is_empty() {
            return Err(fail(
                "no tensors found (expected a PyTorch state dict)".into(),
            ));
        }
        v.into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device).map_err(io)?)))
            .collect::<Result<_>>()?
    };
    // DataParallel checkpoints prefix every name with `module.`
    Ok(map
        .into_iter()
        .map(|(k, t)| {
            (
                k.strip_prefix("module.").map(str::to_string).unwrap_or(k),
                t,
            )
        })
        .collect())
}

/// Whether every value of `t` is finite (no NaN or infinity), read as f32 on the host.
pub fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// How many names of each kind a mismatch names (of hundreds, for another architecture).
const SHOWN: usize = 6;

/// How strictly [`load_into`] matches a state dict to the model.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Keep the model's fresh classifier (`fc.*`) when the file's class count differs
    /// (fine-tuning a pretrained model on another label set).
    pub fresh_classifier: bool,
}

/// Whether `t` holds a value below zero.
fn has_negative(t: &Tensor) -> Result<bool> {
    if t.elem_count() == 0 {
        return Ok(false);
    }
    let min = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.min(0)?;
    Ok(min.to_scalar::<f32>()? < 0.0)
}

/// Copy `sd` into the model's tensors. Strict: every model tensor must be present with
/// its shape, and no other tensor may be in the file; `num_batches_tracked` may be
/// missing (PyTorch tolerates that too). All problems are reported in one error.
/// Returns the names left at their fresh values.
pub fn load_into(
    entries: &[Entry],
    sd: &HashMap<String, Tensor>,
    opts: LoadOptions,
    path: &Path,
    arch: &str,
) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    let mut shape = Vec::new();
    let mut fresh = Vec::new();
    let fc_mismatch = opts.fresh_classifier
        && entries.iter().any(|e| {
            e.name.starts_with("fc.") && sd.get(&e.name).is_some_and(|t| t.dims() != e.var.dims())
        });
    for e in entries {
        match sd.get(&e.name) {
            None if e.name.ends_with("num_batches_tracked") => {}
            None => missing.push(e.name.clone()),
            Some(_) if fc_mismatch && e.name.starts_with("fc.") => fresh.push(e.name.clone()),
            Some(t) if t.dims() != e.var.dims() => shape.push(format!(
                "{}: file {:?}, model {:?}",
                e.name,
                t.dims(),
                e.var.dims()
            )),
            // integers where the model has floats: no checkpoint holds such weights (a
            // u32 tensor cast to f32 evaluated at top-1 0.0 silently)
            Some(t) if e.var.dtype().is_float() && !t.dtype().is_float() => shape.push(format!(
                "{}: file {:?}, model {:?}",
                e.name,
                t.dtype(),
                e.var.dtype()
            )),
            // a variance below zero: BatchNorm then takes the root of a negative number
            // (a hand-edited file trained, and its student evaluated to NaN)
            Some(t) if e.name.ends_with("running_var") && has_negative(t)? => {
                shape.push(format!("{}: a negative running variance", e.name))
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut unexpected: Vec<&String> = sd.keys().filter(|k| !known.contains(k.as_str())).collect();
    unexpected.sort();
    missing.sort();
    if !(missing.is_empty() && unexpected.is_empty() && shape.is_empty()) {
        let mut details = String::new();
        // (the first few of each: a file of another architecture misses hundreds, 20 KB
        // of names on one line that buried the cause)
        let mut list = |title: &str, items: &[String]| {
            if !items.is_empty() {
                details.push_str(&format!(
                    "\n  {title} ({}): {}",
                    items.len(),
                    meal_data::error::first_few(items, SHOWN)
                ));
            }
        };
        list("missing", &missing);
        list(
            "unexpected",
            &unexpected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        list("wrong shape, type or value", &shape);
        // the usual cause of a classifier of another shape: a dataset with another
        // number of classes (or the parent of train/ and val/ given as the dataset)
        let classes = |dims: &[usize]| dims.first().copied();
        if let (Some(file), Some(model)) = (
            sd.get("fc.weight").and_then(|t| classes(t.dims())),
            entries
                .iter()
                .find(|e| e.name == "fc.weight")
                .and_then(|e| classes(e.var.dims())),
        ) {
            if file != model {
                details.push_str(&format!(
                    "\n  the weights classify {file} classes, the model is built for {model} (the dataset's classes)"
                ));
            }
        }
        return Err(ModelError::Mismatch {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            details,
        });
    }
    // a NaN loaded is met much later: as a teacher's non-finite label blamed on an
    // image, a student's loss after its first step
    for e in entries {
        match sd.get(&e.name) {
            Some(t) if t.dtype().is_float() && !fresh.contains(&e.name) && !all_finite(t)? => {
                return Err(ModelError::NonFiniteWeights {
                    path: path.to_path_buf(),
                    tensor: e.name.clone(),
                })
            }
            _ => {}
        }
    }
    for e in entries {
        if fresh.contains(&e.name) {
            continue;
        }
        if let Some(t) = sd.get(&e.name) {
            let t = t.to_dtype(e.var.dtype())?.to_device(e.var.device())?;
            e.var.set(&t)?;
        }
    }
    Ok(fresh)
}

/// The model's tensors as a state dict (timm names, f32; counters i64).
pub fn state_dict(entries: &[Entry]) -> BTreeMap<String, Tensor> {
    entries
        .iter()
        .map(|e| (e.name.clone(), e.var.as_detached_tensor()))
        .collect()
}

/// The `__metadata__` key of what a student was trained on: a JSON object with
/// `classes` (its class names in logit order) and `res` (the side, pixels). One key:
/// the safetensors crate writes a metadata map in hash order, and two keys made the
/// file's bytes differ from run to run.
pub const META_TRAINED_ON: &str = "meal.trained_on";

/// Save the state dict as safetensors, written to a temporary file and renamed.
pub fn save_safetensors(entries: &[Entry], path: &Path) -> Result<()> {
    save_safetensors_with(entries, path, None)
}

/// [`save_safetensors`] with string `metadata` in the header's `__metadata__` (the
/// safetensors format's place for it; `safetensors.torch.load_file`, and so timm,
/// ignore it): what the weights were trained on, for `eval` to check.
pub fn save_safetensors_with(
    entries: &[Entry],
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let sd = state_dict(entries);
    let map: HashMap<String, Tensor> = sd
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype() == DType::I64 {
                t
            } else {
                t.to_dtype(DType::F32)?
            };
            Ok((k, t.to_device(&Device::Cpu)?))
        })
        .collect::<Result<_>>()?;
    write_tensors_with(&map, path, metadata)
}

/// The JSON header of a safetensors file (`None` for another format or one that
/// cannot be read: the caller loads the weights and says why).
fn safetensors_header(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut f = meal_data::files::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    // (a header is small; a garbage length is not read, nor one past the file's end,
    // whose buffer was allocated before the read failed)
    let size = f.metadata().ok()?.len();
    if n > 100 << 20 || n.saturating_add(8) > size {
        return None;
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head).ok()?;
    serde_json::from_slice(&head).ok()
}

/// The number of classes a safetensors file's classifier (`fc.weight`) scores, from
/// its header (`None` for another format or a file without one).
pub fn classifier_rows(path: &Path) -> Option<usize> {
    let v = safetensors_header(path)?;
    let rows = v.get("fc.weight")?.get("shape")?.get(0)?.as_u64()?;
    usize::try_from(rows).ok()
}

/// The `__metadata__` of a safetensors file (`None` for another format, a file without
/// it, or one that cannot be read: the caller loads the weights and says why).
pub fn safetensors_metadata(path: &Path) -> Option<HashMap<String, String>> {
    let v = safetensors_header(path)?;
    let meta = v.get("__metadata__")?.as_object()?;
    Some(
        meta.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
    )
}

/// Write `tensors` to `path` as safetensors, atomically, as an ordinary file: its mode
/// follows the umask (0644 under the usual 022), as every other output. The safetensors
/// crate's own file writer goes through a `tempfile` temporary, created 0600, which
/// left trained weights unreadable to other users of a shared runs directory.
pub(crate) fn write_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    write_tensors_with(tensors, path, None)
}

fn write_tensors_with(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let io = |reason: String| ModelError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = safetensors::serialize(tensors.iter(), metadata).map_err(|e| io(e.to_string()))?;
    use meal_data::atomic::{tmp_path, write_stepped, AtomicError};
    let no_steps = &mut |_| Ok::<(), std::io::Error>(());
    write_stepped(path, &tmp_path(path), &bytes, no_steps).map_err(|e| match e {
        // (the error's own path only where it is another file: not named twice)
        AtomicError::Io(p, e) if p != path => io(format!("{}: {e}", p.display())),
        AtomicError::Io(_, e) | AtomicError::Write(e) => io(e.to_string()),
    })
}

/// The trainable tensors (for the optimizer), in state-dict order.
pub fn trainable(entries: &[Entry]) -> Vec<(String, candle_core::Var)> {
    entries
        .iter()
        .filter(|e| e.kind == Kind::Param)
        .map(|e| (e.name.clone(), e.var.clone()))
        .collect()
}
