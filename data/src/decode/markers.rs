//! Walking a JPEG's markers for what zune-jpeg does not say: a coding process it does
//! not decode, and a progressive file's scans that stop before its last.

/// The coding process of a JPEG whose frame header (SOF) is one zune-jpeg does not
/// decode (lossless, arithmetic-coded or hierarchical: ITU T.81 table B.1); its own
/// error for them reads "Number of components cannot be zero". libjpeg-turbo, and so
/// PIL, decodes arithmetic coding (and lossless since 3.0).
pub(super) fn unsupported_process(bytes: &[u8]) -> Option<&'static str> {
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let process = match marker {
            0xC0..=0xC2 | 0xDA => return None,
            0xC3 => "a lossless (SOF3)",
            0xC5..=0xC7 => "a hierarchical (differential)",
            0xC9 | 0xCA => "an arithmetic-coded",
            0xCB => "a lossless arithmetic-coded (SOF11)",
            0xCD..=0xCF => "a hierarchical arithmetic-coded",
            _ => {
                i += 2 + u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
                continue;
            }
        };
        return Some(process);
    }
    None
}

/// What a progressive JPEG's scans leave uncoded, in words, or `None` when every
/// coefficient of every component is coded to its last bit. Each scan (JPEG, ITU T.81
/// G.1.1.1) codes coefficients `Ss..=Se` of its components down to bit `Al`, refinement
/// scans lowering `Al` to 0; a file cut short at a scan's end and given an end marker
/// decodes, with the later scans' coefficients zero. Markers are walked from the start,
/// each scan's entropy-coded data skipped to the next marker; `None` too where the
/// header cannot be walked (the decoder judged the file).
pub(super) fn progressive_scans_missing(bytes: &[u8]) -> Option<String> {
    // per frame component (its id): the lowest bit coded of each coefficient (9: none)
    let mut comps: Vec<(u8, [u8; 64])> = Vec::new();
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xD9 {
            break;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        let seg = bytes.get(i + 4..i + 2 + len)?;
        i += 2 + len;
        match marker {
            // progressive Huffman frame: Nf components of 3 bytes from the 6th
            0xC2 => {
                let n = *seg.get(5)? as usize;
                comps = (0..n)
                    .map(|c| seg.get(6 + 3 * c).map(|&id| (id, [9u8; 64])))
                    .collect::<Option<_>>()?;
            }
            0xDA => {
                let n = *seg.first()? as usize;
                let (ss, se, al) = (
                    *seg.get(1 + 2 * n)? as usize,
                    *seg.get(2 + 2 * n)? as usize,
                    seg.get(3 + 2 * n)? & 0x0F,
                );
                for c in 0..n {
                    let id = *seg.get(1 + 2 * c)?;
                    let (_, bits) = comps.iter_mut().find(|(cid, _)| *cid == id)?;
                    for b in bits.get_mut(ss..=se.min(63))? {
                        *b = (*b).min(al);
                    }
                }
                // the scan's data: up to the next marker that is no stuffed byte
                // (FF 00) or restart (FF D0-D7)
                while i + 1 < bytes.len()
                    && !(bytes[i] == 0xFF
                        && bytes[i + 1] != 0
                        && !(0xD0..=0xD7).contains(&bytes[i + 1]))
                {
                    i += 1;
                }
            }
            _ => {}
        }
    }
    let uncoded: Vec<String> = comps
        .iter()
        .enumerate()
        .filter_map(|(c, (_, bits))| {
            let ac = bits[1..].iter().filter(|&&b| b != 0).count();
            match (bits[0] != 0, ac) {
                (false, 0) => None,
                (dc, ac) => Some(format!(
                    "component {c}: {}{ac} of 63 AC coefficients",
                    if dc { "DC and " } else { "" }
                )),
            }
        })
        .collect();
    (!uncoded.is_empty()).then(|| format!("not fully coded: {}", uncoded.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_bytes;
    use std::path::Path;

    /// libjpeg's progression (10 scans: DC first, then AC bands and refinements): the
    /// whole file is fully coded; cut after any scan and given an end marker, what the
    /// scans left is named.
    #[test]
    fn a_progressive_jpeg_cut_at_a_scan_is_told() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/src_progressive.jpg");
        let jpg = std::fs::read(path).unwrap();
        assert_eq!(progressive_scans_missing(&jpg), None);
        let scans: Vec<usize> = (0..jpg.len() - 1)
            .filter(|&i| jpg[i] == 0xFF && jpg[i + 1] == 0xDA)
            .collect();
        assert_eq!(scans.len(), 10);
        for (k, &at) in scans.iter().enumerate().skip(1) {
            let mut cut = jpg[..at].to_vec();
            cut.extend([0xFF, 0xD9]);
            let missing = progressive_scans_missing(&cut);
            assert!(missing.is_some(), "cut before scan {k}");
            // and it decodes (as libjpeg decodes it)
            assert!(decode_bytes(&cut, Path::new("p.jpg")).is_ok(), "scan {k}");
        }
        // after the first (DC) scan alone: every AC coefficient of the 3 components
        let mut cut = jpg[..scans[1]].to_vec();
        cut.extend([0xFF, 0xD9]);
        let missing = progressive_scans_missing(&cut).unwrap();
        assert!(
            missing.contains("component 0: DC and 63 of 63 AC")
                && missing.contains("component 2: DC and 63 of 63 AC"),
            "{missing}"
        );
        // an arithmetic-coded or lossless frame is named as such (zune-jpeg: "Number of
        // components cannot be zero")
        let seq_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/src_baseline.jpg");
        let seq = std::fs::read(&seq_path).unwrap();
        let sof = (0..seq.len() - 1)
            .find(|&i| seq[i] == 0xFF && seq[i + 1] == 0xC0)
            .unwrap();
        for (kind, want) in [
            (0xC9u8, "an arithmetic-coded JPEG"),
            (0xC3, "a lossless (SOF3) JPEG"),
        ] {
            let mut f = seq.clone();
            f[sof + 1] = kind;
            let e = decode_bytes(&f, Path::new("a.jpg"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.contains("a.jpg") && e.contains("re-encode"),
                "{e}"
            );
        }
        // a sequential file is no progressive one
        assert_eq!(progressive_scans_missing(&seq), None);
    }
}
