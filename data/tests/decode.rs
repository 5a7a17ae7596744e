//! Decoding against PIL's `Image.open(f).convert("RGB")` (fixtures by
//! tests/fixtures/make_fixtures.py), and every bad-file case giving an error that names
//! the file, never a panic.

mod common;

use std::path::Path;

use meal_data::{decode_bytes, decode_file, DataError};

/// (source, PIL's decode, lossless?)
const CASES: &[(&str, &str, bool)] = &[
    ("src_baseline.jpg", "dec_baseline_jpg.png", false),
    ("src_progressive.jpg", "dec_progressive_jpg.png", false),
    ("src_444.jpg", "dec_444_jpg.png", false),
    ("src_gray.jpg", "dec_gray_jpg.png", false),
    ("src_cmyk.jpg", "dec_cmyk_jpg.png", false),
    ("src_rgba.png", "dec_rgba_png.png", true),
    ("src_gray.png", "dec_gray_png.png", true),
    ("src_la.png", "dec_la_png.png", true),
    ("src_palette.png", "dec_palette_png.png", true),
    ("src_palette_trns.png", "dec_palette_trns_png.png", true),
];

#[test]
fn decodes_like_pil_convert_rgb() {
    for &(src, want, lossless) in CASES {
        let got = common::image(src);
        let want = common::image(want);
        assert_eq!((got.width, got.height), (want.width, want.height), "{src}");
        let (mean, max) = common::diff(&got.data, &want.data);
        eprintln!("{src}: mean abs diff {mean:.4} levels, max {max}");
        if lossless {
            assert_eq!(max, 0, "{src}: PNG decode must be exact");
        } else {
            // zune-jpeg vs libjpeg-turbo: IDCT and chroma upsampling rounding differ
            // by a level on some pixels (docs/DATA.md gives the figures).
            assert!(mean < 0.5 && max <= 4, "{src}: mean {mean}, max {max}");
        }
    }
}

fn expect_decode_error(bytes: &[u8], name: &str) {
    let path = Path::new(name);
    match decode_bytes(bytes, path) {
        Err(e @ DataError::Decode { .. }) => {
            assert!(
                e.to_string().contains(name),
                "error must name the file: {e}"
            );
        }
        Err(e) => panic!("{name}: unexpected error kind {e}"),
        Ok(img) => panic!(
            "{name}: decoded {}x{} from bad bytes",
            img.width, img.height
        ),
    }
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let jpg = std::fs::read(common::fixtures().join("src_baseline.jpg")).unwrap();
    let prog = std::fs::read(common::fixtures().join("src_progressive.jpg")).unwrap();
    let png = std::fs::read(common::fixtures().join("src_rgba.png")).unwrap();
    expect_decode_error(b"", "empty.jpg");
    expect_decode_error(b"hello, not an image\n", "text.jpg");
    expect_decode_error(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "anim.gif.jpg");
    expect_decode_error(b"RIFF\x00\x00\x00\x00WEBPVP8 ", "photo.webp");
    expect_decode_error(&jpg[..3], "magic_only.jpg");
    expect_decode_error(&jpg[..200], "header_only.jpg");
    expect_decode_error(&jpg[..jpg.len() / 2], "half.jpg");
    expect_decode_error(&prog[..prog.len() / 2], "half_progressive.jpg");
    expect_decode_error(&png[..8], "signature_only.png");
    expect_decode_error(&png[..png.len() / 2], "half.png");
    // the first bytes of a signature say the file was cut short
    for (bytes, name) in [(&jpg[..2], "two_bytes.jpg"), (&png[..5], "five_bytes.png")] {
        let e = decode_bytes(bytes, Path::new(name))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains("cut short"), "{e}");
    }
    // a bad chunk checksum names the chunk by its type, not a Debug struct
    let mut crc = png.clone();
    let at = crc.len() - 12 - 1; // the last byte of the last chunk's CRC before IEND
    crc[at] ^= 0xFF;
    let e = decode_bytes(&crc, Path::new("crc.png"))
        .unwrap_err()
        .to_string();
    assert!(!e.contains("ChunkType {"), "{e}");
}

/// A PNG whose image data is whole but whose closing `IEND` chunk is missing decodes as
/// PIL decodes it (PIL does not need the chunk); one cut inside its data stays an error.
#[test]
fn a_png_without_its_end_chunk_decodes_whole() {
    let png = std::fs::read(common::fixtures().join("src_rgba.png")).unwrap();
    let whole = decode_bytes(&png, Path::new("whole.png")).unwrap();
    let no_end = decode_bytes(&png[..png.len() - 12], Path::new("no_iend.png")).unwrap();
    assert_eq!(no_end, whole);
    expect_decode_error(&png[..png.len() - 40], "cut_in_data.png");
}

/// Small whole JPEGs whose last rows take few bytes (a flat icon, a digit on black, as
/// MNIST-like sets hold) decode whole, with no "cut short" grey: a first version took
/// zune-jpeg's read-ahead reaching the end of such a file for data running out, greying
/// their last rows (173 of 200 28x28 digits in a re-test).
#[test]
fn small_whole_jpegs_are_not_taken_for_cut_ones() {
    use image::codecs::jpeg::JpegEncoder;
    let mut checked = 0;
    for side in [8u32, 16, 24, 28, 40] {
        for quality in [75u8, 95] {
            for kind in 0..3 {
                // flat colour; a ring on black; a gradient above a black half
                let px = |x: u32, y: u32| -> [u8; 3] {
                    let (fx, fy) = (x as f32 - side as f32 / 2.0, y as f32 - side as f32 / 2.0);
                    match kind {
                        0 => [90, 140, 200],
                        1 if ((fx * fx + fy * fy).sqrt() - side as f32 / 3.0).abs() < 2.0 => {
                            [255; 3]
                        }
                        1 => [0; 3],
                        _ if y < side / 2 => [(x * 255 / side) as u8, 60, 30],
                        _ => [0; 3],
                    }
                };
                let mut rgb = Vec::new();
                for y in 0..side {
                    for x in 0..side {
                        rgb.extend(px(x, y));
                    }
                }
                let mut jpg = Vec::new();
                JpegEncoder::new_with_quality(&mut jpg, quality)
                    .encode(&rgb, side, side, image::ExtendedColorType::Rgb8)
                    .unwrap();
                assert!(jpg.ends_with(&[0xFF, 0xD9]));
                let img = decode_bytes(&jpg, Path::new("small.jpg")).unwrap();
                let row = side as usize * 3;
                let (mean, _) = common::diff(&img.data, &rgb);
                let tail = (side as usize - side.min(8) as usize) * row;
                let (tail_mean, _) = common::diff(&img.data[tail..], &rgb[tail..]);
                assert!(
                    mean < 8.0 && tail_mean < 12.0,
                    "{side}px q{quality} kind {kind}: mean diff {mean}, last rows {tail_mean}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 30);
}

/// A sequential JPEG cut short and given an end-of-image marker (a scraped or copied
/// file) decodes as libjpeg decodes it: the rows before the cut as in the whole file,
/// the blocks past it mid-grey (128; libjpeg zeroes their coefficients, and PIL passes
/// its "Premature end of JPEG file" on). zune-jpeg alone decoded them from zero bits:
/// noise that took crops there to labels PIL's decode never gives.
#[test]
fn a_jpeg_cut_short_with_an_end_marker_is_filled_grey_as_libjpeg() {
    for name in [
        "src_baseline.jpg",
        "src_444.jpg",
        "src_gray.jpg",
        "src_cmyk.jpg",
    ] {
        let jpg = std::fs::read(common::fixtures().join(name)).unwrap();
        let whole = decode_bytes(&jpg, Path::new(name)).unwrap();
        let row = whole.width as usize * 3;
        let rows = whole.height as usize;
        assert!(whole.data[row * (rows - 8)..].iter().any(|&v| v != 128));
        // cut anywhere from 40% to 75% of the file (a first version fell back to the
        // noise at some cuts: where zune-jpeg ran out inside a row)
        for at in (jpg.len() * 2 / 5..jpg.len() * 3 / 4).step_by(3) {
            let mut cut = jpg[..at].to_vec();
            cut.extend([0xFF, 0xD9]);
            let img = decode_bytes(&cut, Path::new(name)).unwrap();
            assert_eq!((img.width, img.height), (whole.width, whole.height));
            // the first rows (well before the cut) are the whole file's
            assert_eq!(img.data[..row * 8], whole.data[..row * 8], "{name} at {at}");
            // the last rows (past the data) are grey
            let tail = &img.data[row * (rows - 8)..];
            assert!(
                tail.iter().all(|&v| v == 128),
                "{name} at {at}: the tail is not grey"
            );
        }
    }
    // a whole file decodes as it always did (the marker-less pass gives its pixels), and
    // a progressive one cut short is left to zune-jpeg (later scans refine earlier ones)
    let prog = std::fs::read(common::fixtures().join("src_progressive.jpg")).unwrap();
    let mut cut = prog[..prog.len() / 2].to_vec();
    cut.extend([0xFF, 0xD9]);
    assert!(decode_bytes(&cut, Path::new("p.jpg")).is_ok());
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    for name in [
        "src_baseline.jpg",
        "src_progressive.jpg",
        "src_cmyk.jpg",
        "src_rgba.png",
        "src_palette.png",
    ] {
        let bytes = std::fs::read(common::fixtures().join(name)).unwrap();
        // Every truncation point of the first 1 KiB, then every 17th byte.
        let cuts = (1..bytes.len().min(1024)).chain((1024..bytes.len()).step_by(17));
        for cut in cuts {
            let r = std::panic::catch_unwind(|| decode_bytes(&bytes[..cut], Path::new(name)));
            assert!(r.is_ok(), "{name} cut at {cut} panicked");
        }
        // Deterministic pseudo-random byte corruption.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state % b.len() as u64) as usize;
                b[i] ^= (state >> 32) as u8 | 1;
            }
            let r = std::panic::catch_unwind(|| decode_bytes(&b, Path::new(name)));
            assert!(r.is_ok(), "{name}: corrupted bytes panicked");
        }
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let e = decode_file(Path::new("/nonexistent/dir/x.jpg")).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/dir/x.jpg"), "{e}");
}

/// A PNG chunk: length, type, data and CRC-32 (ISO-HDLC, as PNG's chunks carry it: PNG
/// spec, "CRC algorithm").
fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = kind.to_vec();
    body.extend(data);
    let mut c = !0u32;
    for &b in &body {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend(&body);
    out.extend((!c).to_be_bytes());
    out
}

/// A PNG's header (signature, IHDR of `w`x`h` at `depth` bits, colour `colour`) and a
/// tiny IDAT: enough for a decoder to learn the size, not to decode a pixel.
fn png_header(w: u32, h: u32, depth: u8, colour: u8) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([depth, colour, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// Decompression bombs are refused from the header, before a pixel is decoded: a
/// 1-bit 40000x40000 PNG (190 KB on disk, 1.6 GB decoded) by the pixel limit, and a
/// 16-bit RGBA PNG inside the pixel limit by the bytes it takes (8 a pixel).
#[test]
fn png_bombs_are_refused_from_their_header() {
    for (w, h, depth, colour, want) in [
        (40_000, 40_000, 1, 0, "pixel limit"),
        // PIL's own limit, twice its MAX_IMAGE_PIXELS (89,478,485): 179,024,400 pixels
        (13_380, 13_380, 8, 2, "178956970-pixel limit"),
        // one side past JPEG's 65535: named as such, not "Image size exceeds limit"
        (70_000, 1, 8, 2, "65535 px a side"),
        (12_000, 12_000, 16, 6, "byte limit"),
    ] {
        let e = decode_bytes(&png_header(w, h, depth, colour), Path::new("bomb.png"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("bomb.png"), "{w}x{h}: {e}");
    }
    // an ordinary size, and one just inside PIL's limit (178,944,129 pixels), get past
    // the header (then fail on the tiny IDAT)
    for (w, h) in [(64, 64), (13_377, 13_377)] {
        let e = decode_bytes(&png_header(w, h, 8, 2), Path::new("small.png"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("limit"), "{w}x{h}: {e}");
    }
}

/// zlib of `bytes` (a PNG's compressed data).
fn zlib(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// A whole 4x3 RGB PNG with `extra` chunks after its header.
fn small_png(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut ihdr = 4u32.to_be_bytes().to_vec();
    ihdr.extend(3u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut rows = Vec::new();
    for y in 0..3u8 {
        rows.push(0); // filter: none
        rows.extend((0..12u8).map(|i| i * 20 + y));
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    for c in extra {
        png.extend(c);
    }
    png.extend(png_chunk(b"IDAT", &zlib(&rows)));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// A PNG's colour profile (`iCCP`) is checked as PIL checks it (Pillow
/// `PngImagePlugin.py`, `chunk_iCCP`), then unused: one that inflates past PIL's 1 MiB
/// (a 2 KB chunk of 2 MiB: the png crate inflated up to 1 GiB) or is compressed by an
/// unknown method is refused naming the file; a small one, or one that does not inflate
/// (PIL drops it), leaves the pixels as they are without it.
#[test]
fn a_png_colour_profile_is_checked_as_pil_and_unused() {
    let plain = decode_bytes(&small_png(&[]), Path::new("plain.png")).unwrap();
    assert_eq!(plain.pixel(1, 2), [62, 82, 102]);
    let iccp = |method: u8, data: &[u8]| {
        let mut body = b"profile\0".to_vec();
        body.push(method);
        body.extend(data);
        png_chunk(b"iCCP", &body)
    };
    for (name, chunk) in [
        ("small.png", iccp(0, &zlib(&[7u8; 3000]))),
        ("broken.png", iccp(0, b"\x78\x9c not zlib at all")),
        (
            "just-under.png",
            iccp(0, &zlib(&vec![0u8; (1 << 20) - 4096])),
        ),
    ] {
        let got = decode_bytes(&small_png(&[chunk]), Path::new(name)).unwrap();
        assert_eq!(got, plain, "{name}");
    }
    for (name, chunk, want) in [
        (
            "bomb.png",
            iccp(0, &zlib(&vec![0u8; 2 << 20])),
            "inflates past 1048576 bytes",
        ),
        ("method.png", iccp(1, &zlib(b"x")), "unknown method (1;"),
    ] {
        let e = decode_bytes(&small_png(&[chunk]), Path::new(name))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains(want), "{e}");
    }
    // what follows IEND is no chunk: bytes of an iCCP there leave the image as it is
    let mut trailing = small_png(&[]);
    trailing.extend(iccp(0, &zlib(&vec![0u8; 2 << 20])));
    assert_eq!(decode_bytes(&trailing, Path::new("t.png")).unwrap(), plain);
    // an iCCP between two IDAT chunks is out of PNG's order: refused, as PIL refuses
    // it (its image data ends at the first other chunk), not mended by taking it out
    let whole = small_png(&[]);
    let idat = whole.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
    let len = u32::from_be_bytes(whole[idat..idat + 4].try_into().unwrap()) as usize;
    let data = &whole[idat + 8..idat + 8 + len];
    let mut split = whole[..idat].to_vec();
    split.extend(png_chunk(b"IDAT", &data[..len / 2]));
    split.extend(iccp(0, &zlib(b"profile")));
    split.extend(png_chunk(b"IDAT", &data[len / 2..]));
    split.extend(png_chunk(b"IEND", &[]));
    assert!(decode_bytes(&split, Path::new("s.png")).is_err());
}
