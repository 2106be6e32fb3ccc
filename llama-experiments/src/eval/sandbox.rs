//! Running model-written Python in a sandboxed subprocess (HumanEval).
//!
//! The program runs as `python3 -I` (isolated: no user site, no environment variables) in a fresh
//! temporary directory with an empty environment, in its own process group, under resource limits
//! (address space, CPU seconds, file size, no core dumps), in a new network namespace where the
//! kernel allows it, and behind a Python audit hook that refuses sockets, subprocesses, `exec`,
//! `fork`, signals and file deletion — so the network is closed even where namespaces are not. A
//! wall-clock limit kills the whole process group. Not a security boundary against a determined
//! adversary (use a VM for that); a guard against the accidents model-written code makes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub wall: Duration,
    pub memory_bytes: u64,
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(10),
            memory_bytes: 2 << 30,
            file_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Non-zero exit (a failed assertion, an exception, a refused operation), with stderr's tail.
    Failed(String),
    TimedOut,
}

/// Installed before the program: refuses network, process creation and deletion.
const GUARD: &str = r#"import sys
def _llama_guard(event, args):
    if event.startswith(("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                         "os.system", "os.kill", "os.killpg", "os.remove", "os.unlink", "os.rmdir",
                         "shutil.rmtree", "os.rename", "os.truncate", "ctypes.")):
        raise PermissionError("sandbox: " + event + " is not allowed")
sys.addaudithook(_llama_guard)
del _llama_guard
"#;

/// Runs `program` (Python source) under the sandbox; `python` is the interpreter to use.
pub fn run_python(python: &Path, program: &str, limits: Limits) -> Result<Outcome> {
    let dir = tempfile::tempdir().context("creating the sandbox directory")?;
    let file = dir.path().join("program.py");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(format!("{GUARD}\n{program}\n").as_bytes()))
        .context("writing the sandboxed program")?;
    let mut cmd = Command::new(python);
    cmd.arg("-I")
        .arg("-B")
        .arg(&file)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let (mem, fsize, cpu) = (
            limits.memory_bytes,
            limits.file_bytes,
            limits.wall.as_secs() + 1,
        );
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpgid(0, 0);
                let set = |res, v: u64| {
                    let l = libc::rlimit {
                        rlim_cur: v as libc::rlim_t,
                        rlim_max: v as libc::rlim_t,
                    };
                    libc::setrlimit(res, &l);
                };
                set(libc::RLIMIT_AS, mem);
                set(libc::RLIMIT_FSIZE, fsize);
                set(libc::RLIMIT_CPU, cpu);
                set(libc::RLIMIT_CORE, 0);
                // A private network namespace with only a down loopback, where permitted.
                libc::unshare(libc::CLONE_NEWNET);
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let _ = std::io::Read::read_to_end(&mut s, &mut buf);
        }
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > limits.wall {
            #[cfg(unix)]
            // SAFETY: signals the child's own process group.
            unsafe {
                libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = reader.join().unwrap_or_default();
    Ok(match status {
        None => Outcome::TimedOut,
        Some(s) if s.success() => Outcome::Passed,
        Some(_) => {
            let text = String::from_utf8_lossy(&err);
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            Outcome::Failed(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() -> Option<std::path::PathBuf> {
        let p = Path::new("/usr/bin/python3");
        if p.exists() {
            Some(p.to_path_buf())
        } else {
            eprintln!("skipping: no /usr/bin/python3");
            None
        }
    }

    fn run(src: &str) -> Outcome {
        let limits = Limits {
            wall: Duration::from_secs(3),
            ..Limits::default()
        };
        run_python(&python().unwrap(), src, limits).unwrap()
    }

    #[test]
    fn passes_fails_and_limits() {
        if python().is_none() {
            return;
        }
        assert_eq!(
            run("def f(x):\n    return x + 1\nassert f(1) == 2"),
            Outcome::Passed
        );
        assert!(matches!(run("assert 1 == 2"), Outcome::Failed(e) if e.contains("AssertionError")));
        let t = Instant::now();
        assert_eq!(run("while True:\n    pass"), Outcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(6));
        assert!(
            matches!(run("x = bytearray(8 << 30)"), Outcome::Failed(e) if e.contains("MemoryError"))
        );
        let net = "import socket\ns = socket.create_connection(('127.0.0.1', 9))";
        assert!(
            matches!(run(net), Outcome::Failed(e) if e.contains("sandbox: socket")),
            "{:?}",
            run(net)
        );
        let sub = "import subprocess\nsubprocess.run(['true'])";
        assert!(matches!(run(sub), Outcome::Failed(e) if e.contains("sandbox: subprocess")));
        let rm = "import os\nos.remove('/tmp/anything')";
        assert!(matches!(run(rm), Outcome::Failed(e) if e.contains("sandbox: os.remove")));
        // The environment is empty and the working directory is a fresh temporary folder.
        assert_eq!(
            run(
                "import os\nassert 'HOME' not in os.environ\nassert os.listdir('.') == ['program.py']"
            ),
            Outcome::Passed
        );
    }
}
