//! PyTorch's zip checkpoints (`torch.save` since 1.6) read without running any of the
//! file's code and without trusting its sizes.
//!
//! The archive's `data.pkl` is read by a small pickle machine that knows only the
//! opcodes a state dict uses (Python's `Lib/pickletools.py` documents them) and builds
//! only tuples, lists, dicts, references to globals and the two calls torch writes:
//! `_rebuild_tensor_v2(storage, offset, size, stride, ...)` on a persistent id
//! `("storage", torch.FloatStorage, key, location, numel)`, and `_rebuild_parameter`
//! around it (pytorch/pytorch `torch/serialization.py` `_save`, `torch/_utils.py`).
//! Each tensor's storage is then read from the archive entry `data/KEY` once its
//! declared size is checked against the entry's.
//!
//! candle's reader (`candle_core::pickle`), which this replaces, panicked on short
//! argument tuples, aborted on a 550 GB shape declared over 64 bytes, cloned the
//! memo's object at every read (a 409-byte file grew past 5 GB) and recursed on nesting
//! (a 200 KB file overflowed the stack): found by an adversarial run. Here a memo read
//! shares its object, the objects are torn down without recursion, the walk to the
//! tensors is depth-limited, and every size is checked before anything is allocated.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

mod pickle;
use pickle::{items, Machine, V};

/// The largest `data.pkl` read (a state dict of 10,000 tensors pickles to ~1 MB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// The most bytes of tensors read, past 8 times the file: tensors may share a storage
/// (tied weights), but 10,000 names on one 1 MB storage asked for 10 GB.
const MAX_EXTRA_BYTES: u64 = 64 << 20;
/// How deep the walk from the pickled object to a tensor goes (a checkpoint dict, its
/// state dict, a parameter, a tensor, its storage: 6 levels).
const MAX_DEPTH: usize = 32;
/// The keys under which a checkpoint may hold the state dict, tried in this order when
/// its top level holds no tensor (timm's and torchvision's training scripts).
const WRAPPER_KEYS: [&str; 3] = ["state_dict", "model", "state_dict_ema"];

/// One tensor of the state dict: where its values are and how to read them.
#[derive(Clone, Debug, PartialEq)]
struct Info {
    name: String,
    dtype: DType,
    /// The storage's archive key (`data/KEY`) and its element count.
    key: String,
    numel: u64,
    offset: u64,
    shape: Vec<usize>,
    stride: Vec<u64>,
}

/// The elements of a tuple or list, borrowed (a clone per visit made a walk over a
/// long list quadratic: 82 s for a 1 MB file), or None.
fn seq(v: &V) -> Option<std::cell::Ref<'_, Vec<V>>> {
    match v {
        V::Tuple(c) | V::List(c) => Some(c.borrow()),
        _ => None,
    }
}

fn int(v: &V) -> Option<i64> {
    match v {
        V::Int(i) => Some(*i),
        _ => None,
    }
}

fn global(v: &V) -> Option<(&str, &str)> {
    match v {
        V::Global(g) => Some((g.0.as_str(), g.1.as_str())),
        _ => None,
    }
}

/// What `v` rebuilds: a tensor's [`Info`], `Ok(None)` for a value that is no tensor (a
/// step count, a name), or an error naming what is wrong with a tensor's record.
fn tensor_of(name: &str, v: &V, depth: usize) -> Result<Option<Info>, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "tensor {name}: nested more than {MAX_DEPTH} calls deep"
        ));
    }
    let V::Reduce(call) = v else {
        return Ok(None);
    };
    let (callable, args) = {
        let c = call.borrow();
        (c[0].clone(), c[1].clone())
    };
    let Some((module, func)) = global(&callable) else {
        return Ok(None);
    };
    let bad = |what: String| Err(format!("tensor {name}: {what}"));
    let Some(args) = seq(&args) else {
        return bad(format!("{module}.{func} called with a {}", args.kind()));
    };
    match (module, func) {
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match args.first() {
                Some(data) => tensor_of(name, data, depth + 1),
                None => bad(format!("{func} called without its tensor")),
            }
        }
        ("torch._tensor", "_rebuild_from_type_v2") => match args.as_slice() {
            // (func, new_type, args, state): func(*args), a plain tensor's subclass
            [func, _, inner, ..] => {
                // (its items are shared with the machine's: dropping it is shallow)
                let call = V::Reduce(items(vec![func.clone(), inner.clone()]));
                tensor_of(name, &call, depth + 1)
            }
            _ => bad(format!(
                "{func} called with {} arguments, not 4",
                args.len()
            )),
        },
        ("torch._utils", "_rebuild_tensor_v2") => rebuild_tensor(name, &args).map(Some),
        ("torch._utils", other) if other.starts_with("_rebuild") => bad(format!(
            "a {other} tensor (quantized, sparse or another kind than a dense tensor) \
             is not read here"
        )),
        _ => Ok(None),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)`
/// (torch/_utils.py) with `storage` the persistent id
/// `("storage", torch.XStorage, key, location, numel)` (torch/serialization.py).
fn rebuild_tensor(name: &str, args: &[V]) -> Result<Info, String> {
    let bad = |what: String| Err(format!("tensor {name}: {what}"));
    let [storage, offset, size, stride, ..] = args else {
        return bad(format!(
            "_rebuild_tensor_v2 called with {} arguments, torch writes 6",
            args.len()
        ));
    };
    let V::Pid(id) = storage else {
        return bad(format!(
            "its storage is a {}, not a persistent id",
            storage.kind()
        ));
    };
    let pid = id.borrow();
    let record = pid.first().and_then(seq);
    let fields: &[V] = record.as_deref().map_or(&[], Vec::as_slice);
    let [tag, class, key, _location, numel] = fields else {
        return bad(format!(
            "its storage record has {} fields, torch writes 5",
            fields.len()
        ));
    };
    if !matches!(tag, V::Str(s) if &**s == "storage") {
        return bad("its persistent id is not a storage".into());
    }
    let Some((_, class)) = global(class) else {
        return bad("its storage type is not a class".into());
    };
    let dtype = match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" | "BoolStorage" => DType::U8,
        "ShortStorage" => DType::I16,
        "IntStorage" => DType::I32,
        "LongStorage" => DType::I64,
        other => return bad(format!("storage type {other} is not read here")),
    };
    let V::Str(key) = key else {
        return bad("its storage key is not a string".into());
    };
    let dims = |v: &V, what: &str| -> Result<Vec<u64>, String> {
        seq(v)
            .ok_or_else(|| format!("tensor {name}: its {what} is a {}", v.kind()))?
            .iter()
            .map(|d| int(d).and_then(|d| u64::try_from(d).ok()))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| format!("tensor {name}: its {what} holds a negative or non-integer"))
    };
    let (shape, stride) = (dims(size, "size")?, dims(stride, "stride")?);
    if shape.len() != stride.len() {
        return bad(format!(
            "{} sizes but {} strides",
            shape.len(),
            stride.len()
        ));
    }
    let (Some(offset), Some(numel)) = (
        int(offset).and_then(|v| u64::try_from(v).ok()),
        int(numel).and_then(|v| u64::try_from(v).ok()),
    ) else {
        return bad("its offset or storage size is not a non-negative integer".into());
    };
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor {name}: size {d}")))
        .collect::<Result<Vec<usize>, String>>()?;
    Ok(Info {
        name: name.to_string(),
        dtype,
        key: key.to_string(),
        numel,
        offset,
        shape,
        stride,
    })
}

/// The string keys and values of a dict, or None.
fn dict_entries(v: &V) -> Option<Vec<(String, V)>> {
    let V::Dict(c) = v else { return None };
    let c = c.borrow();
    Some(
        c.chunks(2)
            .filter_map(|kv| match &kv[0] {
                V::Str(k) => Some((k.to_string(), kv[1].clone())),
                _ => None,
            })
            .collect(),
    )
}

/// The tensors of the pickled object: a state dict's, or one wrapped under one of
/// [`WRAPPER_KEYS`] when the top level holds none.
fn tensors_of(top: &V) -> Result<Vec<Info>, String> {
    let Some(entries) = dict_entries(top) else {
        return Err(format!(
            "the pickle holds a {}, not a state dict (save `model.state_dict()`)",
            top.kind()
        ));
    };
    let found = |entries: &[(String, V)]| -> Result<Vec<Info>, String> {
        let mut out = Vec::new();
        for (k, v) in entries {
            if let Some(t) = tensor_of(k, v, 0)? {
                out.push(t);
            }
        }
        Ok(out)
    };
    let top_level = found(&entries)?;
    if !top_level.is_empty() {
        return Ok(top_level);
    }
    for key in WRAPPER_KEYS {
        if let Some(inner) = entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| dict_entries(v))
        {
            let t = found(&inner)?;
            if !t.is_empty() {
                return Ok(t);
            }
        }
    }
    Ok(Vec::new())
}

/// Every tensor of the zip checkpoint at `path` (a state dict, or one under
/// `state_dict`, `model` or `state_dict_ema`), on the CPU. The error is the reason,
/// the caller names the file.
pub(crate) fn read(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let file = meal_data::files::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("not a zip archive as torch.save writes ({e})"))?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .map(String::from)
        .collect();
    let Some(pkl) = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .cloned()
    else {
        return Err("a zip archive without data.pkl: not a torch.save checkpoint".into());
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let mut entry = |name: &str, limit: u64| -> Result<Vec<u8>, String> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| format!("archive entry {name}: {e}"))?;
        if f.size() > limit {
            return Err(format!(
                "archive entry {name} declares {} bytes, more than {limit}",
                f.size()
            ));
        }
        let expect = f.size();
        let mut bytes = Vec::with_capacity(expect as usize);
        (&mut f)
            .take(expect)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("archive entry {name}: {e}"))?;
        if bytes.len() as u64 != expect {
            return Err(format!(
                "archive entry {name} holds {} bytes, its header says {expect}",
                bytes.len()
            ));
        }
        // (reading a set length never reaches the zip reader's own check at the end);
        // torch writes 0 with `torch.utils.serialization.config.save.compute_crc32` off
        let crc = crc32fast::hash(&bytes);
        if f.crc32() != 0 && crc != f.crc32() {
            return Err(format!(
                "archive entry {name} is damaged: its CRC-32 is {crc:08x}, its header says \
                 {:08x}",
                f.crc32()
            ));
        }
        Ok(bytes)
    };
    if names.iter().any(|n| *n == format!("{prefix}byteorder")) {
        let order = entry(&format!("{prefix}byteorder"), 16)?;
        if order != b"little" {
            return Err(format!(
                "byte order {:?}: only little-endian checkpoints are read",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let data = entry(&pkl, MAX_PICKLE_BYTES)?;
    let infos = {
        let mut m = Machine::default();
        let top = m.run(&data).map_err(|e| format!("{pkl}: {e}"))?;
        let t = tensors_of(&top);
        m.dropped.push(top);
        t?
    };
    // a storage is read once, and each later tensor on it must declare it alike
    let mut storages: HashMap<String, (DType, u64, Vec<u8>)> = HashMap::new();
    let mut out: Vec<(String, Tensor)> = Vec::with_capacity(infos.len());
    let mut names = std::collections::HashSet::new();
    let budget = file_len.saturating_mul(8).saturating_add(MAX_EXTRA_BYTES);
    let mut total = 0u64;
    for t in infos {
        if !names.insert(t.name.clone()) {
            return Err(format!("tensor {} is in the state dict twice", t.name));
        }
        let es = t.dtype.size_in_bytes() as u64;
        let bytes = t
            .numel
            .checked_mul(es)
            .filter(|&b| b <= file_len)
            .ok_or_else(|| {
                format!(
                    "tensor {}: its storage of {} elements is larger than the file",
                    t.name, t.numel
                )
            })?;
        let name = format!("{prefix}data/{}", t.key);
        if !storages.contains_key(&t.key) {
            let b = entry(&name, file_len)?;
            if b.len() as u64 != bytes {
                return Err(format!(
                    "tensor {}: its storage {name} holds {} bytes, {} {:?} elements need {bytes}",
                    t.name,
                    b.len(),
                    t.numel,
                    t.dtype
                ));
            }
            storages.insert(t.key.clone(), (t.dtype, t.numel, b));
        }
        let (dtype, numel, storage) = &storages[&t.key];
        if (*dtype, *numel) != (t.dtype, t.numel) {
            return Err(format!(
                "tensor {}: its storage {name} is {} {:?} elements, another tensor's record \
                 says {numel} {dtype:?}",
                t.name, t.numel, t.dtype
            ));
        }
        // checked before the bytes are gathered (a stride-0 view may ask for any size)
        check_view(&t, storage)?;
        total = total.saturating_add(elements(&t)?.saturating_mul(es));
        if total > budget {
            return Err(format!(
                "tensor {}: with it the tensors take more than {budget} bytes, 8 times the \
                 file: views of a storage repeated past any checkpoint's",
                t.name
            ));
        }
        let values = gather(&t, storage)?;
        let tensor = Tensor::from_raw_buffer(&values, t.dtype, &t.shape, &Device::Cpu)
            .map_err(|e| format!("tensor {}: {e}", t.name))?;
        out.push((t.name, tensor));
    }
    Ok(out)
}

/// Whether every element of `t`'s view lies inside its storage (as declared and as
/// read): its furthest, `offset + sum((size - 1) * stride)`, is.
fn check_view(t: &Info, storage: &[u8]) -> Result<(), String> {
    let es = t.dtype.size_in_bytes();
    if elements(t)? == 0 {
        return Ok(());
    }
    // the furthest element: offset + sum((size - 1) * stride), all within the storage
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &s)| {
            (d as u64 - 1).checked_mul(s).and_then(|x| a.checked_add(x))
        });
    // (within the storage as read, not only as declared)
    let held = (storage.len() / es) as u64;
    if last.is_none_or(|l| l >= t.numel.min(held)) {
        return Err(format!(
            "tensor {}: size {:?}, stride {:?} and offset {} reach past its storage of {} \
             elements",
            t.name, t.shape, t.stride, t.offset, t.numel
        ));
    }
    Ok(())
}

/// How many elements `t` has.
fn elements(t: &Info) -> Result<u64, String> {
    t.shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| format!("tensor {}: its size overflows", t.name))
}

/// The bytes of `t`'s elements in row-major order, read from its storage through its
/// offset and strides, each index checked to lie inside the storage.
fn gather(t: &Info, storage: &[u8]) -> Result<Vec<u8>, String> {
    let es = t.dtype.size_in_bytes();
    let count = elements(t)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    check_view(t, storage)?;
    let contiguous = {
        let mut want = 1u64;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            ok &= d == 1 || s == want;
            want *= d as u64;
        }
        ok
    };
    let start = t.offset as usize * es;
    if contiguous {
        return Ok(storage[start..start + count as usize * es].to_vec());
    }
    // a strided view (a transposed weight): element by element, odometer order
    let mut out = Vec::with_capacity(count as usize * es);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..count {
        let at = t.offset as usize
            + idx
                .iter()
                .zip(&t.stride)
                .map(|(&i, &s)| i * s as usize)
                .sum::<usize>();
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
