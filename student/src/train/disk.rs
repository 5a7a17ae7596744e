//! What a run's saves take on disk: the check before the first step, and what a
//! failed write is told with.

use anyhow::{bail, Result};
use meal_models::params::bytes_of;

use super::run::Run;
use super::{CHECKPOINT, STUDENT_FILE};

/// Free space a run's saves need: a checkpoint of `ckpt` bytes and the student's
/// `student` bytes of weights, each written beside its last copy until whole (one after
/// the other: the peak is two of one and one of the other), less the copies a resumed
/// run holds already (`held`).
fn saves_need(ckpt: u64, student: u64, ckpt_held: bool, student_held: bool) -> u64 {
    let held = |yes: bool, n: u64| if yes { n } else { 0 };
    (2 * ckpt + student)
        .max(ckpt + 2 * student)
        .saturating_sub(held(ckpt_held, ckpt))
        .saturating_sub(held(student_held, student))
}

/// Whether `a` and `b` lie on one file system (a device's free space is both's); where
/// either cannot be read, taken as one (the check is then the run directory's, as
/// before).
fn same_device(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => true,
    }
}

/// Bytes as megabytes with one decimal, rounded by `round`: a need up and free space
/// down (whole megabytes rounded both up read "takes 3 MB and 3 MB are free").
fn mb(bytes: u64, round: fn(f64) -> f64) -> f64 {
    round(bytes as f64 / 1e5) / 10.0
}

impl Run {
    /// `e`, a failed write into the run directory, with what a checkpoint takes and
    /// what is free there when that is short (a full disk is the usual cause; the last
    /// checkpoint stays until the new one is written whole).
    pub(super) fn disk_hint(&self, e: anyhow::Error) -> anyhow::Error {
        let need = self.checkpoint_bytes();
        // --resume only where there is a checkpoint to resume (a first one that failed
        // leaves none, and its run directory removed)
        let then = match self.s.out.join(CHECKPOINT).join("state.json").exists() {
            true => "then rerun with --resume",
            false => "then rerun",
        };
        match meal_cli::free_bytes(&self.s.out) {
            // (a failed write's partial copy is removed: what is free now is what the
            // next one may take, and it needs one checkpoint's worth, the last one kept)
            Some(free) if free < need + need / 8 => e.context(format!(
                "a checkpoint takes about {} MB, written beside the last one until it is \
                 whole ({} MB in all), and {} MB are free where --out {} is: free some space, \
                 {then}",
                mb(need, f64::ceil),
                mb(2 * need, f64::ceil),
                mb(free, f64::floor),
                self.s.out.display()
            )),
            // (another failure: what is kept and how to go on)
            _ if then.ends_with("--resume") => {
                e.context("the last checkpoint is kept: fix the cause, then rerun with --resume")
            }
            _ => e,
        }
    }

    /// Refuses a run whose saves cannot fit where `--out` is, before its first step
    /// (a full disk was found at the first epoch's end, which was then lost): each
    /// checkpoint is written beside the last until it is whole, and so are the
    /// student's weights at the top; what a resumed run has written already is there.
    pub(super) fn check_disk(&self) -> Result<()> {
        let student = bytes_of(self.student.entries());
        let (ckpt, out) = (self.checkpoint_bytes(), &self.s.out);
        let ck = super::checkpoint::checkpoint_dir(out);
        let (ck_held, student_held) = (ck.exists(), out.join(STUDENT_FILE).exists());
        // a checkpoint linked to another disk is saved there: each disk needs room for
        // its own saves only
        let apart = ck.parent().filter(|d| !same_device(d, out));
        if let Some(disk) = apart {
            let need = saves_need(ckpt, 0, ck_held, false);
            if let Some(free) = meal_cli::free_bytes(disk).filter(|&f| f < need) {
                bail!(
                    "{}: {} MB free where --out's {CHECKPOINT} link leads, and the run's \
                     checkpoints need {} MB there (about {} MB each, written beside the last \
                     until it is whole): free some space, or link it elsewhere",
                    disk.display(),
                    mb(free, f64::floor),
                    mb(need, f64::ceil),
                    mb(ckpt, f64::ceil),
                );
            }
        }
        let need = match apart {
            Some(_) => saves_need(0, student, false, student_held),
            None => saves_need(ckpt, student, ck_held, student_held),
        };
        match meal_cli::free_bytes(out) {
            Some(free) if free < need => {
                bail!(
                    "--out {}: {} MB free, and the run's saves need {} MB there (a checkpoint \
                     of about {} MB written beside the last until it is whole, then the \
                     student's {} MB weights likewise): free some space or choose another \
                     directory",
                    out.display(),
                    mb(free, f64::floor),
                    mb(need, f64::ceil),
                    mb(ckpt, f64::ceil),
                    mb(student, f64::ceil)
                )
            }
            _ => Ok(()),
        }
    }

    /// About what a checkpoint takes: the student's and the discriminator's tensors and
    /// a momentum buffer the size of each.
    fn checkpoint_bytes(&self) -> u64 {
        let disc = self.disc.as_ref().map_or(0, |d| bytes_of(d.entries()));
        2 * (bytes_of(self.student.entries()) + disc)
    }
}

#[cfg(test)]
mod tests {
    use super::saves_need;

    #[test]
    fn saves_need_room_for_two_copies_less_what_is_there() {
        // a fresh run: its second checkpoint beside the first, then new weights beside
        // old (the old checkpoint gone by then)
        assert_eq!(saves_need(300, 100, false, false), 700);
        // a resume: the copies on disk count
        assert_eq!(saves_need(300, 100, true, true), 300);
        assert_eq!(saves_need(300, 100, true, false), 400);
        // weights larger than their checkpoint's share (no momentum): the other peak
        assert_eq!(saves_need(100, 100, false, false), 300);
    }
}
