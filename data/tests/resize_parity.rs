//! Replay and eval transform against torchvision's PIL backend on committed fixtures
//! (tests/fixtures/make_fixtures.py): F.resized_crop + hflip, Resize + CenterCrop, and
//! ToTensor + Normalize.

mod common;

use std::path::Path;

use meal_data::{CropRecord, CropSpec, Filter, Normalize, PixelBox, Replayer};

/// Normalisation that leaves `v / 255`, so outputs map back to the 8-bit levels.
const UNIT: Normalize = Normalize {
    mean: [0.0; 3],
    std: [1.0; 3],
};

fn to_hwc_u8(chw: &[f32], s: usize) -> Vec<u8> {
    let plane = s * s;
    let mut out = vec![0u8; plane * 3];
    for c in 0..3 {
        for i in 0..plane {
            out[i * 3 + c] = (chw[c * plane + i] * 255.0).round() as u8;
        }
    }
    out
}

#[test]
fn replay_and_eval_match_pil() {
    let fx = common::json("resize_cases.json");
    let src = common::image(fx["source"].as_str().unwrap());
    let mut r = Replayer::default();
    let (mut worst_mean, mut worst_max, mut exact) = (0f64, 0u8, 0usize);
    let cases = fx["cases"].as_array().unwrap();
    for c in cases {
        let file = c["file"].as_str().unwrap();
        let want = common::image(file);
        let size = c["size"].as_u64().unwrap() as u32;
        let filter: Filter = c["filter"].as_str().unwrap().parse().unwrap();
        let spec = CropSpec::new(size, filter, UNIT).unwrap();
        let mut out = vec![0f32; spec.len()];
        if c["kind"] == "crop" {
            let g = |k: &str| c[k].as_u64().unwrap() as u32;
            let b = PixelBox {
                top: g("top"),
                left: g("left"),
                height: g("height"),
                width: g("width"),
            };
            let rec =
                CropRecord::from_pixels(b, c["flip"].as_bool().unwrap(), src.width, src.height);
            r.replay(&src, &rec, &spec, &mut out, Path::new(file))
                .unwrap();
        } else {
            r.eval(&src, &spec, &mut out, Path::new(file)).unwrap();
        }
        assert_eq!((want.width, want.height), (size, size), "{file}");
        let got = to_hwc_u8(&out, size as usize);
        let (mean, max) = common::diff(&got, &want.data);
        if max == 0 {
            exact += 1;
        }
        worst_mean = worst_mean.max(mean);
        worst_max = worst_max.max(max);
        // Our resampler is PIL's arithmetic (Pillow <= 12, the fixtures' version): exact.
        assert_eq!(max, 0, "{file} ({c}): mean {mean:.4} levels, max {max}");
    }
    eprintln!(
        "resize parity: {} cases, {exact} bit-exact, worst mean {worst_mean:.4} levels, worst max {worst_max}",
        cases.len()
    );
}

/// The eval transform honours crop_pct: torchvision's `Resize(int(S / crop_pct))` +
/// `CenterCrop(S)` (fixtures/make_crop_pct_fixtures.py) at 0.95 (timm's resnet50), 0.9,
/// 1.0 and 0.5, bit for bit.
#[test]
fn eval_with_crop_pct_matches_torchvision() {
    let fx = common::json("eval_crop_pct.json");
    let src = common::image(fx["source"].as_str().unwrap());
    let mut r = Replayer::default();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    for c in cases {
        let file = c["file"].as_str().unwrap();
        let want = common::image(file);
        let size = c["size"].as_u64().unwrap() as u32;
        let filter: Filter = c["filter"].as_str().unwrap().parse().unwrap();
        let pct = c["crop_pct"].as_f64().unwrap();
        let spec = CropSpec::new(size, filter, UNIT)
            .unwrap()
            .with_crop_pct(pct)
            .unwrap();
        let mut out = vec![0f32; spec.len()];
        r.eval(&src, &spec, &mut out, Path::new(file)).unwrap();
        let (mean, max) = common::diff(&to_hwc_u8(&out, size as usize), &want.data);
        assert_eq!(max, 0, "{file} ({c}): mean {mean:.4} levels, max {max}");
    }
    assert!(CropSpec::new(16, Filter::Bilinear, UNIT)
        .unwrap()
        .with_crop_pct(0.0)
        .is_err());
    // a crop_pct of 1e-9 asked for a resize of 16e9 px a side (a capacity overflow)
    let e = CropSpec::new(16, Filter::Bilinear, UNIT)
        .unwrap()
        .with_crop_pct(1e-9)
        .unwrap_err();
    assert!(e.to_string().contains("crop_pct"), "{e}");
}

#[test]
fn normalised_tensor_matches_torchvision() {
    let src = common::image("src_rgb.png");
    let bytes = std::fs::read(common::fixtures().join("norm_5_7_40_30_16_bilinear.f32")).unwrap();
    let want: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let spec = CropSpec::new(16, Filter::Bilinear, Normalize::default()).unwrap();
    let rec = CropRecord::from_pixels(
        PixelBox {
            top: 5,
            left: 7,
            height: 40,
            width: 30,
        },
        false,
        src.width,
        src.height,
    );
    let mut out = vec![0f32; spec.len()];
    Replayer::default()
        .replay(&src, &rec, &spec, &mut out, Path::new("src_rgb.png"))
        .unwrap();
    assert_eq!(out.len(), want.len());
    // Same 8-bit levels and torchvision's f32 arithmetic: the same floats, bit for bit.
    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "element {i}: {a} vs {b}");
    }
}

#[test]
fn replay_geometry_on_a_gradient() {
    // R = column, G = row: a crop resized 1:1 must reproduce the box's coordinates, and
    // the flip must mirror them.
    let (w, h) = (200u32, 150u32);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            data.extend([x as u8, y as u8, 7]);
        }
    }
    let img = meal_data::RgbImage {
        width: w,
        height: h,
        data,
    };
    let spec = CropSpec::new(32, Filter::Bilinear, UNIT).unwrap();
    let mut r = Replayer::default();
    for flip in [false, true] {
        let b = PixelBox {
            top: 40,
            left: 100,
            height: 32,
            width: 32,
        };
        let rec = CropRecord::from_pixels(b, flip, w, h);
        let mut out = vec![0f32; spec.len()];
        r.replay(&img, &rec, &spec, &mut out, Path::new("gradient"))
            .unwrap();
        let px = |c: usize, y: usize, x: usize| (out[c * 1024 + y * 32 + x] * 255.0).round() as u32;
        for y in 0..32 {
            for x in 0..32 {
                let xs = if flip { 31 - x } else { x };
                assert_eq!(px(0, y, x), 100 + xs as u32, "R at ({y},{x}) flip={flip}");
                assert_eq!(px(1, y, x), 40 + y as u32, "G at ({y},{x})");
                assert_eq!(px(2, y, x), 7);
            }
        }
    }
    // A 2x downscale of a linear ramp stays linear: column 2k,2k+1 average.
    let b = PixelBox {
        top: 0,
        left: 0,
        height: 64,
        width: 64,
    };
    let rec = CropRecord::from_pixels(b, false, w, h);
    let mut out = vec![0f32; spec.len()];
    r.replay(&img, &rec, &spec, &mut out, Path::new("gradient"))
        .unwrap();
    for (x, v) in out[..32].iter().enumerate() {
        let v = v * 255.0; // row 0, R channel
        assert!((v - (2.0 * x as f32 + 0.5)).abs() <= 0.51, "x={x}: {v}");
    }
}
