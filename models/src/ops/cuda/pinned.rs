//! Copies between the host and a GPU through page-locked (pinned) buffers, as PyTorch's
//! `DataLoader(pin_memory=True)` with `.to(device, non_blocking=True)`.
//!
//! A copy from or to pageable memory may make the host wait until the stream has
//! finished the work queued before it (CUDA Runtime API, "API synchronization
//! behavior"). With precompute's two batches in flight that undoes the overlap:
//! - **up** ([`upload_u8`]): queuing batch n+1's crops would wait for batch n's kernels;
//! - **down** ([`readback_f32`]): read back after batch n+1 was queued, batch n's labels
//!   would come after n+1's kernels on candle's one stream, so the host would wait for
//!   n+1 too and the GPU would then idle while the host writes n and queues n+2. The
//!   read-back is instead queued right behind batch n's own kernels, into a pinned
//!   buffer, and waited for on its event.
//!
//! Each thread keeps pinned buffers per device, direction and size, each with its own
//! event recorded behind the last copy that used it: cudarc records a pinned slice's
//! event only when it tracks events across streams, which it does not here. The events
//! block the waiting thread instead of spinning a core the loader needs.
//!
//! candle queues work on the calling thread's per-thread stream (`per_thread_stream`),
//! so a copy is ordered with the kernels queued from the same thread: an uploaded
//! tensor is read, and a read-back's source tensor dropped, on the thread that queued
//! the copy (precompute's device workers and the student each run on one thread).
//! `MEAL_CUDA_PINNED=0` copies through pageable memory instead, as candle's
//! `Tensor::from_slice` and `to_vec1` do; a pinned allocation that fails does the same,
//! with one warning.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda_backend::cudarc::driver::{
    CudaEvent, CudaStream, DeviceRepr, PinnedHostSlice,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{Device, Shape, Storage, Tensor};

/// Pinned buffers per (device, size): a batch's copy may still be queued behind up to
/// two batches of work when the next batch is written.
const RING: usize = 4;
/// Rings kept per thread: one size per crop size of the ensemble, plus the last,
/// shorter batch of each; the oldest ring is dropped beyond this.
const RINGS: usize = 8;

/// One pinned buffer of `T` and the event recorded behind the last copy that used it:
/// the buffers of both directions.
struct Slot<T> {
    host: PinnedHostSlice<T>,
    done: CudaEvent,
}

impl<T: DeviceRepr> Slot<T> {
    /// A buffer of `n` values for `stream`'s device; `None` (pinned copies then off for
    /// the process, with one warning) where pinned memory cannot be had.
    fn new(stream: &CudaStream, n: usize) -> candle_core::Result<Option<Self>> {
        let ctx = stream.context();
        // SAFETY: each use writes the buffer whole (the host before an upload, the copy
        // before a read-back's wait) before anything reads it
        let host = match unsafe { ctx.alloc_pinned_with_flags::<T>(n, 0) } {
            Ok(h) => h,
            Err(e) => {
                pinned_failed(&e);
                return Ok(None);
            }
        };
        let done = ctx.new_event(Some(BLOCKING)).w()?;
        Ok(Some(Slot { host, done }))
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        // the buffer is freed after this: its last copy must be done with it
        let _ = self.done.synchronize();
    }
}

struct Ring {
    dev: DeviceId,
    len: usize,
    next: usize,
    slots: Vec<Slot<u8>>,
}

thread_local! {
    static RINGS_OF_THREAD: RefCell<Vec<Ring>> = const { RefCell::new(Vec::new()) };
}

/// Whether crops are copied through pinned buffers (default) or from pageable memory
/// (`MEAL_CUDA_PINNED=0`, or after a pinned allocation failed).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::switches::switch("MEAL_CUDA_PINNED", true))
        && !FAILED.load(Ordering::Relaxed)
}

static FAILED: AtomicBool = AtomicBool::new(false);

/// The events' flag: a wait blocks the thread (as cudarc's own pinned buffers' events)
/// rather than spinning.
const BLOCKING: CUevent_flags = CUevent_flags::CU_EVENT_BLOCKING_SYNC;

/// Records `done` behind the copy just queued on `stream`. Should that fail, the stream
/// is drained first, so that the buffer (reused or freed next) is no longer in a copy.
fn recorded(done: &CudaEvent, stream: &CudaStream) -> candle_core::Result<()> {
    if let Err(e) = done.record(stream) {
        let _ = stream.synchronize();
        return Err(e).w();
    }
    Ok(())
}

/// Turns pinned copies off for the process after an allocation failed, with one warning.
fn pinned_failed(e: &dyn std::fmt::Display) {
    if !FAILED.swap(true, Ordering::Relaxed) {
        tracing::warn!("pinned host memory unavailable ({e}): copies go through pageable memory");
    }
}

/// `v` as a u8 tensor of `shape` on `dev`, copied through a pinned buffer: the copy is
/// queued on candle's stream (ordered before the kernels that read it) and this returns
/// without waiting for the GPU, unless the buffer's previous copy is still queued.
pub(crate) fn upload_u8(v: &[u8], shape: Shape, dev: &CudaDevice) -> candle_core::Result<Tensor> {
    if v.is_empty() || !enabled() {
        return Tensor::from_slice(v, shape, &Device::Cuda(dev.clone()));
    }
    // from_storage does not check the shape, and kernels trust it
    if shape.elem_count() != v.len() {
        candle_core::bail!(
            "upload: {} bytes for a tensor of shape {shape:?} ({} elements)",
            v.len(),
            shape.elem_count()
        );
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
            match Slot::new(&stream, v.len())? {
                Some(slot) => ring.slots.push(slot),
                None => return Ok(None),
            }
        }
        let slot = &mut ring.slots[ring.next];
        ring.next = (ring.next + 1) % RING;
        // the copy that last read this buffer has finished (an unrecorded event
        // returns at once)
        slot.done.synchronize().w()?;
        slot.host.as_mut_slice().w()?.copy_from_slice(v);
        // SAFETY: written whole by the copy below
        let mut dst = unsafe { super::alloc_written::<u8>(dev, v.len())? };
        stream.memcpy_htod(&slot.host, &mut dst).w()?;
        recorded(&slot.done, &stream)?;
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

/// Free read-back buffers kept per thread (those of finished read-backs).
const READ_POOL: usize = 16;

thread_local! {
    // oldest first, each with the device it was made for
    static READ_SLOTS: RefCell<Vec<(DeviceId, Slot<f32>)>> = const { RefCell::new(Vec::new()) };
}

/// A tensor's values on their way to the host ([`readback_f32`]).
pub(crate) struct Pending {
    dev: DeviceId,
    slot: Slot<f32>,
}

impl Pending {
    /// Waits for the copy (the device work queued before it included) and returns the
    /// values; the buffer goes back to this thread's pool.
    pub(crate) fn wait(self) -> candle_core::Result<Vec<f32>> {
        let Pending { dev, slot } = self;
        slot.done.synchronize().w()?;
        let v = slot.host.as_slice().w()?.to_vec();
        READ_SLOTS.with(|p| {
            let mut p = p.borrow_mut();
            // the oldest goes first: buffers of a size that no longer comes (a shard's
            // shorter last batch) must not crowd out the ones in use
            if p.len() >= READ_POOL {
                p.remove(0);
            }
            p.push((dev, slot));
        });
        Ok(v)
    }
}

/// Queues the copy of contiguous f32 `t` (on a GPU) into a pinned buffer, right behind
/// the work queued so far on its stream, without waiting; [`Pending::wait`] returns the
/// values. `None` where this does not apply (not on a GPU, not f32, empty,
/// `MEAL_CUDA_PINNED=0`, or no pinned memory): the caller reads the tensor itself.
pub(crate) fn readback_f32(t: &Tensor) -> candle_core::Result<Option<Pending>> {
    let Device::Cuda(dev) = t.device() else {
        return Ok(None);
    };
    let n = t.elem_count();
    if n == 0 || t.dtype() != candle_core::DType::F32 || !enabled() {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Ok(None);
    };
    if layout.contiguous_offsets().is_none() {
        return Ok(None);
    }
    let src = super::view_of::<f32>(cs, layout)?;
    let pooled = READ_SLOTS.with(|p| {
        let mut p = p.borrow_mut();
        let at = p
            .iter()
            .position(|(d, s)| *d == dev.id() && s.host.len() == n);
        // removed in place, so the rest stay oldest first
        at.map(|i| p.remove(i).1)
    });
    let stream = dev.cuda_stream();
    let mut slot = match pooled {
        Some(s) => s,
        None => match Slot::new(&stream, n)? {
            Some(s) => s,
            None => return Ok(None),
        },
    };
    stream.memcpy_dtoh(&src, &mut slot.host).w()?;
    recorded(&slot.done, &stream)?;
    Ok(Some(Pending {
        dev: dev.id(),
        slot,
    }))
}
