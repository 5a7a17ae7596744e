//! The crop sampler against torchvision's RandomResizedCrop.get_params and
//! RandomHorizontalFlip, with the uniform draws injected (fixture made by
//! tests/fixtures/make_fixtures.py).

mod common;

use meal_data::{CropRecord, PixelBox, RrcParams, UniformSource};

struct Injected {
    values: Vec<f64>,
    pos: usize,
}

impl UniformSource for Injected {
    fn next_uniform(&mut self) -> f64 {
        let v = self.values[self.pos];
        self.pos += 1;
        v
    }
}

#[test]
fn matches_torchvision_on_injected_draws() {
    let fx = common::json("rrc_cases.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 500, "fixture too small");
    assert!(
        fx["n_fallback"].as_u64().unwrap() > 20,
        "fixture must exercise the fallback"
    );
    for (i, c) in cases.iter().enumerate() {
        let num = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("case {i}: {k}"));
        let pair = |k: &str| (c[k][0].as_f64().unwrap(), c[k][1].as_f64().unwrap());
        let (w, h) = (num("width") as u32, num("height") as u32);
        let values = c["uniforms_k53"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_u64().unwrap() as f64 / (1u64 << 53) as f64)
            .collect();
        let params = RrcParams::new(pair("scale"), pair("ratio")).unwrap();
        let mut src = Injected { values, pos: 0 };
        let b = params.sample_box(w, h, &mut src);
        let want = PixelBox {
            top: num("top") as u32,
            left: num("left") as u32,
            height: num("height_px") as u32,
            width: num("width_px") as u32,
        };
        assert_eq!(b, want, "case {i}: {w}x{h}");
        assert_eq!(src.pos as u64, num("draws_box"), "case {i}: draws consumed");
        // The flip draw comes next, as torchvision's RandomHorizontalFlip follows.
        src.pos = 0;
        let rec = params.sample(w, h, &mut src);
        assert_eq!(rec.flip, c["flip"].as_bool().unwrap(), "case {i}: flip");
        assert_eq!(src.pos as u64, num("draws_total"), "case {i}: total draws");
        assert_eq!(rec, CropRecord::from_pixels(want, rec.flip, w, h));
        assert_eq!(rec.to_pixels(w, h), want, "case {i}: normalised round trip");
    }
}
