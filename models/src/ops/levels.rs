//! The loader's 8-bit crops ([`meal_data::PixelFormat::Levels`]) normalised where the
//! network runs: `y = lut[c][x]` with meal-data's table ([`meal_data::Normalize::lut`]),
//! so the floats equal the loader's own normalised crops bit for bit, while the copy to
//! a GPU moves a quarter of the bytes. On CUDA one kernel (cuda/levels.rs); on the CPU
//! the same lookup.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use meal_data::Normalize;

use crate::error::Result;

/// The pixels per channel plane of `[B, 3, H, W]` crops (layout `l`), checking that
/// the table holds 3 x 256 values (`lut_len`): both forwards' shape check.
pub(super) fn plane(l: &Layout, lut_len: usize) -> candle_core::Result<usize> {
    if lut_len != 3 * 256 {
        candle_core::bail!("normalize_levels: a table of {lut_len} values, need 768");
    }
    match l.dims() {
        [_, 3, h, w] => Ok(h * w),
        d => candle_core::bail!("normalize_levels: expected [B, 3, H, W] u8, got {d:?}"),
    }
}

/// The lookup as a candle op over `(x: u8 [B, 3, H, W], lut: f32 [768])`.
struct Levels {
    out: DType,
}

impl candle_core::CustomOp2 for Levels {
    fn name(&self) -> &'static str {
        "meal-normalize-levels"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = match (s1, l1.contiguous_offsets()) {
            (CpuStorage::U8(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("normalize_levels: contiguous u8 input only"),
        };
        let lut = super::contiguous_f32(s2, l2)?;
        let hw = plane(l1, lut.len())?;
        let at = |i: usize, v: u8| lut[((i / hw.max(1)) % 3) * 256 + v as usize];
        let out = match self.out {
            DType::F32 => CpuStorage::F32(x.iter().enumerate().map(|(i, &v)| at(i, v)).collect()),
            DType::BF16 => CpuStorage::BF16(
                x.iter()
                    .enumerate()
                    .map(|(i, &v)| half::bf16::from_f32(at(i, v)))
                    .collect(),
            ),
            d => candle_core::bail!("normalize_levels: to {d:?} (f32 or bf16)"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::profile::on_cuda("8-bit input levels", s1, || {
            super::cuda::normalize_levels(self.out, (s1, l1), (s2, l2))
        })
    }
}

/// `norm`'s table (768 floats) on `dev`, uploaded once per thread, device and table: an
/// upload per batch from pageable memory may make the host wait for the work queued
/// before it (ops/cuda/pinned.rs), which precompute's two batches in flight avoid.
fn table(norm: &Normalize, dev: &candle_core::Device) -> Result<Tensor> {
    type Cached = (candle_core::Device, [u32; 6], Tensor);
    thread_local! {
        static TABLES: std::cell::RefCell<Vec<Cached>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let ([a, b, c], [d, e, f]) = (norm.mean, norm.std);
    let key = [a, b, c, d, e, f].map(f32::to_bits);
    if let Some(t) = TABLES.with(|c| {
        c.borrow()
            .iter()
            .find(|(d, k, _)| d.same_device(dev) && *k == key)
            .map(|(_, _, t)| t.clone())
    }) {
        return Ok(t);
    }
    let lut: Vec<f32> = norm.lut().iter().flatten().copied().collect();
    let t = Tensor::from_vec(lut, 3 * 256, dev)?;
    TABLES.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 8 {
            c.remove(0);
        }
        c.push((dev.clone(), key, t.clone()));
    });
    Ok(t)
}

/// `x` (u8 NCHW crops with 3 channels, on any device) normalised with `norm`'s table
/// into `dtype` on the same device: f32 or bf16 in one pass; other dtypes via f32.
pub fn normalize_levels(x: &Tensor, norm: &Normalize, dtype: DType) -> Result<Tensor> {
    let lut = table(norm, x.device())?;
    let out = match dtype {
        DType::F32 | DType::BF16 => dtype,
        _ => DType::F32,
    };
    let y = x.contiguous()?.apply_op2_no_bwd(&lut, &Levels { out })?;
    Ok(if y.dtype() == dtype {
        y
    } else {
        y.to_dtype(dtype)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn levels_through_the_table_equal_torchvision_normalisation() {
        // 2 crops of 3 x 2 x 3: every channel sees levels 0, 1, 128, 254, 255, 77
        let levels: Vec<u8> = (0..36)
            .map(|i| [0u8, 1, 128, 254, 255, 77][i % 6])
            .collect();
        let x = Tensor::from_vec(levels.clone(), (2, 3, 2, 3), &Device::Cpu).unwrap();
        // another table first: the tables kept per thread are told apart by their values
        let other = Normalize {
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        let o = normalize_levels(&x, &other, DType::F32).unwrap();
        let o = o.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(o[0], -2.0);
        let n = Normalize {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        let y = normalize_levels(&x, &n, DType::F32).unwrap();
        assert_eq!(y.dims(), &[2, 3, 2, 3]);
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (&v, &got)) in levels.iter().zip(&y).enumerate() {
            let c = (i / 6) % 3;
            // torchvision ToTensor then Normalize, per pixel in f32
            let want = (v as f32 / 255.0 - n.mean[c]) / n.std[c];
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "value {i} (level {v}, channel {c})"
            );
        }
        let b = normalize_levels(&x, &n, DType::BF16).unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        let b = b.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
        for (got, want) in b.iter().zip(&y) {
            assert_eq!(*got, half::bf16::from_f32(*want));
        }
        let h = normalize_levels(&x, &n, DType::F16).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        let e = normalize_levels(&x.reshape((2, 2, 3, 3)).unwrap(), &n, DType::F32).unwrap_err();
        assert!(e.to_string().contains("[B, 3, H, W]"), "{e}");
    }
}
