//! Named parameters and buffers in timm's state-dict order, with seeded initialisation.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::error::Result;

/// Whether a tensor is trained or only carried (BatchNorm running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A trainable parameter.
    Param,
    /// A buffer: saved and loaded, never given to the optimizer.
    Buffer,
}

/// One named tensor of a model.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The timm state-dict name.
    pub name: String,
    /// The tensor (shared with the module that uses it).
    pub var: Var,
    /// Parameter or buffer.
    pub kind: Kind,
    /// The shape (also known in dry runs, whose tensors are placeholders).
    pub shape: Vec<usize>,
}

/// The bytes `entries`' tensors hold (a model's weights and buffers, as saved).
pub fn bytes_of(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| (e.var.elem_count() * e.var.dtype().size_in_bytes()) as u64)
        .sum()
}

/// How a new tensor is initialised.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// All `v`.
    Const(f64),
    /// Normal(0, std).
    Normal(f64),
    /// Uniform(-a, a).
    Uniform(f64),
}

/// Builds a model's tensors in order, drawing initial values from a seeded ChaCha8
/// stream, so the same seed gives the same fresh model on any machine.
pub struct ParamBuilder {
    device: Device,
    rng: ChaCha8Rng,
    prefix: Vec<String>,
    entries: Vec<Entry>,
    dry: bool,
    dtype: DType,
    conv_precision: crate::ops::Precision,
}

impl ParamBuilder {
    /// A builder on `device` with initialisation seed `seed`.
    pub fn new(device: &Device, seed: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(b"mealinit");
        ParamBuilder {
            device: device.clone(),
            rng: ChaCha8Rng::from_seed(key),
            prefix: Vec::new(),
            entries: Vec::new(),
            dry: false,
            dtype: DType::F32,
            conv_precision: Default::default(),
        }
    }

    /// The same builder making its float tensors in `dtype` (initial values are drawn
    /// in f32 and rounded, so the stream does not depend on the dtype).
    pub fn with_dtype(self, dtype: DType) -> Self {
        ParamBuilder { dtype, ..self }
    }

    /// The same builder whose convolutions multiply in `p` on the CPU (bf16 products
    /// over f32 weights: the CPU's bf16 teachers).
    pub fn with_conv_precision(self, conv_precision: crate::ops::Precision) -> Self {
        ParamBuilder {
            conv_precision,
            ..self
        }
    }

    /// The precision the convolutions built from here multiply in.
    pub fn conv_precision(&self) -> crate::ops::Precision {
        self.conv_precision
    }

    /// A builder that records names and shapes only; its tensors are 1-element
    /// placeholders (for checking a full-size architecture without its memory).
    pub fn dry(device: &Device) -> Self {
        ParamBuilder {
            dry: true,
            ..Self::new(device, 0)
        }
    }

    /// The device tensors are made on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Run `f` with `name` pushed on the name prefix (`layer1` then `0` gives `layer1.0.`).
    pub fn scope<T>(
        &mut self,
        name: impl ToString,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        self.prefix.push(name.to_string());
        let r = f(self);
        self.prefix.pop();
        r
    }

    fn full_name(&self, name: &str) -> String {
        let mut s = self.prefix.join(".");
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(name);
        s
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A new f32 tensor `name` of `shape`, initialised by `init`.
    pub fn tensor(&mut self, name: &str, shape: &[usize], init: Init, kind: Kind) -> Result<Var> {
        if self.dry {
            let var = Var::from_tensor(&Tensor::zeros(1, DType::F32, &self.device)?)?;
            self.entries.push(Entry {
                name: self.full_name(name),
                var: var.clone(),
                kind,
                shape: shape.to_vec(),
            });
            return Ok(var);
        }
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform(a) => (0..n)
                .map(|_| ((self.uniform() * 2.0 - 1.0) * a) as f32)
                .collect(),
            Init::Normal(std) => (0..n)
                .map(|_| {
                    // Box-Muller
                    let u1 = self.uniform().max(f64::MIN_POSITIVE);
                    let u2 = self.uniform();
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
                })
                .collect(),
        };
        let t = Tensor::from_vec(data, shape, &self.device)?;
        let t = if self.dtype == DType::F32 {
            t
        } else {
            t.to_dtype(self.dtype)?
        };
        let var = Var::from_tensor(&t)?;
        self.entries.push(Entry {
            name: self.full_name(name),
            var: var.clone(),
            kind,
            shape: shape.to_vec(),
        });
        Ok(var)
    }

    /// A new scalar i64 buffer (BatchNorm's `num_batches_tracked`).
    pub fn counter(&mut self, name: &str) -> Result<Var> {
        let var = Var::from_tensor(&Tensor::zeros((), DType::I64, &self.device)?)?;
        self.entries.push(Entry {
            name: self.full_name(name),
            var: var.clone(),
            kind: Kind::Buffer,
            shape: Vec::new(),
        });
        Ok(var)
    }

    /// All tensors made, in creation order (timm's state-dict order).
    pub fn finish(self) -> Vec<Entry> {
        self.entries
    }
}
