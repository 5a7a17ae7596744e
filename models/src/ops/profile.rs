//! A poor man's profiler of our ops on CUDA (`MEAL_OP_PROFILE=1`): each op synchronises
//! its device before and after it runs and adds the wall time to a table by name, so a
//! GPU step's time splits into our ops and the rest (candle's ops, launches, copies)
//! where no GPU profiler is at hand (the device check has none). Off by default: the
//! synchronisations serialise host and device, so a profiled step is slower than a
//! plain one, and its table is for attribution, not for speed.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One op's share: its name, calls and wall time since the last [`take`].
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// What ran (`conv forward`, `batch-norm backward`, ...).
    pub op: &'static str,
    /// How many times.
    pub calls: u64,
    /// Wall time in all, device synchronised around each call.
    pub seconds: f64,
}

static TABLE: Mutex<Vec<OpTime>> = Mutex::new(Vec::new());

/// Whether `MEAL_OP_PROFILE=1` (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::switches::switch("MEAL_OP_PROFILE", false))
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn add(op: &'static str, dt: Duration) {
    add_to(&TABLE, op, dt)
}

fn add_to(table: &Mutex<Vec<OpTime>>, op: &'static str, dt: Duration) {
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    match t.iter_mut().find(|e| e.op == op) {
        Some(e) => {
            e.calls += 1;
            e.seconds += dt.as_secs_f64();
        }
        None => t.push(OpTime {
            op,
            calls: 1,
            seconds: dt.as_secs_f64(),
        }),
    }
}

/// The table since the last call (emptied), the slowest op first.
pub fn take() -> Vec<OpTime> {
    take_from(&TABLE)
}

fn take_from(table: &Mutex<Vec<OpTime>>) -> Vec<OpTime> {
    let mut t = std::mem::take(&mut *table.lock().unwrap_or_else(|e| e.into_inner()));
    t.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    t
}

/// `f`, timed as `op` with `s`'s device synchronised around it when profiling.
#[cfg(feature = "cuda")]
pub(crate) fn on_cuda<R>(
    op: &'static str,
    s: &candle_core::CudaStorage,
    f: impl FnOnce() -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    use candle_core::backend::BackendStorage;
    on_device(op, s.device(), f)
}

/// `f`, timed as `op` with `dev` synchronised around it when profiling.
#[cfg(feature = "cuda")]
pub(crate) fn on_device<R>(
    op: &'static str,
    dev: &candle_core::CudaDevice,
    f: impl FnOnce() -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    use candle_core::backend::BackendDevice;
    timed(op, || dev.synchronize(), f)
}

/// `f`, timed as `op` with `sync()` before and after it, when profiling; `f` alone
/// otherwise.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn timed<R, E>(
    op: &'static str,
    sync: impl Fn() -> Result<(), E>,
    f: impl FnOnce() -> Result<R, E>,
) -> Result<R, E> {
    if !enabled() {
        return f();
    }
    sync()?;
    let t = Instant::now();
    let r = f()?;
    sync()?;
    add(op, t.elapsed());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls add up by name; `take` sorts by time and empties the table.
    #[test]
    fn the_table_sums_by_name_and_empties() {
        // a table of its own (the global one may be filling from other tests' GPU ops)
        let table = Mutex::new(Vec::new());
        add_to(&table, "a", Duration::from_millis(2));
        add_to(&table, "b", Duration::from_millis(5));
        add_to(&table, "a", Duration::from_millis(4));
        let t = take_from(&table);
        assert_eq!(
            t.iter().map(|e| (e.op, e.calls)).collect::<Vec<_>>(),
            [("a", 2), ("b", 1)]
        );
        assert!((t[0].seconds - 0.006).abs() < 1e-9);
        assert!(take_from(&table).is_empty());
    }
}
