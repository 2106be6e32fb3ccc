//! A device that runs out of memory as one error line, not a panic.
//!
//! Burn's libtorch backend unwraps torch's results, so a CUDA allocation that fails (a preset or
//! a batch too large for the card) panics inside the tensor operation, printing torch's message
//! and its C++ backtrace. The `llama` tool installs [`install_hook`], which keeps such panics on
//! the main thread quiet, and runs each command through [`catch`], which turns them into an error
//! (one line, torch's own sentence); every other panic prints and unwinds as before.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use anyhow::{Result, anyhow};

/// The panic hook: as before, but silent for an out-of-memory panic on the main thread (which
/// [`catch`] reports).
pub fn install_hook() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let main = std::thread::current().name() == Some("main");
        if !(main && text(info.payload()).and_then(oom_line).is_some()) {
            previous(info);
        }
    }));
}

/// `f()`, with an out-of-memory panic inside it returned as an error.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => match text(payload.as_ref()).and_then(oom_line) {
            Some(line) => Err(anyhow!("the device ran out of memory: {line}")),
            None => panic::resume_unwind(payload),
        },
    }
}

/// A panic's message, where it is text.
fn text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}

/// The out-of-memory part of a panic message: torch's sentence ("CUDA out of memory. Tried to
/// allocate …", up to the end of its line, without the advice that follows), or the first line
/// of another message that says it ran out of memory (a driver error's name,
/// `CUDA_ERROR_OUT_OF_MEMORY`); `None` for other panics.
pub fn oom_line(message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let Some(at) = lower.find("cuda out of memory") else {
        let oom = lower.contains("out of memory") || lower.contains("out_of_memory");
        return oom.then(|| first_line(message).trim().to_string());
    };
    // From the start of the quoted message or line that holds it.
    let start = message[..at].rfind(['"', '\n', '(']).map_or(0, |i| i + 1);
    let rest = &message[start..];
    let end = [" If reserved", "\""]
        .iter()
        .filter_map(|stop| rest.find(stop))
        .chain([first_line(rest).len()])
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Up to the first line break, real or escaped inside a `{:?}` (torch's message in a Rust error).
fn first_line(s: &str) -> &str {
    let end = ["\\n", "\n"]
        .iter()
        .filter_map(|stop| s.find(stop))
        .min()
        .unwrap_or(s.len());
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchs_message_becomes_its_first_sentences() {
        let msg = "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried \
                   to allocate 1.00 GiB. GPU 0 has a total capacity of 139.72 GiB of which 512.00 \
                   MiB is free. If reserved but unallocated memory is large try setting \
                   PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\\nException raised from \
                   malloc at /pytorch/c10/cuda/CUDACachingAllocator.cpp:1234\")";
        assert_eq!(
            oom_line(msg).as_deref(),
            Some(
                "CUDA out of memory. Tried to allocate 1.00 GiB. GPU 0 has a total capacity of \
                 139.72 GiB of which 512.00 MiB is free."
            )
        );
    }

    #[test]
    fn a_driver_errors_name_counts_too() {
        let msg = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        assert_eq!(oom_line(msg).as_deref(), Some(msg));
    }

    #[test]
    fn other_panics_are_not_out_of_memory() {
        assert_eq!(oom_line("index out of bounds: the len is 3"), None);
    }

    #[test]
    fn catch_returns_an_error_for_out_of_memory_and_unwinds_others() {
        let err = catch::<()>(|| panic!("Torch(\"CUDA out of memory. Tried to allocate 2 GiB\")"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the device ran out of memory: CUDA out of memory. Tried to allocate 2 GiB"
        );
        assert_eq!(catch(|| Ok(3)).unwrap(), 3);
        let other = panic::catch_unwind(|| catch::<()>(|| panic!("a bug")));
        assert!(other.is_err(), "other panics unwind");
    }
}
