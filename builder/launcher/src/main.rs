//! `/cnb/lifecycle/launcher`: see the library's documentation.

use std::ffi::OsString;
use std::path::PathBuf;

use slipway_launcher::{EXIT_LAUNCH_ERROR, Env, Settings, forward, launch};

fn main() {
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let args: Vec<OsString> = argv.collect();
    // Run as `egress-forward` in a build's sandbox: the forwarder.
    if PathBuf::from(&argv0).file_name() == Some(std::ffi::OsStr::new(forward::NAME)) {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        std::process::exit(forward::main(&args));
    }
    let env: Env = std::env::vars_os().collect();
    let var = |name: &str| {
        env.get(&OsString::from(name))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let settings = Settings {
        layers: var("CNB_LAYERS_DIR").map_or_else(|| PathBuf::from("/layers"), PathBuf::from),
        app: var("CNB_APP_DIR").map_or_else(|| PathBuf::from("/workspace"), PathBuf::from),
        exec_env: var("CNB_EXEC_ENV")
            .and_then(|v| v.into_string().ok())
            .unwrap_or_else(|| "production".into()),
        process_type: var("CNB_PROCESS_TYPE").and_then(|v| v.into_string().ok()),
    };
    let error = launch(&settings, &argv0, &args, env);
    eprintln!("launcher: {error}");
    std::process::exit(EXIT_LAUNCH_ERROR);
}
