//! SGD with PyTorch's semantics (candle's has no momentum or weight decay) and the
//! learning-rate schedules MEAL V2 uses.
//!
//! `torch.optim.SGD.step` (torch/optim/sgd.py, `_single_tensor_sgd`), per parameter:
//! ```text
//! g = grad + weight_decay * p
//! buf = g                                   (first step)
//! buf = momentum * buf + (1 - dampening) g  (later steps)
//! g = g + momentum * buf  if nesterov  else  buf
//! p = p - lr * g
//! ```

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::ops::{sgd_fast, sgd_step, SgdStep};
use crate::{Entry, Kind};

/// Optimizer hyper-parameters shared by all groups.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Momentum factor (MEAL V2: 0.9).
    pub momentum: f64,
    /// Dampening of the momentum update (PyTorch default 0).
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }
    }
}

/// A parameter group: its own base learning rate and weight decay.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// Name for logs ("student", "student-no-decay", "disc").
    pub name: String,
    /// Base learning rate; the schedule scales it.
    pub lr: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// `(name, var)` pairs; names key the momentum buffers in checkpoints.
    pub params: Vec<(String, Var)>,
}

/// Split trainable entries into a decayed group and one without weight decay for
/// one-dimensional parameters - BatchNorm weights/biases and every bias (timm's
/// `param_groups_weight_decay`: `ndim <= 1` or a `.bias` name) - both at `lr`.
/// Names get `prefix`; buffers are left out.
pub fn split_decay(
    entries: &[Entry],
    prefix: &str,
    lr: f64,
    weight_decay: f64,
) -> (ParamGroup, ParamGroup) {
    let mut decay = Vec::new();
    let mut no_decay = Vec::new();
    for e in entries {
        if e.kind != Kind::Param {
            continue;
        }
        let p = (format!("{prefix}{}", e.name), e.var.clone());
        if e.shape.len() <= 1 || e.name.ends_with(".bias") {
            no_decay.push(p);
        } else {
            decay.push(p);
        }
    }
    (
        ParamGroup {
            name: format!("{prefix}decay"),
            lr,
            weight_decay,
            params: decay,
        },
        ParamGroup {
            name: format!("{prefix}no_decay"),
            lr,
            weight_decay: 0.0,
            params: no_decay,
        },
    )
}

/// SGD over parameter groups, with momentum buffers keyed by parameter name.
pub struct Sgd {
    config: SgdConfig,
    groups: Vec<ParamGroup>,
    bufs: HashMap<String, Tensor>,
}

impl Sgd {
    /// A new optimizer; fails on a negative rate/decay or a duplicated parameter name.
    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for g in &groups {
            if !(g.lr >= 0.0 && g.weight_decay >= 0.0) {
                return Err(ModelError::Config(format!(
                    "group {}: lr {} and weight decay {} must be >= 0",
                    g.name, g.lr, g.weight_decay
                )));
            }
            for (n, _) in &g.params {
                if !seen.insert(n.clone()) {
                    return Err(ModelError::Config(format!("parameter {n} in two groups")));
                }
            }
        }
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(ModelError::Config(
                "Nesterov momentum needs momentum > 0 and dampening 0 (as PyTorch)".into(),
            ));
        }
        Ok(Sgd {
            config,
            groups,
            bufs: HashMap::new(),
        })
    }

    /// The groups (base rates).
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// One step with the gradients in `grads`, each group at `base lr * scale`.
    /// Parameters without a gradient are left alone (as PyTorch's `p.grad is None`).
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, scale: f64) -> Result<()> {
        let SgdConfig {
            momentum,
            dampening,
            nesterov,
        } = self.config;
        for g in &self.groups {
            let lr = g.lr * scale;
            let step = SgdStep {
                lr: lr as f32,
                weight_decay: g.weight_decay as f32,
                momentum: momentum as f32,
                dampening: dampening as f32,
                nesterov,
            };
            for (name, var) in &g.params {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                // a buffer exists from the second momentum step on (or was loaded: used
                // only with momentum): then in place, one pass per tensor (ops/sgd.rs),
                // same arithmetic
                if let Some(buf) = self.bufs.get(name).filter(|_| momentum != 0.0) {
                    if sgd_fast(var.as_tensor(), grad, buf) {
                        sgd_step(var.as_tensor(), grad, buf, step)?;
                        continue;
                    }
                }
                let mut d = if g.weight_decay != 0.0 {
                    (grad + (var.as_tensor() * g.weight_decay)?)?
                } else {
                    grad.clone()
                };
                if momentum != 0.0 {
                    let buf = match self.bufs.get(name) {
                        // a compact copy: `copy()` would clone all of a view's storage
                        None => d.force_contiguous()?,
                        Some(b) => ((b * momentum)? + (&d * (1.0 - dampening))?)?,
                    };
                    d = if nesterov {
                        (&d + (&buf * momentum)?)?
                    } else {
                        buf.clone()
                    };
                    self.bufs.insert(name.clone(), buf);
                }
                var.set(&(var.as_tensor() - (d * lr)?)?)?;
            }
        }
        Ok(())
    }

    /// The parameters without a momentum buffer, when the optimizer keeps them
    /// (momentum on): after a step, every parameter that had a gradient has one, so a
    /// checkpoint's state missing some was altered (a resume would go on without
    /// their momentum and no longer equal an uninterrupted run).
    pub fn params_without_state(&self) -> Vec<&str> {
        if self.config.momentum == 0.0 {
            return Vec::new();
        }
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(n, _)| n.as_str()))
            .filter(|n| !self.bufs.contains_key(*n))
            .collect()
    }

    /// The momentum buffers, by parameter name (for checkpoints).
    pub fn state(&self) -> &HashMap<String, Tensor> {
        &self.bufs
    }

    /// Save the momentum buffers as safetensors (keys are parameter names).
    pub fn save_state(&self, path: &Path) -> Result<()> {
        crate::weights::write_tensors(&self.bufs, path)
    }

    /// Restore buffers saved by [`Sgd::save_state`]; a buffer for an unknown parameter or
    /// of the wrong shape is an error naming the file.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let dev = self
            .groups
            .iter()
            .flat_map(|g| g.params.first())
            .map(|(_, v)| v.device().clone())
            .next()
            .unwrap_or(candle_core::Device::Cpu);
        let map = candle_core::safetensors::load(path, &dev).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let shapes: HashMap<&str, &Var> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(n, v)| (n.as_str(), v)))
            .collect();
        let mut bufs = HashMap::new();
        for (k, t) in map {
            match shapes.get(k.as_str()) {
                // (the dtype too: an f16 or i64 buffer passed on its shape and failed in
                // the middle of a step)
                Some(v) if v.dims() == t.dims() && v.dtype() == t.dtype() => {
                    // a NaN here would show as a diverged run steps later
                    let finite = crate::weights::all_finite(&t).map_err(|e| ModelError::Io {
                        path: path.to_path_buf(),
                        reason: format!("momentum buffer {k}: {e}"),
                    })?;
                    if !finite {
                        return Err(ModelError::Io {
                            path: path.to_path_buf(),
                            reason: format!("momentum buffer {k} holds non-finite values"),
                        });
                    }
                    bufs.insert(k, t);
                }
                _ => {
                    return Err(ModelError::Io {
                        path: path.to_path_buf(),
                        reason: format!(
                            "momentum buffer {k} ({:?}, {:?}) matches no parameter of that shape \
                             and dtype",
                            t.dims(),
                            t.dtype()
                        ),
                    })
                }
            }
        }
        self.bufs = bufs;
        Ok(())
    }
}

/// A learning-rate schedule, evaluated per epoch as PyTorch's `StepLR` /
/// `CosineAnnealingLR` stepped once per epoch: returns the factor on the base rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant,
    /// `gamma ^ floor(epoch / step)` (MEAL V2: step 100, gamma 0.1).
    Step {
        /// Epochs between decays.
        step: u32,
        /// Factor per decay.
        gamma: f64,
    },
    /// `0.5 (1 + cos(pi epoch / epochs))` (eta_min 0).
    Cosine {
        /// Total epochs.
        epochs: u32,
    },
}

impl LrSchedule {
    /// The factor for 0-based `epoch`.
    pub fn factor(&self, epoch: u32) -> f64 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Step { step, gamma } => gamma.powi((epoch / step.max(1)) as i32),
            LrSchedule::Cosine { epochs } => {
                let t = epoch.min(epochs) as f64 / epochs.max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_pytorch() {
        let s = LrSchedule::Step {
            step: 100,
            gamma: 0.1,
        };
        assert_eq!(s.factor(0), 1.0);
        assert_eq!(s.factor(99), 1.0);
        assert!((s.factor(100) - 0.1).abs() < 1e-15);
        assert!((s.factor(250) - 0.01).abs() < 1e-15);
        let c = LrSchedule::Cosine { epochs: 10 };
        assert_eq!(c.factor(0), 1.0);
        assert!((c.factor(5) - 0.5).abs() < 1e-12);
        assert!(c.factor(10).abs() < 1e-12);
    }
}
