//! Progress of a long data job: one live line per running source on a terminal (indicatif), plain
//! lines every few seconds otherwise (logs, CI), and warnings that never garble either.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shared by the threads of a job.
pub struct Progress {
    multi: Option<MultiProgress>,
    quiet: bool,
    last_line: Mutex<Instant>,
}

/// One source's counter.
pub struct Task<'a> {
    progress: &'a Progress,
    bar: Option<ProgressBar>,
    name: String,
    docs: u64,
    bytes: u64,
}

impl Progress {
    /// Live bars when stderr is a terminal and `quiet` is off.
    pub fn new(quiet: bool) -> Self {
        let live = !quiet && std::io::stderr().is_terminal();
        Self {
            multi: live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            quiet,
            last_line: Mutex::new(Instant::now()),
        }
    }

    pub fn task(&self, name: &str) -> Task<'_> {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<14} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Task {
            progress: self,
            bar,
            name: name.to_string(),
            docs: 0,
            bytes: 0,
        }
    }

    /// A warning line (above the bars on a terminal).
    pub fn warn(&self, message: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => m.suspend(|| eprintln!("warning: {message}")),
            None => eprintln!("warning: {message}"),
        }
    }

    fn line(&self, message: &str, force: bool) {
        if self.quiet || self.multi.is_some() {
            return;
        }
        let Ok(mut last) = self.last_line.lock() else {
            return;
        };
        if force || last.elapsed() >= Duration::from_secs(10) {
            *last = Instant::now();
            eprintln!("{message}");
        }
    }
}

impl Task<'_> {
    /// Counts one document of `bytes` raw bytes.
    pub fn inc(&mut self, bytes: u64) {
        self.docs += 1;
        self.bytes += bytes;
        if self.docs.is_multiple_of(64) {
            let msg = self.message();
            if let Some(bar) = &self.bar {
                bar.set_message(msg);
            } else {
                self.progress.line(&format!("{}: {msg}", self.name), false);
            }
        }
    }

    fn message(&self) -> String {
        format!(
            "{} documents, {:.1} MB read",
            self.docs,
            self.bytes as f64 / 1e6
        )
    }

    pub fn finish(self, summary: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(format!("{} — {summary}", self.message())),
            None => self
                .progress
                .line(&format!("{}: done, {summary}", self.name), true),
        }
    }
}
