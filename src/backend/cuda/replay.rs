//! CUDA graphs: [`Backend::record`] and [`Backend::replay`] on the CUDA backend.
//!
//! Recording an executor's run takes three passes of the same calls:
//! 1. **Measuring**: the run itself, launched op by op as always (it also loads every kernel
//!    and grows the scratch arena to its size, which a capture could not do), noting the size
//!    of each host-to-device copy the ops make (the index tables some ops build on the host).
//! 2. **Capturing**: the calls again under stream capture. Nothing runs; the launches, cuBLAS
//!    calls, fills and copies become a CUDA graph. The ops' host copies come from a pinned
//!    buffer instead, one region per copy, so the graph's copy nodes read it when replayed.
//! 3. **Host pass**, before each replay: the calls again with their device work left out, so
//!    that each op's host part (index checks, host-built index tables) sees this run's inputs
//!    and writes its tables into a host copy of the pinned buffer, while the device may still
//!    run the last replay; then, once that replay is done with the pinned buffer, the tables
//!    go into it in one copy and the graph in one launch.
//!
//! A replay queues the same kernels with the same arguments on the same buffers as the
//! measured run: the same results, bit for bit. What breaks that is refused: an allocation or
//! a read to the host while capturing (the capture fails and the executor runs op by op), a
//! copy of another size than recorded (an error). The scratch arena and the staging buffers
//! a recording's kernels use stay allocated while it lives, even when the backend grows them
//! for other work (`retire`).

use super::{cuda_err, CudaBackend};
use crate::backend::Backend;
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, PinnedHostSlice};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the backend's calls do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// Queue device work as it comes (the normal case).
    Eager = 0,
    /// Eager, noting the size of each host-to-device copy.
    Measuring = 1,
    /// Stream capture: device work is recorded, not run; host copies come from pinned memory.
    Capturing = 2,
    /// Host work only: device work is left out, host copies fill the pinned regions.
    HostPass = 3,
}

/// The host-to-device copies of one recorded run, in order: each one's place in the pinned
/// buffer the recorded copy nodes read.
#[derive(Clone, Debug, Default)]
pub(super) struct Tape {
    /// (offset, bytes) of each copy (shared: a replay's pass takes the recording's tape
    /// without copying it).
    regions: Arc<Vec<(usize, usize)>>,
    /// The next copy's index (capturing and host passes).
    cursor: usize,
}

/// Alignment of each region (the copies' sources).
const REGION_ALIGN: usize = 64;

impl Tape {
    /// Measuring: notes one more copy of `bytes`.
    pub(super) fn measure(&mut self, bytes: usize) {
        let offset = self.bytes().div_ceil(REGION_ALIGN) * REGION_ALIGN;
        Arc::make_mut(&mut self.regions).push((offset, bytes));
    }
    /// Size of the pinned buffer the copies need.
    pub(super) fn bytes(&self) -> usize {
        self.regions.last().map_or(0, |&(o, b)| o + b)
    }
    /// Back to the first copy (each pass walks the copies in the measured order).
    pub(super) fn rewind(&mut self) {
        self.cursor = 0;
    }
    /// The offset of the next copy, which must be of the measured size.
    pub(super) fn next(&mut self, bytes: usize) -> Result<usize> {
        let k = self.cursor;
        let &(offset, want) = self.regions.get(k).ok_or_else(|| {
            Error::Cuda(format!(
                "replay: host-to-device copy {} (of {bytes} bytes) was not recorded ({} were)",
                k + 1,
                self.regions.len()
            ))
        })?;
        if bytes != want {
            return Err(Error::Cuda(format!(
                "replay: host-to-device copy {} is {bytes} bytes, the recording's is {want}",
                k + 1
            )));
        }
        self.cursor += 1;
        Ok(offset)
    }
    /// Whether a pass made every recorded copy.
    pub(super) fn finished(&self) -> Result<()> {
        match self.cursor == self.regions.len() {
            true => Ok(()),
            false => Err(Error::Cuda(format!(
                "replay: {} host-to-device copies made, {} recorded",
                self.cursor,
                self.regions.len()
            ))),
        }
    }
}

/// The recording state of a backend: its phase (read on every launch), the tape of the pass
/// under way with the pinned buffer's address, and the buffers kept for live recordings.
#[derive(Default)]
pub(super) struct Recorder {
    phase: AtomicU8,
    /// The pass under way (not eager): its tape and the pinned buffer's address.
    pass: Mutex<Option<(Tape, usize)>>,
    /// Recordings alive (`Live` guards).
    live: Arc<AtomicUsize>,
    /// Buffers the backend replaced while recordings were alive (their graphs still use them).
    retired: Mutex<Vec<CudaSlice<u8>>>,
}

impl Recorder {
    pub(super) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Measuring,
            2 => Phase::Capturing,
            3 => Phase::HostPass,
            _ => Phase::Eager,
        }
    }
    fn begin(&self, phase: Phase, tape: Tape, pinned: usize) {
        *self.pass.lock().unwrap_or_else(|p| p.into_inner()) = Some((tape, pinned));
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
    /// Back to eager; the pass's tape.
    fn end(&self) -> Tape {
        self.phase.store(Phase::Eager as u8, Ordering::Relaxed);
        let pass = self.pass.lock().unwrap_or_else(|p| p.into_inner()).take();
        pass.map(|(tape, _)| tape).unwrap_or_default()
    }
    /// Measuring: notes the copy. Capturing and host passes: puts `bytes` in the copy's pinned
    /// region and returns its address, the source the recorded copy reads.
    pub(super) fn stage(&self, bytes: &[u8]) -> Result<Option<*const u8>> {
        let phase = self.phase();
        if phase == Phase::Eager {
            return Ok(None);
        }
        let mut pass = self.pass.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tape, pinned)) = pass.as_mut() else {
            return Ok(None);
        };
        if phase == Phase::Measuring {
            tape.measure(bytes.len());
            return Ok(None);
        }
        let at = (*pinned + tape.next(bytes.len())?) as *mut u8;
        // SAFETY: the region lies inside the buffer sized from the tape (capturing: the pinned
        // buffer, before any replay; host pass: the recording's host copy of it).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len()) };
        Ok(Some(at.cast_const()))
    }
    /// A buffer the backend no longer uses: kept while a recording may still read it.
    pub(super) fn retire(&self, buf: CudaSlice<u8>) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        if self.live.load(Ordering::Relaxed) > 0 {
            retired.push(buf);
        } else {
            retired.clear();
        }
    }
    /// An error unless device work may be allocated or waited for now (not while capturing).
    pub(super) fn check_eager(&self, what: &str) -> Result<()> {
        match self.phase() {
            Phase::Capturing | Phase::HostPass => Err(Error::Cuda(format!(
                "{what} cannot be recorded in a CUDA graph"
            ))),
            _ => Ok(()),
        }
    }
}

/// One live recording (counts in `Recorder::live`).
struct Live(Arc<AtomicUsize>);
impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A run recorded as a CUDA graph ([`Backend::record`]), with the pinned buffer its copies
/// read and the tape of those copies.
pub struct Recording {
    graph: CudaGraph,
    pinned: PinnedHostSlice<u8>,
    base: usize,
    /// The host pass's tables, copied into `pinned` once the last replay is done with it.
    staged: Mutex<Vec<u8>>,
    tape: Tape,
    /// Device operations the graph holds.
    ops: u64,
    /// Recorded after the last launch: the pinned regions are free to fill once it is done.
    done: Mutex<Option<CudaEvent>>,
    _live: Live,
}

// SAFETY: the graph handles are used only through `&Recording` by the executor that owns
// it, one call at a time (CUDA asks that calls on a graph be serialised, not that they come
// from one thread); the pinned buffer is plain host memory.
unsafe impl Send for Recording {}

impl Recording {
    /// Device operations (launches, cuBLAS calls, copies, fills) one replay queues.
    pub fn ops(&self) -> u64 {
        self.ops
    }
    /// Bytes of pinned host memory its host-built copies go through.
    pub fn pinned_bytes(&self) -> usize {
        self.pinned.num_bytes()
    }
    /// Waits until the last replay is done with the pinned regions.
    fn wait(&self) -> Result<()> {
        match self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => e
                .synchronize()
                .map_err(|e| cuda_err("waiting for the last replay", e)),
            None => Ok(()),
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // the pinned buffer is freed after this: no replay may still read it
        self.wait().ok();
    }
}

impl CudaBackend {
    /// [`Backend::record`]: the run op by op (measuring), then captured.
    pub(super) fn record_run(
        &self,
        run: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<Recording>> {
        let rec = &self.recorder;
        if rec.phase() != Phase::Eager {
            return Err(Error::graph("a recording cannot start inside another"));
        }
        rec.begin(Phase::Measuring, Tape::default(), 0);
        let ran = run();
        let tape = rec.end();
        ran?;
        match self.capture(run, tape) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                log::warn!("CUDA graph not recorded, running op by op: {e}");
                Ok(None)
            }
        }
    }

    fn capture(&self, run: &mut dyn FnMut() -> Result<()>, mut tape: Tape) -> Result<Recording> {
        let rec = &self.recorder;
        // SAFETY: each region is written (by a pass's `stage`) before a copy reads it.
        let mut pinned = unsafe { self.ctx.alloc_pinned::<u8>(tape.bytes().max(1)) }
            .map_err(|e| cuda_err("pinned host memory for a CUDA graph's copies", e))?;
        let base = pinned
            .as_mut_ptr()
            .map_err(|e| cuda_err("pinned host memory", e))? as usize;
        self.synchronize()?;
        let before = self.queued.load(Ordering::Relaxed);
        tape.rewind();
        rec.begin(Phase::Capturing, tape, base);
        let captured = self
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| cuda_err("begin stream capture", e))
            .and_then(|()| {
                // a panic inside an op must still end the capture, or the stream stays
                // capturing and every later call on it fails
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut *run))
                    .unwrap_or_else(|p| {
                        let msg = crate::util::panic_message(&*p);
                        Err(Error::Cuda(format!("a panic while capturing: {msg}")))
                    });
                // always ends the capture, also after a failed call
                let graph = self
                    .stream
                    .end_capture(CUgraphInstantiate_flags(0))
                    .map_err(|e| cuda_err("end stream capture", e));
                ran.and(graph)
            });
        let tape = rec.end();
        // captured work was counted as it was recorded, not queued
        let ops = self.queued.swap(before, Ordering::Relaxed) - before;
        let graph =
            captured?.ok_or_else(|| Error::Cuda("stream capture recorded no graph".into()))?;
        tape.finished()?;
        graph
            .upload()
            .map_err(|e| cuda_err("upload of a CUDA graph", e))?;
        rec.live.fetch_add(1, Ordering::Relaxed);
        Ok(Recording {
            graph,
            pinned,
            base,
            staged: Mutex::new(vec![0; tape.bytes()]),
            tape,
            ops,
            done: Mutex::new(None),
            _live: Live(rec.live.clone()),
        })
    }

    /// [`Backend::replay`]: the host pass (while the device may still run the last replay),
    /// then its tables into the pinned buffer and the graph.
    pub(super) fn replay_run(
        &self,
        r: &Recording,
        host: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let rec = &self.recorder;
        if rec.phase() != Phase::Eager {
            return Err(Error::graph("a replay cannot start inside a recording"));
        }
        let mut staged = r.staged.lock().unwrap_or_else(|p| p.into_inner());
        let mut tape = r.tape.clone();
        tape.rewind();
        rec.begin(Phase::HostPass, tape, staged.as_mut_ptr() as usize);
        let ran = host();
        let tape = rec.end();
        ran?;
        tape.finished()?;
        r.wait()?;
        // SAFETY: both hold the tape's bytes; no copy node reads the pinned buffer now (the
        // last replay is done) and none will until the launch below.
        unsafe { std::ptr::copy_nonoverlapping(staged.as_ptr(), r.base as *mut u8, staged.len()) };
        // an error a drop recorded on the context belongs to earlier work: report it here,
        // not after the launch, where it would leave the replay without its `done` event
        (self.ctx.check_err()).map_err(|e| cuda_err("an earlier CUDA call failed", e))?;
        self.issue();
        r.graph
            .launch()
            .map_err(|e| cuda_err("launch of a CUDA graph (an earlier kernel failed?)", e))?;
        match self.stream.record_event(None) {
            Ok(done) => *r.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(done),
            // without the event the next replay could not wait for this one: wait now
            Err(e) => {
                self.stream
                    .synchronize()
                    .map_err(|s| cuda_err(&format!("after a CUDA graph (no event: {e:?})"), s))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tape_gives_each_copy_its_own_aligned_region() {
        let mut t = Tape::default();
        assert_eq!(t.bytes(), 0);
        for b in [12, 1, 64, 100] {
            t.measure(b);
        }
        assert_eq!(*t.regions, [(0, 12), (64, 1), (128, 64), (192, 100)]);
        assert_eq!(t.bytes(), 292);
        for pass in 0..2 {
            t.rewind();
            let got: Vec<usize> = [12, 1, 64, 100]
                .iter()
                .map(|&b| t.next(b).unwrap())
                .collect();
            assert_eq!(got, [0, 64, 128, 192], "pass {pass}");
            t.finished().unwrap();
        }
    }

    #[test]
    fn a_pass_that_copies_otherwise_than_recorded_is_an_error() {
        let mut t = Tape::default();
        t.measure(40);
        t.measure(8);
        t.rewind();
        // another size
        let e = t.next(44).unwrap_err().to_string();
        assert!(e.contains("44 bytes") && e.contains("40"), "{e}");
        // fewer copies
        t.rewind();
        t.next(40).unwrap();
        let e = t.finished().unwrap_err().to_string();
        assert!(
            e.contains("1 host-to-device copies made, 2 recorded"),
            "{e}"
        );
        // more copies
        t.next(8).unwrap();
        let e = t.next(8).unwrap_err().to_string();
        assert!(e.contains("was not recorded"), "{e}");
    }

    #[test]
    fn the_recorder_stages_copies_only_while_recording() {
        let r = Recorder::default();
        assert_eq!(r.phase(), Phase::Eager);
        assert!(r.stage(&[1, 2, 3]).unwrap().is_none());
        r.check_eager("an allocation").unwrap();

        r.begin(Phase::Measuring, Tape::default(), 0);
        assert!(r.stage(&[1, 2, 3]).unwrap().is_none());
        assert!(r.stage(&[9; 70]).unwrap().is_none());
        let tape = r.end();
        assert_eq!(r.phase(), Phase::Eager);
        assert_eq!(*tape.regions, [(0, 3), (64, 70)]);

        // a pass writes each copy's bytes to its region of the pinned buffer
        let mut pinned = vec![0u8; tape.bytes()];
        let base = pinned.as_mut_ptr() as usize;
        for phase in [Phase::Capturing, Phase::HostPass] {
            let mut t = tape.clone();
            t.rewind();
            r.begin(phase, t, base);
            let e = r.check_eager("an allocation").unwrap_err().to_string();
            assert!(e.contains("an allocation cannot be recorded"), "{e}");
            let a = r.stage(&[4, 5, 6]).unwrap().unwrap();
            let b = r.stage(&[7; 70]).unwrap().unwrap();
            assert_eq!((a as usize - base, b as usize - base), (0, 64));
            assert!(r.stage(&[1]).is_err());
            r.end();
        }
        assert_eq!(&pinned[..3], &[4, 5, 6]);
        assert!(pinned[64..134].iter().all(|&b| b == 7));
    }
}
