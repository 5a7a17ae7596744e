//! The loader's peak memory does not grow with the dataset: a counting allocator
//! measures the peak of live heap bytes while loading 160 and 800 images.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use meal_data::{
    epoch_order, BadFilePolicy, CropMode, CropSampler, CropSpec, Filter, Loader, LoaderConfig,
    Normalize, PoolCrops, RrcParams,
};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Peak live bytes above the level before the loader started, over a full epoch.
fn loader_peak(per_class: u32) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), per_class);
    let order = epoch_order(ds.len(), 1, 0, true);
    let sampler = CropSampler::new(0, RrcParams::default());
    let cfg = LoaderConfig {
        images_per_batch: 8,
        spec: CropSpec::new(64, Filter::Bilinear, Normalize::default()).unwrap(),
        extra_specs: Vec::new(),
        crops: CropMode::Plan(Arc::new(PoolCrops::pass(sampler, 4, 4, 0).unwrap())),
        prefetch: 2,
        threads: 2,
        policy: BadFilePolicy::Fail,
        drop_last: false,
        pixels: meal_data::PixelFormat::Normalized,
    };
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut rows = 0;
    for b in Loader::new(ds.clone(), order, cfg).unwrap() {
        let b = b.unwrap();
        rows += b.len();
        // a slow consumer lets the prefetch queue fill up
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    assert_eq!(rows, ds.len() * 4);
    (PEAK.load(Ordering::Relaxed) - base, ds.len())
}

#[test]
fn peak_memory_is_flat_in_dataset_size() {
    let (small, n_small) = loader_peak(16);
    let (large, n_large) = loader_peak(80);
    assert_eq!((n_small, n_large), (160, 800));
    let batch_bytes = 8 * 4 * 3 * 64 * 64 * 4;
    eprintln!("loader peak: {small} B for {n_small} images, {large} B for {n_large} ({batch_bytes} B a batch)");
    // In flight: the batch being built, `prefetch` (2) queued, one held by the consumer;
    // plus the per-epoch order (4 B an image).
    for (peak, n) in [(small, n_small), (large, n_large)] {
        assert!(
            peak <= 5 * batch_bytes,
            "{n} images: peak {peak} B exceeds 5 batches"
        );
    }
    // Whether the queue is full at the peak depends on timing (the slow consumer makes
    // it likely): allow two batches of difference, far below the 80 extra batches the
    // larger epoch produces.
    assert!(
        large <= small + 2 * batch_bytes + 16 * n_large,
        "peak grew with the dataset: {small} -> {large}"
    );
}
