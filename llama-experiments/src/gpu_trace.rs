//! `llama bench --trace-gpu FILE.json`: what the GPU ran during the timed steps and when, from
//! CUPTI's activity records: a Chrome trace of every kernel, copy and fill (open it in Perfetto or
//! `chrome://tracing`), the idle gaps between them grouped by the pair of kernels around them
//! (FILE.json.gaps.txt), and per step how long the GPU was busy.
//!
//! Why: Nsight Compute replays each kernel alone, so the sum of its times says nothing about the
//! GPU waiting between kernels (on the host, on a launch, on a synchronisation), and Nsight
//! Systems, which would show it, is not on the machine we measure on. CUPTI's activity API (what
//! Nsight Systems and PyTorch's profiler are built on) stamps each kernel's start and end on the
//! device with little overhead and without serialising them. Nothing of CUPTI is needed to build:
//! it is loaded at run time like [`crate::cupti_stream`]'s.
//!
//! The analysis ([`summarize`], [`gap_table`]) is plain arithmetic on intervals, compiled and
//! tested on every build; recording needs a CUDA build (`cuda-untuned` or `tch`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
#[cfg(any(feature = "cuda-untuned", feature = "tch"))]
use anyhow::anyhow;
use serde::Serialize;

use crate::bench::median;

/// One interval of GPU work: a kernel, a copy or a fill, on the device's clock (ns).
#[derive(Debug, Clone)]
pub struct Activity {
    pub start: u64,
    pub end: u64,
    pub stream: u32,
    pub name: Arc<str>,
}

/// Medians over the timed steps (each step's window: from the host starting it to the host
/// returning from its sync, on CUPTI's clock).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuTraceSummary {
    /// The step's wall time, as the trace's clock saw it.
    pub step_s: f64,
    /// Time the GPU ran anything (the union of the intervals inside the window).
    pub busy_s: f64,
    /// `step_s - busy_s`: the GPU waiting on the host, on launches or on synchronisation.
    pub idle_s: f64,
    /// From the step's start on the host to its first GPU work.
    pub head_s: f64,
    /// From the end of its last GPU work to the host's return from the sync.
    pub tail_s: f64,
    /// Kernels, copies and fills started in the step.
    pub launches: usize,
}

/// Per-step busy, idle, head and tail times for `windows` (`[start, end)` in ns), medians.
/// `activities` need not be sorted; work crossing a window's edge counts only inside it.
pub fn summarize(windows: &[(u64, u64)], activities: &[Activity]) -> GpuTraceSummary {
    let mut sorted: Vec<&Activity> = activities.iter().collect();
    sorted.sort_by_key(|a| (a.start, a.end));
    let mut cols: [Vec<f64>; 6] = Default::default();
    for &(w0, w1) in windows {
        let inside: Vec<(u64, u64)> = sorted
            .iter()
            .filter(|a| a.end > w0 && a.start < w1)
            .map(|a| (a.start.max(w0), a.end.min(w1)))
            .collect();
        let (mut busy, mut reach) = (0u64, w0);
        for &(s, e) in &inside {
            if e > reach {
                busy += e - s.max(reach);
                reach = e;
            }
        }
        let first = inside.first().map_or(w1, |a| a.0);
        let last = inside.iter().map(|a| a.1).max().unwrap_or(w1);
        let span = w1.saturating_sub(w0);
        let ns = |x: u64| x as f64 * 1e-9;
        let started = sorted
            .iter()
            .filter(|a| a.start >= w0 && a.start < w1)
            .count();
        for (col, v) in cols.iter_mut().zip([
            ns(span),
            ns(busy),
            ns(span - busy),
            ns(first - w0),
            ns(w1 - last),
            started as f64,
        ]) {
            col.push(v);
        }
    }
    let [step, busy, idle, head, tail, launches] = cols.map(median);
    GpuTraceSummary {
        step_s: step,
        busy_s: busy,
        idle_s: idle,
        head_s: head,
        tail_s: tail,
        launches: launches as usize,
    }
}

/// The idle gaps inside the windows (between one piece of work's end and the next one's start,
/// when nothing else runs) grouped by the names on either side: `(before, after, count, ns)`,
/// each the median over the windows of that group's count and total (a warm-up-like outlier step
/// does not swamp the table), largest total first. Gaps at a window's edges are left to
/// [`summarize`]'s head and tail.
pub fn gap_table(
    windows: &[(u64, u64)],
    activities: &[Activity],
) -> Vec<(Arc<str>, Arc<str>, usize, u64)> {
    let mut sorted: Vec<&Activity> = activities.iter().collect();
    sorted.sort_by_key(|a| (a.start, a.end));
    type Key = (Arc<str>, Arc<str>);
    let per_window: Vec<HashMap<Key, (usize, u64)>> = windows
        .iter()
        .map(|&(w0, w1)| {
            let mut groups: HashMap<Key, (usize, u64)> = HashMap::new();
            let mut reach: Option<(u64, &Arc<str>)> = None;
            for a in sorted.iter().filter(|a| a.start >= w0 && a.end <= w1) {
                match reach {
                    Some((end, before)) if a.start > end => {
                        let g = groups.entry((before.clone(), a.name.clone())).or_default();
                        g.0 += 1;
                        g.1 += a.start - end;
                        reach = Some((a.end, &a.name));
                    }
                    Some((end, _)) if a.end <= end => {}
                    _ => reach = Some((a.end, &a.name)),
                }
            }
            groups
        })
        .collect();
    let keys: std::collections::HashSet<&Key> = per_window.iter().flat_map(|g| g.keys()).collect();
    let mut rows: Vec<_> = keys
        .into_iter()
        .map(|k| {
            let (mut n, mut t): (Vec<usize>, Vec<u64>) = per_window
                .iter()
                .map(|g| g.get(k).copied().unwrap_or_default())
                .unzip();
            n.sort_unstable();
            t.sort_unstable();
            (k.0.clone(), k.1.clone(), n[n.len() / 2], t[t.len() / 2])
        })
        .filter(|r| r.3 > 0)
        .collect();
    rows.sort_by(|x, y| y.3.cmp(&x.3).then_with(|| (&x.0, &x.1).cmp(&(&y.0, &y.1))));
    rows
}

/// The Chrome trace (JSON object format): one complete event per activity on the GPU's lane of
/// its stream, one per step window on a host lane; times in µs from the first window's start.
pub fn chrome_trace(windows: &[(u64, u64)], activities: &[Activity]) -> serde_json::Value {
    let origin = windows.first().map_or(0, |w| w.0);
    let us = |t: u64| t.saturating_sub(origin) as f64 / 1e3;
    let mut events: Vec<serde_json::Value> = windows
        .iter()
        .enumerate()
        .map(|(i, &(s, e))| {
            serde_json::json!({
                "name": format!("step {}", i + 1), "ph": "X", "pid": "host", "tid": "steps",
                "ts": us(s), "dur": (e - s) as f64 / 1e3,
            })
        })
        .collect();
    events.extend(activities.iter().map(|a| {
        serde_json::json!({
            "name": &*a.name, "ph": "X", "pid": "gpu", "tid": format!("stream {}", a.stream),
            "ts": us(a.start), "dur": (a.end - a.start) as f64 / 1e3,
        })
    }));
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ns" })
}

/// `--trace-gpu FILE`: recording over the timed steps, then the files and the summary.
pub struct Recorder {
    path: PathBuf,
    #[cfg(any(feature = "cuda-untuned", feature = "tch"))]
    trace: record::GpuTrace,
}

impl Recorder {
    /// Starts recording (CUPTI loaded, FILE's folder writable), or says why it cannot.
    pub fn start(path: &Path) -> Result<Self> {
        crate::host_profile::check_writable(path, "--trace-gpu")?;
        #[cfg(any(feature = "cuda-untuned", feature = "tch"))]
        {
            let trace = record::GpuTrace::start().map_err(|e| anyhow!("--trace-gpu: {e}"))?;
            Ok(Self {
                path: path.to_path_buf(),
                trace,
            })
        }
        #[cfg(not(any(feature = "cuda-untuned", feature = "tch")))]
        {
            anyhow::bail!(
                "--trace-gpu {} needs a CUDA build (`cuda` or `tch`: it reads CUPTI)",
                path.display()
            )
        }
    }

    /// A timed step begins (before its first operation).
    pub fn step_start(&mut self) {
        #[cfg(any(feature = "cuda-untuned", feature = "tch"))]
        self.trace.step_start();
    }

    /// A timed step's sync has returned.
    pub fn step_end(&mut self) {
        #[cfg(any(feature = "cuda-untuned", feature = "tch"))]
        self.trace.step_end();
    }

    /// Stops recording and writes FILE (Chrome trace) and FILE.gaps.txt (the summary and the
    /// gap table, per step), each to a temporary file renamed into place.
    pub fn finish(self) -> Result<GpuTraceSummary> {
        #[cfg(any(feature = "cuda-untuned", feature = "tch"))]
        let (windows, acts) = self.trace.finish();
        #[cfg(not(any(feature = "cuda-untuned", feature = "tch")))]
        let (windows, acts): (Vec<(u64, u64)>, Vec<Activity>) = (vec![], vec![]);
        let summary = summarize(&windows, &acts);
        let trace = chrome_trace(&windows, &acts);
        crate::host_profile::write_atomically(&self.path, |w| {
            serde_json::to_writer(&mut *w, &trace).map_err(std::io::Error::other)
        })?;
        let mut gaps_path = self.path.as_os_str().to_owned();
        gaps_path.push(".gaps.txt");
        crate::host_profile::write_atomically(Path::new(&gaps_path), |w| {
            writeln!(
                w,
                "{} steps; per step (medians): wall {:.3} ms, GPU busy {:.3} ms, idle {:.3} ms \
                 (head {:.3}, tail {:.3}), {} launches",
                windows.len(),
                summary.step_s * 1e3,
                summary.busy_s * 1e3,
                summary.idle_s * 1e3,
                summary.head_s * 1e3,
                summary.tail_s * 1e3,
                summary.launches
            )?;
            writeln!(
                w,
                "idle gaps inside the steps (medians over the steps): µs, count, before -> after"
            )?;
            for (before, after, n, ns) in gap_table(&windows, &acts) {
                writeln!(w, "{:10.1} {n:8}  {before} -> {after}", ns as f64 / 1e3)?;
            }
            Ok(())
        })?;
        Ok(summary)
    }
}

#[cfg(any(feature = "cuda-untuned", feature = "tch"))]
mod record {
    use std::collections::HashMap;
    use std::ffi::{CStr, c_char, c_void};
    use std::sync::{Arc, Mutex, OnceLock};

    use super::Activity;

    /// `CUPTI_ACTIVITY_KIND_MEMCPY`, `_MEMSET`, `_CONCURRENT_KERNEL` (`cupti_activity.h`; the
    /// concurrent kind keeps kernels overlapping as they run untraced).
    const KINDS: [u32; 3] = [1, 2, 10];
    /// `CUPTI_ACTIVITY_FLAG_FLUSH_FORCED`: hand over buffers that are not full yet.
    const FLUSH_FORCED: u32 = 1;
    /// Bytes per activity buffer CUPTI fills (a `1b` step's ~1,700 kernel records take ~0.3 MB).
    const BUFFER: usize = 8 << 20;
    /// CUPTI requires buffers aligned to `ACTIVITY_RECORD_ALIGNMENT`.
    const ALIGN: usize = 8;

    type Requested = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
    type Completed = unsafe extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);
    type RegisterCallbacks = unsafe extern "C" fn(Requested, Completed) -> i32;
    type Toggle = unsafe extern "C" fn(u32) -> i32;
    type FlushAll = unsafe extern "C" fn(u32) -> i32;
    type NextRecord = unsafe extern "C" fn(*mut u8, usize, *mut *const u8) -> i32;
    type Timestamp = unsafe extern "C" fn(*mut u64) -> i32;

    struct Api {
        enable: Toggle,
        disable: Toggle,
        flush_all: FlushAll,
        next_record: NextRecord,
        timestamp: Timestamp,
    }

    /// Records handed over by CUPTI (on its own thread or in a flush), and kernel names by the
    /// address CUPTI keeps them at.
    static RECORDS: Mutex<Vec<Activity>> = Mutex::new(Vec::new());
    static NAMES: OnceLock<Mutex<HashMap<usize, Arc<str>>>> = OnceLock::new();

    fn api() -> Result<&'static Api, String> {
        static API: OnceLock<Result<Api, String>> = OnceLock::new();
        API.get_or_init(|| {
            let lib = crate::cupti_stream::library()?;
            // SAFETY: the C signatures of `cupti_activity.h` for these symbols; the library
            // stays loaded for the process.
            unsafe {
                let err = |e: libloading::Error| format!("CUPTI activity API: {e}");
                let register = *lib
                    .get::<RegisterCallbacks>(b"cuptiActivityRegisterCallbacks\0")
                    .map_err(err)?;
                let api = Api {
                    enable: *lib.get::<Toggle>(b"cuptiActivityEnable\0").map_err(err)?,
                    disable: *lib.get::<Toggle>(b"cuptiActivityDisable\0").map_err(err)?,
                    flush_all: *lib
                        .get::<FlushAll>(b"cuptiActivityFlushAll\0")
                        .map_err(err)?,
                    next_record: *lib
                        .get::<NextRecord>(b"cuptiActivityGetNextRecord\0")
                        .map_err(err)?,
                    timestamp: *lib.get::<Timestamp>(b"cuptiGetTimestamp\0").map_err(err)?,
                };
                let rc = register(requested, completed);
                if rc != 0 {
                    return Err(format!("cuptiActivityRegisterCallbacks: error {rc}"));
                }
                Ok(api)
            }
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(BUFFER, ALIGN).expect("a valid layout")
    }

    unsafe extern "C" fn requested(buffer: *mut *mut u8, size: *mut usize, max: *mut usize) {
        // SAFETY: CUPTI passes valid out-pointers; a null buffer tells it none could be had
        // (records are then dropped, not written anywhere).
        unsafe {
            *buffer = std::alloc::alloc(layout());
            *size = if (*buffer).is_null() { 0 } else { BUFFER };
            *max = 0;
        }
    }

    unsafe extern "C" fn completed(
        _ctx: *mut c_void,
        _stream: u32,
        buffer: *mut u8,
        _size: usize,
        valid: usize,
    ) {
        if buffer.is_null() {
            return;
        }
        let Ok(api) = api() else { return };
        let mut out = Vec::new();
        let mut record: *const u8 = std::ptr::null();
        // SAFETY: CUPTI walks its own records in a buffer we allocated with `layout`; offsets
        // are those of `CUpti_ActivityKernel4`..`9`, `CUpti_ActivityMemcpy5`/`6` and
        // `CUpti_ActivityMemset3`/`4` (packed, 8-aligned), whose leading fields agree across
        // CUDA 12 and 13.
        unsafe {
            while (api.next_record)(buffer, valid, &mut record) == 0 {
                let at = |off: usize| record.add(off);
                let kind = *(at(0) as *const u32);
                let (start, end) = (*(at(16) as *const u64), *(at(24) as *const u64));
                let (stream, name) = match kind {
                    10 => {
                        let ptr = *(at(104) as *const *const c_char);
                        (*(at(48) as *const u32), kernel_name(ptr))
                    }
                    1 => (*(at(40) as *const u32), Arc::from("memcpy")),
                    2 => (*(at(40) as *const u32), Arc::from("memset")),
                    _ => continue,
                };
                if end >= start {
                    out.push(Activity {
                        start,
                        end,
                        stream,
                        name,
                    });
                }
            }
            std::alloc::dealloc(buffer, layout());
        }
        RECORDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(out);
    }

    /// The kernel's name, copied once per distinct address (CUPTI shares one string per kernel).
    fn kernel_name(ptr: *const c_char) -> Arc<str> {
        if ptr.is_null() {
            return Arc::from("kernel");
        }
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        names
            .entry(ptr as usize)
            // SAFETY: CUPTI's kernel names are NUL-terminated and live as long as the module.
            .or_insert_with(|| Arc::from(unsafe { CStr::from_ptr(ptr) }.to_string_lossy()))
            .clone()
    }

    /// Activity recording from [`GpuTrace::start`] to [`GpuTrace::finish`], with step windows
    /// marked on CUPTI's clock.
    pub(super) struct GpuTrace {
        api: &'static Api,
        marks: Vec<(u64, u64)>,
        open: Option<u64>,
    }

    impl GpuTrace {
        /// Loads CUPTI and enables kernel, copy and fill records.
        pub fn start() -> Result<Self, String> {
            let api = api()?;
            RECORDS.lock().unwrap_or_else(|e| e.into_inner()).clear();
            for kind in KINDS {
                // SAFETY: a documented activity kind.
                let rc = unsafe { (api.enable)(kind) };
                if rc != 0 {
                    return Err(format!("cuptiActivityEnable({kind}): error {rc}"));
                }
            }
            Ok(Self {
                api,
                marks: Vec::new(),
                open: None,
            })
        }

        fn now(&self) -> u64 {
            let mut t = 0;
            // SAFETY: one out-pointer.
            unsafe { (self.api.timestamp)(&mut t) };
            t
        }

        /// A step begins (on the host, before its first launch).
        pub fn step_start(&mut self) {
            self.open = Some(self.now());
        }

        /// The step's sync has returned.
        pub fn step_end(&mut self) {
            if let Some(s) = self.open.take() {
                let e = self.now();
                self.marks.push((s, e.max(s)));
            }
        }

        /// Flushes CUPTI's buffers, stops recording and returns the step windows and the records.
        pub fn finish(self) -> (Vec<(u64, u64)>, Vec<Activity>) {
            // SAFETY: documented calls; the flush runs `completed` for every buffer.
            unsafe {
                (self.api.flush_all)(FLUSH_FORCED);
                for kind in KINDS {
                    (self.api.disable)(kind);
                }
                (self.api.flush_all)(FLUSH_FORCED);
            }
            let records = std::mem::take(&mut *RECORDS.lock().unwrap_or_else(|e| e.into_inner()));
            (self.marks, records)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(start: u64, end: u64, name: &str) -> Activity {
        Activity {
            start,
            end,
            stream: 7,
            name: Arc::from(name),
        }
    }

    #[test]
    fn busy_time_is_the_union_of_overlapping_work_inside_each_window() {
        // Window 1: [100, 200): a 100..130, b 120..150 overlap (busy 50), c 170..190 (20);
        // head 0, tail 10, 3 launches. Window 2: [300, 400): d 290..320 crosses the edge
        // (20 inside, not started inside), e 350..360; head 0, tail 40, 1 launch.
        let acts = [
            act(170, 190, "c"),
            act(100, 130, "a"),
            act(120, 150, "b"),
            act(290, 320, "d"),
            act(350, 360, "e"),
        ];
        let s = summarize(&[(100, 200), (300, 400)], &acts);
        let ns = |x: f64| (x * 1e9).round() as u64;
        // Medians of two values take the upper one.
        assert_eq!(
            [s.step_s, s.busy_s, s.idle_s, s.head_s, s.tail_s].map(ns),
            [100, 70, 70, 0, 40]
        );
        assert_eq!(s.launches, 3);
        // An empty window is all idle.
        let e = summarize(&[(0, 50)], &[]);
        assert_eq!([e.busy_s, e.idle_s, e.head_s].map(ns), [0, 50, 50]);
    }

    #[test]
    fn gaps_are_grouped_by_the_work_around_them() {
        // x→y gaps of 10 and 30, y→x 5; b nested inside a leaves no gap; work outside the
        // window is ignored.
        let acts = [
            act(0, 10, "x"),
            act(20, 30, "y"),
            act(35, 40, "x"),
            act(70, 80, "y"),
            act(80, 100, "a"),
            act(85, 90, "b"),
            act(500, 600, "x"),
        ];
        let rows = gap_table(&[(0, 200)], &acts);
        let rows: Vec<_> = rows
            .iter()
            .map(|(b, a, n, t)| (&**b, &**a, *n, *t))
            .collect();
        assert_eq!(rows, [("x", "y", 2, 40), ("y", "x", 1, 5)]);
    }

    #[test]
    fn the_gap_table_takes_each_groups_median_over_the_steps() {
        // Three windows with an x→y gap of 10, 1000 (an outlier step) and 20: median 20.
        let acts = [
            act(0, 10, "x"),
            act(20, 30, "y"),
            act(100, 110, "x"),
            act(1110, 1120, "y"),
            act(2000, 2010, "x"),
            act(2030, 2040, "y"),
        ];
        let windows = [(0, 50), (100, 1200), (2000, 2050)];
        let rows = gap_table(&windows, &acts);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].2, rows[0].3), (1, 20));
    }

    #[test]
    fn the_chrome_trace_places_work_relative_to_the_first_step() {
        let t = chrome_trace(&[(1_000, 3_000)], &[act(1_500, 2_000, "k")]);
        let ev = t["traceEvents"].as_array().unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["dur"], 2.0);
        assert_eq!(ev[1]["name"], "k");
        assert_eq!(ev[1]["ts"], 0.5);
        assert_eq!(ev[1]["tid"], "stream 7");
    }
}
