//! Host-to-device copies of the loader's 8-bit crops through page-locked (pinned) buffers,
//! as PyTorch's `DataLoader(pin_memory=True)` with `.to(device, non_blocking=True)`.
//!
//! A copy from pageable memory may make the host wait until the stream has finished
//! the work queued before it, and then stage the bytes itself (CUDA Runtime API,
//! "API synchronization behavior"): with precompute's two batches in flight, queuing
//! batch n+1 would wait for batch n, and the GPU would sit idle while n+1's bytes
//! cross. From pinned memory the copy is queued like a kernel and returns at once.
//!
//! Each thread keeps, per device and copy size, a ring of [`RING`] pinned buffers used
//! in turn. A buffer is written again only after the copy that last read it has
//! finished (its own event, recorded behind that copy: cudarc records a pinned slice's
//! event only in multi-stream mode with event tracking, and candle runs one stream).
//! `MEAL_CUDA_PINNED=0` copies from pageable memory instead, as candle's
//! `Tensor::from_slice` does; a pinned allocation that fails does the same, with one
//! warning.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::cuda_backend::cudarc::driver::{CudaEvent, PinnedHostSlice};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{Device, Shape, Storage, Tensor};

/// Pinned buffers per (device, size): a batch's copy may still be queued behind up to
/// two batches of work when the next batch is written.
const RING: usize = 4;
/// Rings kept per thread: one size per crop size of the ensemble, plus the last,
/// shorter batch of each; the oldest ring is dropped beyond this.
const RINGS: usize = 8;

/// One pinned buffer and the event recorded behind the last copy that read it.
struct Slot {
    host: PinnedHostSlice<u8>,
    done: CudaEvent,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // the buffer is freed after this: its last copy must have read it
        let _ = self.done.synchronize();
    }
}

struct Ring {
    dev: DeviceId,
    len: usize,
    next: usize,
    slots: Vec<Slot>,
}

thread_local! {
    static RINGS_OF_THREAD: RefCell<Vec<Ring>> = const { RefCell::new(Vec::new()) };
}

/// Whether crops are copied through pinned buffers (default) or from pageable memory
/// (`MEAL_CUDA_PINNED=0`, or after a pinned allocation failed).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MEAL_CUDA_PINNED").map_or(true, |v| v.trim() != "0"))
        && !FAILED.load(Ordering::Relaxed)
}

static FAILED: AtomicBool = AtomicBool::new(false);

/// `v` as a u8 tensor of `shape` on `dev`, copied through a pinned buffer: the copy is
/// queued on candle's stream (ordered before the kernels that read it) and this returns
/// without waiting for the GPU, unless the buffer's previous copy is still queued.
pub(crate) fn upload_u8(v: &[u8], shape: Shape, dev: &CudaDevice) -> candle_core::Result<Tensor> {
    if v.is_empty() || !enabled() {
        return Tensor::from_slice(v, shape, &Device::Cuda(dev.clone()));
    }
    let copied = RINGS_OF_THREAD.with(|rings| -> candle_core::Result<Option<Tensor>> {
        let mut rings = rings.borrow_mut();
        let at = match rings
            .iter()
            .position(|r| r.dev == dev.id() && r.len == v.len())
        {
            Some(i) => i,
            None => {
                if rings.len() >= RINGS {
                    rings.remove(0);
                }
                rings.push(Ring {
                    dev: dev.id(),
                    len: v.len(),
                    next: 0,
                    slots: Vec::with_capacity(RING),
                });
                rings.len() - 1
            }
        };
        let ring = &mut rings[at];
        let stream = dev.cuda_stream();
        if ring.slots.len() <= ring.next {
            let ctx = stream.context();
            // SAFETY: the buffer is written whole below before any copy reads it
            let host = match unsafe { ctx.alloc_pinned_with_flags::<u8>(v.len(), 0) } {
                Ok(h) => h,
                Err(e) => {
                    if !FAILED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "pinned host memory unavailable ({e}): crops are copied from \
                             pageable memory"
                        );
                    }
                    return Ok(None);
                }
            };
            let done = ctx.new_event(None).w()?;
            ring.slots.push(Slot { host, done });
        }
        let slot = &mut ring.slots[ring.next];
        ring.next = (ring.next + 1) % RING;
        // the copy that last read this buffer has finished (an unrecorded event
        // returns at once)
        slot.done.synchronize().w()?;
        slot.host.as_mut_slice().w()?.copy_from_slice(v);
        // SAFETY: written whole by the copy below
        let mut dst = unsafe { dev.alloc::<u8>(v.len())? };
        stream.memcpy_htod(&slot.host, &mut dst).w()?;
        slot.done.record(&stream).w()?;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(dst, dev.clone()));
        Ok(Some(Tensor::from_storage(
            storage,
            shape.clone(),
            BackpropOp::none(),
            false,
        )))
    })?;
    match copied {
        Some(t) => Ok(t),
        None => Tensor::from_slice(v, shape, &Device::Cuda(dev.clone())),
    }
}
