//! Records panics on the threads of a runtime the fuzz tests name, so a
//! handler that panics is reported with its message, not just as a dropped
//! connection. The hook is process-wide: it chains to the one it replaces and
//! records only threads whose name starts with a prefix a test registered.

use std::sync::{Mutex, Once};

static RECORDED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Thread names of fuzz runtimes start with this.
pub const PREFIX: &str = "slipway-fuzz-";

/// A multi-threaded runtime whose threads (workers and blocking pool) are
/// named `slipway-fuzz-<name>`, with panics on them recorded.
pub fn runtime(name: &str) -> tokio::runtime::Runtime {
    install();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{PREFIX}{name}"))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(name) = thread.name()
                && name.starts_with(PREFIX)
            {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                if let Ok(mut recorded) = RECORDED.lock() {
                    recorded.push((name.to_owned(), format!("{message}{location}")));
                }
            }
            previous(info);
        }));
    });
}

/// Takes the panics recorded on the runtime `slipway-fuzz-<name>`.
pub fn take(name: &str) -> Vec<String> {
    let thread = format!("{PREFIX}{name}");
    let mut recorded = RECORDED.lock().expect("panic record");
    let (mine, others): (Vec<_>, Vec<_>) = recorded.drain(..).partition(|(t, _)| *t == thread);
    *recorded = others;
    mine.into_iter().map(|(_, m)| m).collect()
}
