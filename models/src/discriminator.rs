//! MEAL V2's discriminator (szq0214/MEAL-V2, models/discriminator.py): dense layers on
//! the class-probability vector, `C -> 125 -> ReLU -> 15 -> ReLU -> 2 (-> ReLU)`. The
//! upstream code writes them as 1x1 convs and keeps the final ReLU; plain linear layers
//! are equivalent. Names `fc1`, `fc2`, `fc3`.

use candle_core::{Device, Tensor};

use super::layers::Linear;
use super::params::{Entry, ParamBuilder};
use crate::error::Result;

/// Hidden widths of MEAL V2's discriminator.
pub const DISC_HIDDEN: [usize; 2] = [125, 15];

/// The discriminator.
pub struct Discriminator {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    final_relu: bool,
    entries: Vec<Entry>,
}

impl Discriminator {
    /// A discriminator on `num_classes` inputs; `final_relu` keeps upstream's last ReLU.
    pub fn new(num_classes: usize, final_relu: bool, device: &Device, seed: u64) -> Result<Self> {
        let mut pb = ParamBuilder::new(device, seed);
        let fc1 = Linear::new(&mut pb, "fc1", num_classes, DISC_HIDDEN[0])?;
        let fc2 = Linear::new(&mut pb, "fc2", DISC_HIDDEN[0], DISC_HIDDEN[1])?;
        let fc3 = Linear::new(&mut pb, "fc3", DISC_HIDDEN[1], 2)?;
        Ok(Discriminator {
            fc1,
            fc2,
            fc3,
            final_relu,
            entries: pb.finish(),
        })
    }

    /// `[N, C]` to `[N, 2]` logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x, true)?.relu()?;
        let h = self.fc2.forward(&h, true)?.relu()?;
        let y = self.fc3.forward(&h, true)?;
        Ok(if self.final_relu { y.relu()? } else { y })
    }

    /// Its tensors, for saving and the optimizer.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl candle_core::Module for Discriminator {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Discriminator::forward(self, xs).map_err(candle_core::Error::wrap)
    }
}
