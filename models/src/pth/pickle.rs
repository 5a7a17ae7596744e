//! The pickle machine behind [`super::read`]: the opcodes a state dict uses (Python's
//! `Lib/pickletools.py`), values shared as Python shares them, no code run, and every
//! container torn down without recursion.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The most opcodes a pickle may run: each makes at most one value (up to ~100 bytes
/// held), so this bounds the machine's memory (a pickle of 80 MB of `]` held 4 GB).
const MAX_OPS: usize = 1 << 22;

/// A pickled value. Containers are shared (a memo read is a reference, as in Python)
/// and mutable (APPEND, SETITEM act on the object the memo holds too).
#[derive(Clone)]
pub(super) enum V {
    Mark,
    None,
    Bool,
    Int(i64),
    /// An integer past 64 bits (LONG1 of more than 8 bytes, LONG4): never a size here.
    BigInt,
    Float,
    Str(Rc<str>),
    Bytes,
    Global(Rc<(String, String)>),
    Tuple(Items),
    List(Items),
    /// Keys and values alternating.
    Dict(Items),
    /// `[callable, args]`.
    Reduce(Items),
    /// `[id]`: a persistent id (torch's storages).
    Pid(Items),
}

/// A container's items, shared. Dropped without recursion: a value nested 200,000
/// deep would overflow the stack if each level dropped the next.
#[derive(Clone)]
pub(super) struct Items(Rc<RefCell<Vec<V>>>);

impl Items {
    pub(super) fn borrow(&self) -> std::cell::Ref<'_, Vec<V>> {
        self.0.borrow()
    }
    fn borrow_mut(&self) -> std::cell::RefMut<'_, Vec<V>> {
        self.0.borrow_mut()
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        if Rc::strong_count(&self.0) != 1 {
            return;
        }
        // the last owner: its items' items are moved here, level by level, so each
        // container is dropped empty
        let Ok(mut first) = self.0.try_borrow_mut() else {
            return;
        };
        let mut work = std::mem::take(&mut *first);
        drop(first);
        while let Some(v) = work.pop() {
            if let Some(c) = v.children() {
                if Rc::strong_count(&c.0) == 1 {
                    if let Ok(mut inner) = c.0.try_borrow_mut() {
                        work.append(&mut inner);
                    }
                }
            }
        }
    }
}

pub(super) fn items(v: Vec<V>) -> Items {
    Items(Rc::new(RefCell::new(v)))
}

impl V {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            V::Mark => "mark",
            V::None => "None",
            V::Bool => "bool",
            V::Int(_) | V::BigInt => "int",
            V::Float => "float",
            V::Str(_) => "str",
            V::Bytes => "bytes",
            V::Global(_) => "global",
            V::Tuple(_) => "tuple",
            V::List(_) => "list",
            V::Dict(_) => "dict",
            V::Reduce(_) => "call",
            V::Pid(_) => "persistent id",
        }
    }

    fn children(&self) -> Option<&Items> {
        match self {
            V::Tuple(c) | V::List(c) | V::Dict(c) | V::Reduce(c) | V::Pid(c) => Some(c),
            _ => None,
        }
    }
}

/// The pickle machine: its stack, memo, and what it dropped (kept for the teardown).
#[derive(Default)]
pub(super) struct Machine {
    stack: Vec<V>,
    memo: HashMap<u32, V>,
    pub(super) dropped: Vec<V>,
}

impl Drop for Machine {
    /// Empties every container the machine made, shared or not, with a worklist: a
    /// cycle (a list appended to itself) is never dropped by reference counting.
    fn drop(&mut self) {
        let mut work: Vec<V> = std::mem::take(&mut self.stack);
        work.extend(self.memo.drain().map(|(_, v)| v));
        work.append(&mut self.dropped);
        while let Some(v) = work.pop() {
            if let Some(c) = v.children() {
                if let Ok(mut inner) = c.0.try_borrow_mut() {
                    work.append(&mut inner);
                }
            }
        }
    }
}

/// A cursor over the pickle's bytes.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = (self.data.len() - self.at) as u64;
        if n > left {
            return Err(format!(
                "the pickle ends inside a value ({n} bytes declared at byte {}, {left} left)",
                self.at
            ));
        }
        let s = &self.data[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL name without its newline")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }
    fn text(&mut self, n: u64) -> Result<V, String> {
        let b = self.take(n)?;
        Ok(V::Str(Rc::from(String::from_utf8_lossy(b).as_ref())))
    }
}

impl Machine {
    fn pop(&mut self) -> Result<V, String> {
        self.stack
            .pop()
            .ok_or_else(|| "the pickle pops an empty stack".to_string())
    }

    /// The values above the topmost MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<V>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, V::Mark))
            .ok_or("the pickle closes a MARK it never opened")?;
        let top = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(top)
    }

    fn top(&self) -> Result<&V, String> {
        self.stack
            .last()
            .ok_or_else(|| "the pickle reads an empty stack".to_string())
    }

    /// Add `new` to the list or dict on top of the stack.
    fn extend_top(&mut self, new: Vec<V>, dict: bool) -> Result<(), String> {
        let top = self.top()?.clone();
        match (&top, dict) {
            (V::List(c), false) => c.borrow_mut().extend(new),
            (V::Dict(c), true) if new.len().is_multiple_of(2) => c.borrow_mut().extend(new),
            (V::Dict(_), true) => return Err("SETITEMS with a key and no value".into()),
            _ => {
                self.dropped.extend(new);
                return Err(format!(
                    "the pickle adds items to a {}, not a {}",
                    top.kind(),
                    if dict { "dict" } else { "list" }
                ));
            }
        }
        Ok(())
    }

    fn tuple(&mut self, n: usize) -> Result<(), String> {
        if self.stack.len() < n {
            return Err("the pickle pops an empty stack".into());
        }
        let t = self.stack.split_off(self.stack.len() - n);
        self.stack.push(V::Tuple(items(t)));
        Ok(())
    }

    /// Run the pickle to its STOP; the object it made.
    pub(super) fn run(&mut self, data: &[u8]) -> Result<V, String> {
        let mut r = Bytes { data, at: 0 };
        for _ in 0..MAX_OPS {
            let at = r.at;
            let op = r
                .u8()
                .map_err(|_| "the pickle ends without a STOP".to_string())?;
            match op {
                0x80 => {
                    r.u8()?; // PROTO
                }
                0x95 => {
                    r.le::<8>()?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(V::Mark),
                b'N' => self.stack.push(V::None),
                0x88 | 0x89 => self.stack.push(V::Bool),
                b'J' => self.stack.push(V::Int(i32::from_le_bytes(r.le()?) as i64)),
                b'K' => self.stack.push(V::Int(r.u8()? as i64)),
                b'M' => self.stack.push(V::Int(u16::from_le_bytes(r.le()?) as i64)),
                0x8a => {
                    // LONG1: n little-endian two's-complement bytes
                    let n = r.u8()? as u64;
                    let b = r.take(n)?;
                    self.stack.push(if n == 0 {
                        V::Int(0)
                    } else if n <= 8 {
                        let mut a = if b[b.len() - 1] & 0x80 != 0 {
                            [0xffu8; 8]
                        } else {
                            [0u8; 8]
                        };
                        a[..b.len()].copy_from_slice(b);
                        V::Int(i64::from_le_bytes(a))
                    } else {
                        V::BigInt
                    });
                }
                0x8b => {
                    let n = u32::from_le_bytes(r.le()?) as u64; // LONG4
                    r.take(n)?;
                    self.stack.push(V::BigInt);
                }
                b'G' => {
                    r.le::<8>()?;
                    self.stack.push(V::Float);
                }
                b'X' => {
                    let n = u32::from_le_bytes(r.le()?) as u64;
                    let v = r.text(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = r.u8()? as u64;
                    let v = r.text(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(r.le()?);
                    let v = r.text(n)?;
                    self.stack.push(v);
                }
                b'U' | b'C' => {
                    let n = r.u8()? as u64; // SHORT_BINSTRING, SHORT_BINBYTES
                    r.take(n)?;
                    self.stack.push(V::Bytes);
                }
                b'T' | b'B' => {
                    let n = u32::from_le_bytes(r.le()?) as u64; // BINSTRING, BINBYTES
                    r.take(n)?;
                    self.stack.push(V::Bytes);
                }
                0x8e => {
                    let n = u64::from_le_bytes(r.le()?); // BINBYTES8
                    r.take(n)?;
                    self.stack.push(V::Bytes);
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.stack.push(V::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (V::Str(m), V::Str(n)) = (&module, &name) else {
                        return Err("STACK_GLOBAL of something other than two names".into());
                    };
                    self.stack
                        .push(V::Global(Rc::new((m.to_string(), n.to_string()))));
                }
                b'}' => self.stack.push(V::Dict(items(Vec::new()))),
                b']' => self.stack.push(V::List(items(Vec::new()))),
                b')' => self.stack.push(V::Tuple(items(Vec::new()))),
                b't' => {
                    let t = self.pop_mark()?;
                    self.stack.push(V::Tuple(items(t)));
                }
                b'l' => {
                    let t = self.pop_mark()?;
                    self.stack.push(V::List(items(t)));
                }
                b'd' => {
                    let t = self.pop_mark()?;
                    if !t.len().is_multiple_of(2) {
                        self.dropped.extend(t);
                        return Err("DICT with a key and no value".into());
                    }
                    self.stack.push(V::Dict(items(t)));
                }
                0x85 => self.tuple(1)?,
                0x86 => self.tuple(2)?,
                0x87 => self.tuple(3)?,
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], false)?;
                }
                b'e' => {
                    let t = self.pop_mark()?;
                    self.extend_top(t, false)?;
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    self.extend_top(vec![k, v], true)?;
                }
                b'u' => {
                    let t = self.pop_mark()?;
                    self.extend_top(t, true)?;
                }
                b'R' | 0x81 => {
                    // REDUCE and NEWOBJ: a call, kept as such (none is run)
                    let (args, callable) = (self.pop()?, self.pop()?);
                    let ordered_dict = matches!(&callable, V::Global(g)
                        if g.0 == "collections" && (g.1 == "OrderedDict" || g.1 == "defaultdict"));
                    if ordered_dict {
                        // (its items follow as SETITEMS)
                        self.dropped.extend([callable, args]);
                        self.stack.push(V::Dict(items(Vec::new())));
                    } else {
                        self.stack.push(V::Reduce(items(vec![callable, args])));
                    }
                }
                b'b' => {
                    // BUILD: an object's attributes (an OrderedDict's `_metadata`):
                    // not a state dict's items, dropped
                    let state = self.pop()?;
                    self.top()?;
                    self.dropped.push(state);
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.stack.push(V::Pid(items(vec![id])));
                }
                b'h' => {
                    let id = r.u8()? as u32;
                    self.get(id)?;
                }
                b'j' => {
                    let id = u32::from_le_bytes(r.le()?);
                    self.get(id)?;
                }
                b'q' => {
                    let id = r.u8()? as u32;
                    self.put(id)?;
                }
                b'r' => {
                    let id = u32::from_le_bytes(r.le()?);
                    self.put(id)?;
                }
                0x94 => {
                    let id = self.memo.len() as u32; // MEMOIZE
                    self.put(id)?;
                }
                b'0' => {
                    let v = self.pop()?;
                    self.dropped.push(v);
                }
                b'1' => {
                    let t = self.pop_mark()?;
                    self.dropped.extend(t);
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {at} is not one a state dict \
                         from torch.save uses"
                    ))
                }
            }
        }
        Err(format!(
            "the pickle runs more than {MAX_OPS} opcodes (a state dict of 100,000 tensors \
             runs about 3 million)"
        ))
    }

    fn get(&mut self, id: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("the pickle reads memo entry {id}, never written"))?;
        self.stack.push(v);
        Ok(())
    }

    fn put(&mut self, id: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        if let Some(old) = self.memo.insert(id, v) {
            self.dropped.push(old);
        }
        Ok(())
    }
}
