//! Decoding JPEG (baseline, progressive) and PNG files to 8-bit RGB, as PIL's
//! `Image.open(f).convert("RGB")` gives them.
//!
//! - JPEG through zune-jpeg in strict mode (a truncated or corrupt stream is an error,
//!   not a grey tail; a sequential file cut short but ending in its end marker is filled
//!   grey past its data, with a warning, as libjpeg fills it). Grey is replicated; CMYK and YCCK become RGB as `c * k / 255`,
//!   which is what PIL computes after reading Adobe-inverted CMYK (`CMYK;I`) and
//!   converting with `r = (255 - k') - c' * (255 - k') / 255` (the two are equal for
//!   8-bit values: see docs/DATA.md).
//! - PNG through the `image` crate: grey and grey+alpha are replicated, alpha is dropped
//!   (PIL's convert("RGB") drops it too, no compositing), palettes are expanded.
//!   16-bit samples become 8-bit by the `image` crate's rounding (PIL takes the high
//!   byte for RGB and clips grey; a documented difference).
//!
//! Any other format, an empty file, or a decoder error gives [`DataError::Decode`]
//! naming the file. Decoding never panics on bad bytes (fuzzed by the tests' bad-file
//! cases; the decoders themselves are safe Rust).

use std::path::Path;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::error::{DataError, Result};

mod markers;
use markers::{progressive_scans_missing, unsupported_process};

/// Largest side we decode: 2^16 - 1 (JPEG's own limit), to bound memory on hostile files.
const MAX_SIDE: usize = 65_535;
/// Largest pixel count we decode: PIL's, which refuses an image of more than twice its
/// `Image.MAX_IMAGE_PIXELS` (89,478,485) as a decompression bomb (Pillow
/// `src/PIL/Image.py`, `_decompression_bomb_check`): ~179 MP, 537 MB of RGB. (We allowed
/// 2^28 once: a 4 KB JPEG claiming 16384x16384 then took 1.6 GB to decode.)
const MAX_PIXELS: usize = 2 * 89_478_485;
/// Largest decoded PNG, in bytes before the conversion to RGB8: 4 bytes a pixel at the
/// pixel limit (RGBA8), so 16-bit images are refused at a fraction of it (RGBA16, 8
/// bytes a pixel, at half; RGB16 at two thirds; grey16, 2 bytes, at the pixel limit
/// alone): 716 MB per decoding thread at most.
const MAX_DECODE_BYTES: u64 = (MAX_PIXELS as u64) * 4;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `R G B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels (at least 1).
    pub width: u32,
    /// Height in pixels (at least 1).
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The RGB triple at column `x`, row `y`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Image container formats we recognise by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JPEG / JFIF (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 50 4E 47 0D 0A 1A 0A`).
    Png,
}

/// The format of `bytes` by magic number, if we decode it.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else {
        None
    }
}

/// Read and decode the image at `path`.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_bytes(&bytes, path)
}

/// Decode an in-memory image; `path` only names it in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(DataError::decode(path, "empty file"));
    }
    match sniff(bytes) {
        Some(Format::Jpeg) => decode_jpeg(bytes, path),
        Some(Format::Png) => decode_png(bytes, path),
        // (the first bytes of a signature: a file cut short, not another format)
        None if bytes.len() < 3 && [0xFF, 0xD8].starts_with(bytes) => Err(DataError::decode(
            path,
            "a JPEG cut short (only its first bytes)",
        )),
        None if bytes.len() < 8 && b"\x89PNG\r\n\x1a\n".starts_with(bytes) => Err(
            DataError::decode(path, "a PNG cut short (only its first bytes)"),
        ),
        None => Err(DataError::decode(
            path,
            "unsupported or unrecognised format (JPEG and PNG are decoded)",
        )),
    }
}

fn check_dims(w: usize, h: usize, path: &Path) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(DataError::decode(path, format!("zero-sized image {w}x{h}")));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(DataError::decode(
            path,
            format!("image {w}x{h} is larger than the limit of {MAX_SIDE} px a side"),
        ));
    }
    if w.saturating_mul(h) > MAX_PIXELS {
        return Err(DataError::decode(
            path,
            format!("image {w}x{h} is larger than the {MAX_PIXELS}-pixel limit"),
        ));
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    // A file that ends in its end-of-image marker is decoded without it, followed by
    // one-bits (see `cut_short`): one header parse and one decode for a whole file
    let padded = bytes.ends_with(&[0xFF, 0xD9]).then(|| {
        let mut v = bytes[..bytes.len() - 2].to_vec();
        v.extend_from_slice(&LOOKAHEAD_PAD);
        v
    });
    let mut dec = jpeg_decoder(padded.as_deref().unwrap_or(bytes), true);
    dec.decode_headers().map_err(|e| {
        let why = match unsupported_process(bytes) {
            Some(process) => format!(
                "{process} JPEG, which zune-jpeg does not decode (baseline, extended and \
                 progressive Huffman JPEGs are decoded): re-encode it"
            ),
            None => jpeg_message(&e),
        };
        DataError::decode(path, format!("JPEG: {why}"))
    })?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| DataError::decode(path, "JPEG: no frame header"))?;
    check_dims(w, h, path)?;
    let colorspace = dec
        .input_colorspace()
        .ok_or_else(|| DataError::decode(path, "JPEG: no colour space"))?;
    if !matches!(
        colorspace,
        ColorSpace::Luma
            | ColorSpace::YCbCr
            | ColorSpace::RGB
            | ColorSpace::CMYK
            | ColorSpace::YCCK
    ) {
        return Err(DataError::decode(
            path,
            format!("JPEG: unsupported colour space {colorspace:?}"),
        ));
    }
    let n = dec
        .output_buffer_size()
        .ok_or_else(|| DataError::decode(path, "JPEG: image too large"))?;
    if n != w * h * 3 {
        return Err(DataError::decode(
            path,
            format!("JPEG: unexpected output size {n} for {w}x{h} RGB"),
        ));
    }
    let sequential = dec.info().is_some_and(|i| i.sof.is_sequential_dct());
    let whole = |e| DataError::decode(path, format!("JPEG: {}", jpeg_message(&e)));
    let mut data = vec![0u8; n];
    let data = match padded.as_deref() {
        Some(padded) if sequential => match dec.decode_into(&mut data) {
            Ok(()) => data,
            Err(_) => cut_short(bytes, padded, n, path)?,
        },
        // progressive (later scans refine earlier ones: no grey tail to fill) or no
        // final marker: as the file is
        Some(_) => {
            let mut dec = jpeg_decoder(bytes, true);
            dec.decode_into(&mut data).map_err(whole)?;
            // (libjpeg, and so PIL, decode it without a word: its coefficients that no
            // scan reached are zero, a blurred image labelled as the whole one)
            if let Some(missing) = progressive_scans_missing(bytes) {
                crate::error::warn_once(format!(
                    "{}: progressive JPEG whose scans end before its last ({missing}; cut \
                     short, then given an end marker?): decoded from the scans it has, \
                     blurred, as libjpeg and PIL decode it",
                    path.display()
                ));
            }
            data
        }
        None => {
            dec.decode_into(&mut data).map_err(whole)?;
            data
        }
    };
    Ok(RgbImage {
        width: w as u32,
        height: h as u32,
        data,
    })
}

/// What follows a sequential JPEG's data in place of its end marker: stuffed `FF 00`
/// pairs, one-bits to the decoder, which no Huffman code is made of (JPEG reserves the
/// all-ones code). 16 bytes, more than zune-jpeg's bit reader reads ahead (8), so a
/// whole file's reader never meets the end of its input before its last row is decoded
/// (it counts reading the last byte as running out, which failed small whole files
/// whose last row takes a few bytes) and never decodes these bits: the same pixels as
/// with its marker. A file whose data ends early decodes them, and fails at once.
const LOOKAHEAD_PAD: [u8; 16] = [
    0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0,
];

fn jpeg_decoder(bytes: &[u8], strict: bool) -> JpegDecoder<ZCursor<&[u8]>> {
    let opts = DecoderOptions::default()
        .set_strict_mode(strict)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    JpegDecoder::new_with_options(ZCursor::new(bytes), opts)
}

/// A sequential JPEG with an end marker whose padded decode (`padded`, see
/// [`LOOKAHEAD_PAD`]) failed. Decoded with its marker as it is: where that fails too,
/// the file is corrupt, the error it always gave. Where it decodes (past a marker
/// zune-jpeg reads zero bits), its data ran out before its last blocks: cut short and
/// given a marker (a copy interrupted, a scrape). It is then decoded padded again into a
/// buffer of mid-grey, so the rows the decoder did not finish stay 128, as libjpeg
/// fills the blocks it lacks ("Premature end of JPEG file", which PIL passes on), and a
/// warning names it; with the marker, every block past the data was decoded from zero
/// bits, noise PIL never gives.
fn cut_short(bytes: &[u8], padded: &[u8], n: usize, path: &Path) -> Result<Vec<u8>> {
    let mut data = vec![0u8; n];
    jpeg_decoder(bytes, true)
        .decode_into(&mut data)
        .map_err(|e| DataError::decode(path, format!("JPEG: {}", jpeg_message(&e))))?;
    let mut grey = vec![128u8; n];
    // (leniently: it stops where it failed, keeping the rows decoded before)
    let _ = jpeg_decoder(padded, false).decode_into(&mut grey);
    crate::error::warn_once(format!(
        "{}: JPEG data ends before its last rows (cut short, then given an end marker); \
         the rows past it are filled grey, as libjpeg and PIL fill the blocks it lacks",
        path.display()
    ));
    Ok(grey)
}

/// The `IEND` chunk that ends every PNG (length 0, type, CRC).
const PNG_IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

/// The most a PNG's colour profile (`iCCP`) may inflate to: PIL's `MAX_TEXT_CHUNK`
/// (`ImageFile.SAFEBLOCK`, 1 MiB), past which it refuses the file ("Decompressed data too
/// large"; Pillow `src/PIL/PngImagePlugin.py`, `chunk_iCCP`). The png crate inflates it up
/// to the whole decode's byte limit: a 2 MB file took 1.1 GB.
const MAX_ICC_BYTES: u64 = 1 << 20;

/// `bytes` without their `iCCP` chunks (the colour profile, which converting to RGB
/// does not use, as PIL's `convert("RGB")` does not), each checked as PIL checks it
/// first: one whose profile inflates past [`MAX_ICC_BYTES`] or is compressed by another
/// method is refused; one that does not inflate is dropped, as PIL drops it. `None`: no
/// such chunk (the bytes go to the decoder as they are). Chunks are walked from the
/// signature while whole; the decoder reports what lies past a broken one.
fn without_iccp(bytes: &[u8], path: &Path) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut kept: Option<Vec<u8>> = None;
    let mut idat = false;
    let mut at = 8;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(end) = at.checked_add(12).and_then(|e| e.checked_add(len)) else {
            break;
        };
        let Some(chunk) = bytes.get(at..end) else {
            break;
        };
        // (PNG's chunk order puts iCCP before the image data: one after it is left to the
        // decoder, which refuses it as PIL does; nothing after IEND is a chunk)
        match &head[4..8] {
            b"IDAT" => idat = true,
            b"IEND" => break,
            _ => {}
        }
        if &head[4..8] == b"iCCP" && !idat {
            let body = &chunk[8..8 + len];
            // name (1-79 bytes), NUL, compression method (0: zlib), the profile
            let name = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            match body.get(name + 1) {
                Some(0) => {}
                m => {
                    let method = m.map_or("none given".to_string(), |m| m.to_string());
                    return Err(DataError::decode(
                        path,
                        format!(
                            "PNG: its colour profile (iCCP) is compressed by unknown method \
                             ({method}; PIL refuses it too)"
                        ),
                    ));
                }
            }
            let mut inflated = Vec::new();
            let read = flate2::read::ZlibDecoder::new(&body[name + 2..])
                .take(MAX_ICC_BYTES + 1)
                .read_to_end(&mut inflated);
            if read.is_ok() && inflated.len() as u64 > MAX_ICC_BYTES {
                return Err(DataError::decode(
                    path,
                    format!(
                        "PNG: its colour profile (iCCP) inflates past {MAX_ICC_BYTES} bytes \
                         (a decompression bomb; PIL refuses it too)"
                    ),
                ));
            }
            kept.get_or_insert_with(|| bytes[..at].to_vec());
        } else if let Some(k) = kept.as_mut() {
            k.extend_from_slice(chunk);
        }
        at = end;
    }
    if let Some(k) = kept.as_mut() {
        k.extend_from_slice(&bytes[at.min(bytes.len())..]);
    }
    Ok(kept)
}

/// A PNG; one whose image data is whole but whose `IEND` chunk is missing (cut at its
/// very end) decodes as PIL decodes it, which does not require the chunk.
fn decode_png(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let stripped = without_iccp(bytes, path)?;
    let bytes = stripped.as_deref().unwrap_or(bytes);
    match decode_png_once(bytes, path) {
        Err(e) if !bytes.ends_with(&PNG_IEND) => {
            let mut ended = bytes.to_vec();
            ended.extend_from_slice(&PNG_IEND);
            decode_png_once(&ended, path).map_err(|_| e)
        }
        r => r,
    }
}

/// zune-jpeg's error for a message: a file that ends inside its headers is said to be
/// cut short (its own text, "I/O errors Not enough bytes, expected 162 but found 69",
/// reads as a disk fault); other errors as zune-jpeg words them, on one line.
fn jpeg_message(e: &impl std::fmt::Debug) -> String {
    let text = format!("{e:?}").trim().replace('\n', " ");
    match text.contains("Not enough bytes") || text.contains("No more bytes") {
        true => "cut short (the file ends inside its headers)".into(),
        false => text,
    }
}

/// The png crate's message with its chunk types' `Debug` structs (`ChunkType { type:
/// IDAT, critical: true, ... }`) shortened to the type (`IDAT`).
fn png_message(e: &image::ImageError) -> String {
    let mut text = e.to_string();
    while let Some(start) = text.find("ChunkType { type: ") {
        let rest = &text[start + "ChunkType { type: ".len()..];
        let (Some(comma), Some(close)) = (rest.find(','), rest.find('}')) else {
            break;
        };
        let kind = rest[..comma.min(close)].trim().to_string();
        let end = start + "ChunkType { type: ".len() + close + 1;
        text.replace_range(start..end, &kind);
    }
    text
}

fn decode_png_once(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    // (the sides are checked by check_dims, whose message names the limit; the crate's
    // says "Image size exceeds limit")
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let png = |e: image::ImageError| DataError::decode(path, format!("PNG: {}", png_message(&e)));
    // the header's size is checked before any pixel is decoded: a 190 KB 1-bit PNG of
    // 40000x40000 decoded 1.6 GB before it was refused (an adversarial run), and 16-bit
    // RGBA takes 8 bytes a pixel (1.4 GB under the pixel limit, per decoding thread)
    let decoder = reader.into_decoder().map_err(png)?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    check_dims(w as usize, h as usize, path)?;
    let bytes = image::ImageDecoder::total_bytes(&decoder);
    if bytes > MAX_DECODE_BYTES {
        return Err(DataError::decode(
            path,
            format!(
                "PNG of {w}x{h} {:?} takes {bytes} bytes decoded, more than the {MAX_DECODE_BYTES}-byte limit",
                image::ImageDecoder::color_type(&decoder)
            ),
        ));
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(png)?;
    let rgb = img.into_rgb8();
    Ok(RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}
