//! SGD against `torch.optim.SGD` trajectories (fixtures/make_sgd_fixture.py): momentum,
//! Nesterov, dampening, weight decay in one group only, per-group rates scaled per step,
//! and a save/restore of the momentum buffers in the middle of the run.

use candle_core::{Device, Tensor, Var};
use meal_models::optim::{ParamGroup, Sgd, SgdConfig};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn fixture() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sgd_trajectory.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn setup(fx: &Value, cfg: SgdConfig) -> (Var, Var, Sgd) {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::from_vec(floats(&fx["w0"]), (3, 4), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::from_vec(floats(&fx["b0"]), 4, &dev).unwrap()).unwrap();
    let groups = vec![
        ParamGroup {
            name: "w".into(),
            lr: 0.1,
            weight_decay: 0.01,
            params: vec![("w".into(), w.clone())],
        },
        ParamGroup {
            name: "b".into(),
            lr: 0.05,
            weight_decay: 0.0,
            params: vec![("b".into(), b.clone())],
        },
    ];
    (w, b, Sgd::new(groups, cfg).unwrap())
}

fn grads(w: &Var, b: &Var, g: &Value) -> candle_core::backprop::GradStore {
    let dev = Device::Cpu;
    let mut store = (w.as_tensor().sum_all().unwrap() + b.as_tensor().sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap();
    store.insert(
        w.as_tensor(),
        Tensor::from_vec(floats(&g["w"]), (3, 4), &dev).unwrap(),
    );
    store.insert(
        b.as_tensor(),
        Tensor::from_vec(floats(&g["b"]), 4, &dev).unwrap(),
    );
    store
}

fn max_diff(t: &Tensor, want: &[f32]) -> f32 {
    let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sgd_follows_torch_trajectories() {
    let fx = fixture();
    let scales: Vec<f64> = fx["scales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let kw = &case["kw"];
        let cfg = SgdConfig {
            momentum: kw["momentum"].as_f64().unwrap(),
            dampening: kw.get("dampening").and_then(Value::as_f64).unwrap_or(0.0),
            nesterov: kw.get("nesterov").and_then(Value::as_bool).unwrap_or(false),
        };
        let (mut w, mut b, mut opt) = setup(&fx, cfg);
        let traj = case["traj"].as_array().unwrap();
        for (k, (g, want)) in fx["grads"].as_array().unwrap().iter().zip(traj).enumerate() {
            if k == 2 {
                // checkpoint and restore into fresh objects: the run must not notice
                let state = dir.path().join("sgd.safetensors");
                opt.save_state(&state).unwrap();
                let (w2, b2, mut opt2) = setup(&fx, cfg);
                w2.set(w.as_tensor()).unwrap();
                b2.set(b.as_tensor()).unwrap();
                opt2.load_state(&state).unwrap();
                (w, b, opt) = (w2, b2, opt2);
            }
            opt.step(&grads(&w, &b, g), scales[k]).unwrap();
            let dw = max_diff(w.as_tensor(), &floats(&want["w"]));
            let db = max_diff(b.as_tensor(), &floats(&want["b"]));
            assert!(
                dw < 1e-5 && db < 1e-5,
                "{} step {k}: weight off by {dw}, bias by {db}",
                case["name"]
            );
        }
    }
}

#[test]
fn bad_settings_are_refused() {
    let dev = Device::Cpu;
    let v = Var::from_tensor(&Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap()).unwrap();
    let g = |lr| ParamGroup {
        name: "g".into(),
        lr,
        weight_decay: 0.0,
        params: vec![("p".into(), v.clone())],
    };
    assert!(Sgd::new(vec![g(-1.0)], SgdConfig::default()).is_err());
    assert!(Sgd::new(vec![g(0.1), g(0.1)], SgdConfig::default()).is_err());
    let nesterov = SgdConfig {
        momentum: 0.0,
        dampening: 0.0,
        nesterov: true,
    };
    assert!(Sgd::new(vec![g(0.1)], nesterov).is_err());
}
