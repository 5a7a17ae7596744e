//! The ResNet builder against timm (fixtures by tests/fixtures/make_model_fixtures.py):
//! state-dict names and shapes of every preset; for small models covering every builder
//! path, eval logits, train-mode logits, running statistics after one train forward,
//! and gradients of the soft cross-entropy loss.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor, D};
use common::{case_config, fixtures, rel_err};
use meal_models::{read_state_dict, LoadOptions, ResNet};

const CASES: [&str; 4] = [
    "basic_plain",
    "bottleneck_deep_avgdown",
    "senet_like",
    "basic_tiered_se",
];

fn load_case(name: &str) -> (ResNet, HashMap<String, Tensor>) {
    let dev = Device::Cpu;
    let m = ResNet::new(&case_config(name), &dev, 0).unwrap();
    m.load_weights(
        &fixtures().join(format!("{name}.safetensors")),
        LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let io = read_state_dict(&fixtures().join(format!("{name}_io.safetensors")), &dev).unwrap();
    (m, io)
}

#[test]
fn presets_have_timm_names_and_shapes() {
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("presets.json")).unwrap())
            .unwrap();
    let presets = fx["presets"].as_object().unwrap();
    assert!(presets.len() >= 12);
    for (name, want) in presets {
        let config = meal_models::preset(name).unwrap_or_else(|e| panic!("{e}"));
        let got = ResNet::layout(&config.config).unwrap();
        let want: Vec<(String, Vec<usize>)> = want["state_dict"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let shape = e[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (e[0].as_str().unwrap().to_string(), shape)
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: tensor count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{name}");
        }
        let params: usize = got
            .iter()
            .filter(|(n, _)| !n.contains("running") && !n.ends_with("num_batches_tracked"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(
            params as u64,
            want_params(&presets[name]),
            "{name}: parameter count"
        );
    }
}

fn want_params(v: &serde_json::Value) -> u64 {
    v["params"].as_u64().unwrap()
}

#[test]
fn eval_logits_match_timm() {
    for name in CASES {
        let (m, io) = load_case(name);
        let y = m.forward_t(&io["x"], false).unwrap();
        let e = rel_err(&y, &io["eval_logits"]);
        assert!(e < 1e-4, "{name}: eval logits rel err {e}");
        // odd, unequal input sides (forward only)
        let odd = read_state_dict(
            &fixtures().join(format!("{name}_odd.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let y = m.forward_t(&odd["x"], false).unwrap();
        let e = rel_err(&y, &odd["eval_logits"]);
        assert!(e < 1e-4, "{name}: odd-size eval logits rel err {e}");
    }
}

#[test]
fn train_mode_logits_running_stats_and_gradients_match_timm() {
    for name in CASES {
        let (m, io) = load_case(name);
        let logits = m.forward_t(&io["x"], true).unwrap();
        let e = rel_err(&logits, &io["train_logits"]);
        assert!(e < 1e-4, "{name}: train logits rel err {e}");
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let loss = (io["p"].mul(&logp).unwrap().sum(1).unwrap().mean(0).unwrap() * -1.0).unwrap();
        let l = loss.to_scalar::<f32>().unwrap();
        let want = io["loss"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(
            (l - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{name}: loss {l} vs {want}"
        );
        let grads = loss.backward().unwrap();
        let mut checked = 0;
        for e in m.entries() {
            if let Some(after) = io.get(&format!("after.{}", e.name)) {
                let got = e.var.as_detached_tensor();
                if e.name.ends_with("num_batches_tracked") {
                    assert_eq!(
                        got.to_scalar::<i64>().unwrap(),
                        after.flatten_all().unwrap().to_vec1::<i64>().unwrap()[0],
                        "{}",
                        e.name
                    );
                } else {
                    let r = rel_err(&got, after);
                    assert!(
                        r < 1e-4,
                        "{name}: {} after one train forward: rel err {r}",
                        e.name
                    );
                }
                continue;
            }
            let want = &io[&format!("grad.{}", e.name)];
            let got = grads
                .get(e.var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {}", e.name));
            let r = rel_err(got, want);
            assert!(r < 1e-3, "{name}: grad {} rel err {r}", e.name);
            checked += 1;
        }
        assert!(checked > 10, "{name}: only {checked} gradients checked");
    }
}
