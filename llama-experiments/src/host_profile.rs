//! `llama bench --profile-host FILE.svg`: where the host's time goes during the timed steps, as a
//! flame graph (FILE.svg) and its collapsed stacks (FILE.svg.folded, one `thread;outer;...;inner
//! count` line per distinct stack, for grep and scripts).
//!
//! A GPU step that is bound by its host (`--phases`: host time close to the whole) is spent in
//! Burn's autodiff, fusion planning and kernel launches; a sampling profile says which. pprof-rs
//! samples every thread of this process from a `SIGPROF` timer (`setitimer`), so it needs no
//! `perf` binary and no `perf_event_open` permission, neither of which a container may have.
//! Samples count CPU time: a thread blocked in a wait is not sampled, which is what a host-bound
//! question needs (where the host works, not where it waits).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Samples per second of CPU time (a prime-ish rate, so sampling does not lock onto a periodic
/// loop of the program).
const FREQUENCY: i32 = 997;

/// A running profile; [`HostProfile::finish`] writes it.
pub struct HostProfile {
    #[cfg(unix)]
    guard: pprof::ProfilerGuard<'static>,
    path: PathBuf,
}

impl HostProfile {
    /// Starts sampling every thread of this process.
    pub fn start(path: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            check_writable(path, "--profile-host")?;
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(FREQUENCY)
                // Unwinding from inside these (the signal trampoline, the C library's own
                // frames) can fault; pprof skips samples that land there.
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()
                .context("starting the host profiler")?;
            Ok(Self {
                guard,
                path: path.to_path_buf(),
            })
        }
        #[cfg(not(unix))]
        {
            anyhow::bail!(
                "--profile-host {} needs a Unix host (pprof's SIGPROF sampler)",
                path.display()
            )
        }
    }

    /// Stops sampling and writes FILE (flame graph) and FILE.folded (collapsed stacks), each to a
    /// temporary file renamed into place. Returns the number of samples.
    pub fn finish(self) -> Result<u64> {
        #[cfg(unix)]
        {
            let report = self
                .guard
                .report()
                .build()
                .context("building the host profile")?;
            drop(self.guard);
            let mut lines: Vec<String> = report
                .data
                .iter()
                .map(|(frames, count)| {
                    let mut line = sanitize(&frames.thread_name_or_id());
                    // Outermost frame first; each frame lists its inlined functions innermost
                    // first, so both are reversed.
                    for frame in frames.frames.iter().rev() {
                        for symbol in frame.iter().rev() {
                            line.push(';');
                            line.push_str(&sanitize(&symbol.name()));
                        }
                    }
                    format!("{line} {count}")
                })
                .collect();
            lines.sort();
            let samples = report.data.values().map(|&c| c.max(0) as u64).sum();
            use std::io::Write;
            write_atomically(&folded_path(&self.path), |w| {
                for l in &lines {
                    writeln!(w, "{l}")?;
                }
                Ok(())
            })?;
            write_atomically(&self.path, |w| {
                if !lines.is_empty() {
                    let mut opts = pprof::flamegraph::Options::default();
                    opts.title = "llama bench: host CPU time".to_string();
                    pprof::flamegraph::from_lines(&mut opts, lines.iter().map(|s| s.as_str()), w)
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                }
                Ok(())
            })?;
            Ok(samples)
        }
        #[cfg(not(unix))]
        {
            unreachable!("start fails on this host")
        }
    }
}

/// Fails before the timed steps, not after them, when `path` cannot be written (`flag` names the
/// option in the message).
pub(crate) fn check_writable(path: &Path, flag: &str) -> Result<()> {
    tempfile::NamedTempFile::new_in(parent_dir(path))
        .with_context(|| format!("{flag}: cannot write in {}", parent_dir(path).display()))?;
    Ok(())
}

/// FILE.folded next to FILE.
pub fn folded_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".folded");
    PathBuf::from(s)
}

/// A name as one field of a collapsed stack: `;` separates frames and the last space the count.
fn sanitize(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// The folder a file goes in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

pub(crate) fn write_atomically(
    path: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let dir = parent_dir(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        body(&mut w).and_then(|()| w.flush())
    }
    .with_context(|| format!("writing {}", path.display()))?;
    // A temporary file is created private (0600); the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// This thread's CPU time in milliseconds.
    fn thread_cpu_ms() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills the struct we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
    }

    /// Enough CPU work to be sampled many times at ~1 kHz, in a function whose name must show:
    /// 300 ms of this thread's CPU time (not of the clock: on a loaded machine the thread gets a
    /// share of a core, and the profiler samples CPU time), within 20 s of the clock.
    #[inline(never)]
    fn spin_for_the_profile() -> u64 {
        let (t, cpu) = (std::time::Instant::now(), thread_cpu_ms());
        let mut x = 1u64;
        while thread_cpu_ms() - cpu < 300 && t.elapsed().as_secs() < 20 {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        x
    }

    #[test]
    fn a_busy_function_is_sampled_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("host.svg");
        let profile = HostProfile::start(&svg).unwrap();
        std::hint::black_box(spin_for_the_profile());
        let samples = profile.finish().unwrap();
        // 300 ms of CPU at 997 Hz is ~300 samples; timers on a loaded 2-core machine are coarse.
        assert!(samples >= 50, "only {samples} samples");
        let folded = std::fs::read_to_string(folded_path(&svg)).unwrap();
        let in_spin: u64 = folded
            .lines()
            .filter(|l| l.contains("spin_for_the_profile"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert!(
            in_spin * 2 >= samples,
            "{in_spin} of {samples} samples name the busy function"
        );
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        assert!(svg_text.starts_with("<?xml") && svg_text.contains("spin_for_the_profile"));
    }
}
