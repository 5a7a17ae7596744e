//! The reader on hand-made pickles: a state dict as torch.save writes it (the real
//! file, `tests/fixtures/basic_plain.pth`, is read in `tests/weights.rs`), and the
//! hostile files an adversarial run made of candle's reader panic, abort or overflow
//! its stack.

use std::io::Write;

use super::*;

/// Pickle opcodes, as `Lib/pickletools.py` names them.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINGET: u8 = b'h';
    pub const BINPUT: u8 = b'q';
    pub const NEWFALSE: u8 = 0x89;
    pub const EMPTY_TUPLE: u8 = b')';
}

/// A pickle being written.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn op(&mut self, o: u8) -> &mut Self {
        self.0.push(o);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn int(&mut self, i: i32) -> &mut Self {
        self.0.push(b'J');
        self.0.extend(i.to_le_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn ints(&mut self, v: &[i32]) -> &mut Self {
        self.op(op::MARK);
        for &i in v {
            self.int(i);
        }
        self.op(op::TUPLE)
    }
    /// `_rebuild_tensor_v2(("storage", torch.FloatStorage, key, "cpu", numel), offset,
    /// size, stride, False, OrderedDict())`, as torch.save writes a tensor.
    fn tensor(
        &mut self,
        key: &str,
        numel: i32,
        offset: i32,
        size: &[i32],
        stride: &[i32],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(op::MARK);
        self.op(op::MARK)
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .op(op::TUPLE)
            .op(op::BINPERSID);
        self.int(offset).ints(size).ints(stride).op(op::NEWFALSE);
        self.global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE);
        self.op(op::TUPLE).op(op::REDUCE)
    }
}

/// A zip archive as torch.save lays it out: `archive/data.pkl`, `archive/byteorder`,
/// `archive/data/KEY`, all stored.
fn archive(dir: &Path, pickle: &[u8], storages: &[(&str, Vec<f32>)]) -> std::path::PathBuf {
    let path = dir.join("w.pth");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    for (key, v) in storages {
        z.start_file(format!("archive/data/{key}"), opts).unwrap();
        for x in v {
            z.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    z.finish().unwrap();
    path
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn a_state_dict_with_shared_and_strided_storages_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = P::default();
    p.op(op::PROTO)
        .op(2)
        .op(op::EMPTY_DICT)
        .op(op::BINPUT)
        .op(0)
        .op(op::MARK);
    // a: 2x3 contiguous; b: its transpose (a view of the same storage); c: offset 2
    p.str("a").tensor("0", 6, 0, &[2, 3], &[3, 1]);
    p.str("b").tensor("0", 6, 0, &[3, 2], &[1, 3]);
    p.str("c").tensor("0", 6, 2, &[2], &[1]);
    p.str("steps").int(7);
    // an expanded view (stride 0) of storage 1's first value
    p.str("e").tensor("1", 2, 0, &[3], &[0]);
    // a parameter wrapping a tensor
    p.str("d")
        .global("torch._utils", "_rebuild_parameter")
        .op(op::MARK);
    p.tensor("1", 2, 0, &[2], &[1]).op(op::NEWFALSE);
    p.global("collections", "OrderedDict")
        .op(op::EMPTY_TUPLE)
        .op(op::REDUCE);
    p.op(op::TUPLE).op(op::REDUCE);
    p.op(op::SETITEMS).op(op::STOP);
    let path = archive(
        dir.path(),
        &p.0,
        &[("0", vec![0., 1., 2., 3., 4., 5.]), ("1", vec![9., 8.])],
    );
    let got: HashMap<String, Tensor> = read(&path).unwrap().into_iter().collect();
    assert_eq!(got.len(), 5, "the step count is no tensor");
    assert_eq!(values(&got["e"]), [9., 9., 9.]);
    assert_eq!(got["a"].dims(), &[2, 3]);
    assert_eq!(values(&got["a"]), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(values(&got["b"]), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(values(&got["c"]), [2., 3.]);
    assert_eq!(values(&got["d"]), [9., 8.]);
    // a flipped bit in a storage (the sizes still agree) is caught by its CRC-32
    let mut bytes = std::fs::read(&path).unwrap();
    let five = 5f32.to_le_bytes();
    let at = bytes.windows(4).position(|w| w == five).unwrap();
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = read(&path).unwrap_err();
    assert!(
        e.contains("archive entry archive/data/0 is damaged") && e.contains("CRC-32"),
        "{e}"
    );
}

#[test]
fn a_state_dict_under_a_wrapper_key_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = P::default();
    p.op(op::PROTO).op(2).op(op::EMPTY_DICT).op(op::MARK);
    p.str("epoch").int(3);
    p.str("state_dict").op(op::EMPTY_DICT).op(op::MARK);
    p.str("w").tensor("0", 2, 0, &[2], &[1]);
    p.op(op::SETITEMS).op(op::SETITEMS).op(op::STOP);
    let path = archive(dir.path(), &p.0, &[("0", vec![1., 2.])]);
    let got = read(&path).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w");
}

/// Each hostile record is an error naming the tensor, not a panic.
#[test]
fn malformed_tensor_records_are_errors_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    type Case = (&'static str, Box<dyn Fn(&mut P)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "short args",
            Box::new(|p: &mut P| {
                p.global("torch._utils", "_rebuild_tensor_v2")
                    .op(op::MARK)
                    .int(0)
                    .op(op::TUPLE)
                    .op(op::REDUCE);
            }),
            "_rebuild_tensor_v2 called with 1 arguments",
        ),
        (
            "short storage",
            Box::new(|p: &mut P| {
                p.global("torch._utils", "_rebuild_tensor_v2").op(op::MARK);
                p.op(op::MARK)
                    .str("storage")
                    .op(op::TUPLE)
                    .op(op::BINPERSID);
                p.int(0).ints(&[2]).ints(&[1]).op(op::TUPLE).op(op::REDUCE);
            }),
            "storage record has 1 fields",
        ),
        (
            "empty parameter",
            Box::new(|p: &mut P| {
                p.global("torch._utils", "_rebuild_parameter")
                    .op(op::EMPTY_TUPLE)
                    .op(op::REDUCE);
            }),
            "_rebuild_parameter called without its tensor",
        ),
        (
            "short from_type",
            Box::new(|p: &mut P| {
                p.global("torch._tensor", "_rebuild_from_type_v2")
                    .op(op::MARK)
                    .int(0)
                    .int(0)
                    .op(op::TUPLE)
                    .op(op::REDUCE);
            }),
            "called with 2 arguments, not 4",
        ),
        (
            "huge shape over a small storage",
            Box::new(|p: &mut P| {
                p.tensor("0", 2, 0, &[i32::MAX, 64], &[64, 1]);
            }),
            "reach past its storage",
        ),
        (
            "negative size",
            Box::new(|p: &mut P| {
                p.tensor("0", 2, 0, &[-2], &[1]);
            }),
            "negative or non-integer",
        ),
        (
            "storage larger than the file",
            Box::new(|p: &mut P| {
                p.tensor("0", i32::MAX, 0, &[2], &[1]);
            }),
            "larger than the file",
        ),
        (
            "storage entry of another size",
            Box::new(|p: &mut P| {
                p.tensor("0", 3, 0, &[2], &[1]);
            }),
            "holds 8 bytes, 3 F32 elements need 12",
        ),
        (
            "an expanded view of a size past any file",
            Box::new(|p: &mut P| {
                p.tensor("0", 2, 0, &[1 << 30, 1 << 10], &[0, 0]);
            }),
            "bytes, 8 times the file",
        ),
    ];
    for (what, body, want) in cases {
        let mut p = P::default();
        p.op(op::PROTO)
            .op(2)
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("w");
        body(&mut p);
        p.op(op::SETITEMS).op(op::STOP);
        let path = archive(dir.path(), &p.0, &[("0", vec![1., 2.])]);
        let e = read(&path)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.contains("tensor w") && e.contains(want), "{what}: {e}");
    }
}

/// Two records of one storage that disagree (another dtype or size: a panic in a
/// slice before), and a name given twice, are errors naming the tensor.
#[test]
fn storages_declared_twice_alike_and_names_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = P::default();
    p.op(op::PROTO).op(2).op(op::EMPTY_DICT).op(op::MARK);
    p.str("a").tensor("0", 2, 0, &[2], &[1]);
    p.str("b").tensor("0", 3, 0, &[3], &[1]);
    p.op(op::SETITEMS).op(op::STOP);
    let path = archive(dir.path(), &p.0, &[("0", vec![1., 2.])]);
    let e = read(&path).unwrap_err();
    assert!(
        e.contains("tensor b") && e.contains("another tensor's record says 2"),
        "{e}"
    );
    let mut p = P::default();
    p.op(op::PROTO).op(2).op(op::EMPTY_DICT).op(op::MARK);
    p.str("a").tensor("0", 2, 0, &[2], &[1]);
    p.str("a").tensor("0", 2, 0, &[1], &[1]);
    p.op(op::SETITEMS).op(op::STOP);
    let path = archive(dir.path(), &p.0, &[("0", vec![1., 2.])]);
    assert!(read(&path)
        .unwrap_err()
        .contains("tensor a is in the state dict twice"));
}

/// A pickle nested 1,000,000 deep (candle's reader overflowed its stack at 200,000)
/// and a memo bomb (each read doubling what a clone copies: candle's reader grew past
/// 5 GB from 409 bytes) are read in bounded time and memory; neither holds a tensor.
#[test]
fn deep_nesting_and_memo_bombs_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = P::default();
    deep.op(op::PROTO)
        .op(2)
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("w")
        .int(0);
    for _ in 0..1_000_000 {
        deep.op(op::TUPLE1);
    }
    deep.op(op::SETITEMS).op(op::STOP);
    let mut bomb = P::default();
    bomb.op(op::PROTO)
        .op(2)
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("w");
    bomb.op(op::EMPTY_LIST).op(op::BINPUT).op(0);
    for _ in 0..64 {
        bomb.op(op::BINGET)
            .op(0)
            .op(op::BINGET)
            .op(0)
            .op(op::TUPLE2)
            .op(op::BINPUT)
            .op(0);
    }
    bomb.op(op::SETITEMS).op(op::STOP);
    // a list appended to itself: a cycle
    let mut cycle = P::default();
    cycle
        .op(op::PROTO)
        .op(2)
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("w");
    cycle
        .op(op::EMPTY_LIST)
        .op(op::BINPUT)
        .op(0)
        .op(op::BINGET)
        .op(0)
        .op(op::APPEND);
    cycle.op(op::SETITEMS).op(op::STOP);
    for (what, p) in [("deep", deep), ("memo bomb", bomb), ("cycle", cycle)] {
        let path = archive(dir.path(), &p.0, &[]);
        let t0 = std::time::Instant::now();
        assert!(read(&path).unwrap().is_empty(), "{what}");
        assert!(t0.elapsed().as_secs() < 10, "{what}: {:?}", t0.elapsed());
    }
}

/// A pickle that is not one: errors, each saying what it met.
#[test]
fn broken_pickles_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // more opcodes than any state dict runs: refused before its values fill memory
    let mut many = b"\x80\x02".to_vec();
    many.extend(std::iter::repeat_n(b']', (1 << 22) + 1));
    let cases: [(&[u8], &str); 6] = [
        (&many, "more than 4194304 opcodes"),
        (b"", "without a STOP"),
        (b"\x80\x02}(X\xff\xff\xff\x7fab", "ends inside a value"),
        (b"\x80\x02t.", "closes a MARK it never opened"),
        (b"\x80\x02h\x05.", "memo entry 5, never written"),
        (b"\x80\x02I1\n.", "opcode 0x49"),
    ];
    for (pickle, want) in cases {
        let path = archive(dir.path(), pickle, &[]);
        let e = read(&path).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
    // a list is no state dict
    let path = archive(dir.path(), b"\x80\x02].", &[]);
    assert!(read(&path).unwrap_err().contains("not a state dict"));
}
