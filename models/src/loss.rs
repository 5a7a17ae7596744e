//! The losses of MEAL V2 (szq0214/MEAL-V2, loss.py and train.py), numerically stable.

use candle_core::{Tensor, D};

use crate::error::Result;

/// Soft-target cross-entropy `mean_n( -sum_c p[n, c] * log_softmax(logits)[n, c] )`
/// (MEAL V2's KD loss; equals KL(p || q) plus the constant entropy of p).
pub fn soft_cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((target.mul(&logp)?.sum(D::Minus1)?.mean_all()? * -1.0)?)
}

/// `BCEWithLogits`, mean over all elements, as `relu(x) - x t + log1p(exp(-|x|))`:
/// finite for any finite logit (candle's sigmoid-then-log form gives NaN on saturation).
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let relu = logits.relu()?;
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((relu - logits.mul(target)?)?
        .add(&softplus_neg_abs)?
        .mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bce_matches_the_formula_and_stays_finite() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[-200f32, 0.0], [3.0, 200.0]], &dev).unwrap();
        let t = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let v = bce_with_logits(&x, &t).unwrap().to_scalar::<f32>().unwrap();
        // -log(sigmoid(-200)) = 200 (+ ~0), -log(1 - sigmoid(0)) = ln 2,
        // -log(1 - sigmoid(3)) = 3 + ln(1 + e^-3), -log(sigmoid(200)) ~ 0
        let want = (200.0 + std::f32::consts::LN_2 + 3.0 + (1.0 + (-3f32).exp()).ln() + 0.0) / 4.0;
        assert!((v - want).abs() < 1e-4, "{v} vs {want}");
    }

    #[test]
    fn soft_ce_is_kl_plus_entropy() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, -1.0, 5.0]], &dev).unwrap();
        let p = Tensor::new(&[[0.2f32, 0.3, 0.5], [0.9, 0.05, 0.05]], &dev).unwrap();
        let v = soft_cross_entropy(&logits, &p)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let rows = [[1f32, 2.0, 3.0], [0.0, -1.0, 5.0]];
        let ps = [[0.2f32, 0.3, 0.5], [0.9, 0.05, 0.05]];
        let mut want = 0.0;
        for (r, pr) in rows.iter().zip(&ps) {
            let lse = r.iter().map(|v| v.exp()).sum::<f32>().ln();
            want -= pr.iter().zip(r).map(|(p, l)| p * (l - lse)).sum::<f32>();
        }
        want /= 2.0;
        assert!((v - want).abs() < 1e-5, "{v} vs {want}");
    }
}
