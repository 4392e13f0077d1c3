//! The launcher of Slipway's app images (`/cnb/lifecycle/launcher`), after
//! the "launcher" section of the buildpacks platform spec: it picks the
//! process, builds its environment from the launch layers, and replaces
//! itself with it — so an app image runs on any OCI runtime, without the
//! upstream lifecycle.
//!
//! ```text
//! /cnb/process/<type> [<arg>...]             the process <type>
//! /cnb/lifecycle/launcher                    the default process
//! /cnb/lifecycle/launcher <type> [<arg>...]  the process <type>
//! /cnb/lifecycle/launcher -- <cmd> [<arg>...]  <cmd>, executed directly
//! /cnb/lifecycle/launcher <cmd> [<arg>...]     <cmd>, through /bin/sh
//! ```
//!
//! The steps, each in its module: read `<layers>/config/metadata.toml`
//! ([`metadata`]); choose what to run ([`process`]); build the environment
//! ([`env`]): the launcher's own, less its inputs, plus the launch layers'
//! paths and environment files, then the `exec.d` programs' output; then
//! `execve` the command in its working directory, or for a shell process
//! run one `/bin/sh` that sources the layers' `profile.d` files and the
//! app's `.profile` first.
//!
//! The binary is built static (`builder/build.rs`) and needs nothing from
//! the image but `/bin/sh` for shell processes. Library functions take
//! the layers and app directories as arguments; only `main` reads the
//! environment for them.

pub mod env;
pub mod forward;
pub mod metadata;
pub mod process;

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use env::{Env, Phase};
use metadata::Metadata;
use process::How;

/// The exit code of a launch that failed before the process started: the
/// platform spec reserves 80–89 for the launcher's own errors, and the
/// upstream lifecycle uses 82.
pub const EXIT_LAUNCH_ERROR: i32 = 82;

/// The shell for processes that are not direct.
pub const SHELL: &str = "/bin/sh";

/// The launcher's inputs, from its environment (see `main`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CNB_LAYERS_DIR`.
    pub layers: PathBuf,
    /// `CNB_APP_DIR`: the default working directory.
    pub app: PathBuf,
    /// `CNB_EXEC_ENV`: which processes are eligible.
    pub exec_env: String,
    /// `CNB_PROCESS_TYPE`: a process to run when the launcher is not
    /// started through `/cnb/process/<type>`.
    pub process_type: Option<String>,
}

impl Settings {
    pub fn metadata_path(&self) -> PathBuf {
        self.layers.join("config").join("metadata.toml")
    }
}

/// Why the launcher could not start the process. Each reads as a sentence.
#[derive(Debug)]
pub enum LaunchError {
    /// `metadata.toml` unreadable or not in the expected format.
    Metadata {
        path: PathBuf,
        reason: String,
    },
    NoProcess {
        kind: String,
        path: PathBuf,
    },
    NotEligible {
        kind: String,
        exec_env: String,
    },
    NoDefault {
        path: PathBuf,
    },
    /// `--` with nothing after it, or a process whose command is empty.
    NoCommand {
        what: String,
    },
    /// A layer directory or file could not be read.
    Layers {
        path: PathBuf,
        reason: String,
    },
    ExecD {
        program: PathBuf,
        reason: String,
    },
    Exec {
        program: OsString,
        reason: String,
    },
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Metadata { path, reason } => {
                write!(f, "could not read {}: {reason}", path.display())
            }
            LaunchError::NoProcess { kind, path } => {
                write!(f, "no process of type {kind} in {}", path.display())
            }
            LaunchError::NotEligible { kind, exec_env } => write!(
                f,
                "process {kind} is not for the {exec_env} execution environment (CNB_EXEC_ENV)"
            ),
            LaunchError::NoDefault { path } => write!(
                f,
                "{} names no default process: give a command, or a process type",
                path.display()
            ),
            LaunchError::NoCommand { what } => write!(f, "{what}"),
            LaunchError::Layers { path, reason } => {
                write!(f, "could not read {}: {reason}", path.display())
            }
            LaunchError::ExecD { program, reason } => {
                write!(f, "exec.d program {} failed: {reason}", program.display())
            }
            LaunchError::Exec { program, reason } => {
                write!(f, "could not run {}: {reason}", program.display())
            }
        }
    }
}

impl std::error::Error for LaunchError {}

/// Everything needed to start the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The process type, if a buildpack's process runs.
    pub process_type: Option<String>,
    /// The program (looked up in the new `PATH` unless it has a `/`) and
    /// its arguments, `argv[1..]`.
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The whole environment of the process.
    pub env: Env,
    /// The working directory to start in (for a shell process, the app
    /// directory: its script changes to the process's).
    pub dir: PathBuf,
}

impl Prepared {
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.dir);
        c
    }
}

/// Reads the metadata, chooses the process and builds its environment
/// (running the `exec.d` programs). `argv0` is how the launcher was
/// started, `args` the rest of its arguments, `env` its environment.
pub fn prepare(
    settings: &Settings,
    argv0: &OsString,
    args: &[OsString],
    env: Env,
) -> Result<Prepared, LaunchError> {
    let path = settings.metadata_path();
    let text = std::fs::read_to_string(&path).map_err(|e| LaunchError::Metadata {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let metadata = Metadata::parse(&text).map_err(|e| LaunchError::Metadata {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let chosen = process::choose(&metadata, settings, argv0, args)?;
    let kind = chosen.process_type.as_deref();

    let dirs: Vec<PathBuf> = metadata
        .buildpacks
        .iter()
        .map(|b| settings.layers.join(b.dir_name()))
        .collect();
    let all = env::launch_layers(&dirs)?;
    let mut vars = env::base(env);
    for bp in &all {
        env::apply_buildpack_layers(
            &mut vars,
            &bp.layers,
            Phase::Launch(kind),
            Path::to_path_buf,
        )?;
    }
    for layer in all.iter().flat_map(|b| &b.layers) {
        for program in env::exec_d_programs(layer, kind)? {
            env::run_exec_d(&mut vars, &program, &settings.app)?;
        }
    }

    let dir = chosen.working_dir.unwrap_or_else(|| settings.app.clone());
    let (program, args, dir) = match chosen.how {
        How::Direct { argv } => {
            let mut argv = argv.into_iter();
            let program = argv.next().ok_or_else(|| LaunchError::NoCommand {
                what: "the process has an empty command".into(),
            })?;
            (program, argv.collect(), dir)
        }
        How::Shell { script, tokens } => {
            let mut profiles = Vec::new();
            for layer in all.iter().flat_map(|b| &b.layers) {
                profiles.extend(env::profiles(layer, kind)?);
            }
            let app_profile = settings.app.join(".profile");
            if app_profile.is_file() {
                profiles.push(app_profile);
            }
            let text = shell_script(&profiles, &dir, script.as_deref(), &tokens);
            // The shell starts in the app directory, where the spec has
            // the profiles sourced; the script then changes to `dir`.
            let args = vec!["-c".into(), text.into(), argv0.clone()];
            (SHELL.into(), args, settings.app.clone())
        }
    };
    Ok(Prepared {
        process_type: chosen.process_type,
        program,
        args,
        env: vars,
        dir,
    })
}

/// The script for a shell process: source the profiles, change to the
/// working directory, then replace the shell with the command.
///
/// A buildpack's `script` runs in a second shell, with the arguments (each
/// expanded by the shell, as if in double quotes) as its positional
/// parameters, so `"$@"` at its end passes them on. A user's command is
/// all `tokens`: each expanded the same way and executed.
fn shell_script(
    profiles: &[PathBuf],
    dir: &Path,
    script: Option<&str>,
    tokens: &[OsString],
) -> String {
    let mut s = String::new();
    for p in profiles {
        s.push_str(&format!(". {}\n", single_quoted(&p.to_string_lossy())));
    }
    s.push_str(&format!(
        "cd {} || exit 1\n",
        single_quoted(&dir.to_string_lossy())
    ));
    let expanded: Vec<String> = tokens
        .iter()
        .map(|t| double_quoted(&t.to_string_lossy()))
        .collect();
    match script {
        Some(script) if tokens.is_empty() => {
            s.push_str(&format!("exec {SHELL} -c {}\n", single_quoted(script)));
        }
        Some(script) => {
            s.push_str(&format!(
                "exec {SHELL} -c {} {SHELL} {}\n",
                single_quoted(&format!("{script} \"$@\"")),
                expanded.join(" ")
            ));
        }
        None => s.push_str(&format!("exec {}\n", expanded.join(" "))),
    }
    s
}

/// A literal word for the shell.
fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A word the shell expands (`$VAR`, `$(…)`) but does not split: the
/// contents in double quotes, with double quotes in it kept literal.
fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in s.chars() {
        if c == '"' && backslashes % 2 == 0 {
            out.push('\\');
        }
        backslashes = if c == '\\' { backslashes + 1 } else { 0 };
        out.push(c);
    }
    if backslashes % 2 == 1 {
        out.push('\\');
    }
    out.push('"');
    out
}

/// Prepares and execs; returns only if that failed.
pub fn launch(settings: &Settings, argv0: &OsString, args: &[OsString], env: Env) -> LaunchError {
    let prepared = match prepare(settings, argv0, args, env) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let error = prepared.command().exec();
    LaunchError::Exec {
        program: prepared.program,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Writes `files` (relative paths, contents) under a new directory
    /// (also the `env` tests' layers).
    pub(crate) fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (path, value) in files {
            let path = d.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, value).unwrap();
        }
        d
    }

    #[test]
    fn prepare_across_buildpacks() {
        let layers = tree(&[
            (
                "config/metadata.toml",
                include_str!("../testdata/metadata.toml"),
            ),
            // slipway/python, then slipway/procfile, then old/shell.
            ("slipway_python/runtime/bin/python3", ""),
            ("slipway_python/runtime/env/ORDER.append", "python"),
            ("slipway_python/runtime/env/ORDER.delim", ","),
            ("slipway_python/runtime/env/WHO.override", "python"),
            ("slipway_python/runtime/env/FIRST.default", "python"),
            ("slipway_python/venv/bin/pip", ""),
            ("slipway_python/venv/env.launch/web/ONLY_WEB", "yes"),
            ("slipway_python/build-only/bin/x", ""),
            ("slipway_python/build-only.toml", "[types]\nbuild = true\n"),
            ("slipway_procfile/procs/bin/run", ""),
            ("slipway_procfile/procs/env/ORDER.append", "procfile"),
            ("slipway_procfile/procs/env/ORDER.delim", ","),
            ("slipway_procfile/procs/env/WHO.override", "procfile"),
            ("slipway_procfile/procs/env/FIRST.default", "procfile"),
        ]);
        let settings = Settings {
            layers: layers.path().to_owned(),
            app: "/app".into(),
            exec_env: "production".into(),
            process_type: None,
        };
        let env: Env = [
            ("PATH", "/cnb/process:/usr/bin"),
            ("CNB_LAYERS_DIR", "/elsewhere"),
            ("HOME", "/home/cnb"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let p = prepare(&settings, &"/cnb/process/web".into(), &[], env.clone()).unwrap();
        let l = layers.path().display();
        let get = |p: &Prepared, k: &str| {
            p.env
                .get(&OsString::from(k))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            get(&p, "PATH").unwrap(),
            format!(
                "{l}/slipway_procfile/procs/bin:{l}/slipway_python/runtime/bin:{l}/slipway_python/venv/bin:/usr/bin"
            ),
            "the later buildpack's layers first, one buildpack's in name order"
        );
        assert_eq!(get(&p, "ORDER").unwrap(), "python,procfile");
        assert_eq!(
            get(&p, "WHO").unwrap(),
            "procfile",
            "the later buildpack overrides"
        );
        assert_eq!(
            get(&p, "FIRST").unwrap(),
            "python",
            "the earlier buildpack's default wins"
        );
        assert_eq!(get(&p, "ONLY_WEB").unwrap(), "yes");
        assert_eq!(get(&p, "HOME").unwrap(), "/home/cnb");
        assert_eq!(get(&p, "CNB_LAYERS_DIR"), None);
        assert_eq!(p.program, "python3");
        assert_eq!(p.args, ["app.py", "--port", "8080"]);
        assert_eq!(p.dir, PathBuf::from("/workspace/src"));
        assert_eq!(p.process_type.as_deref(), Some("web"));

        let p = prepare(&settings, &"/cnb/process/worker".into(), &[], env.clone()).unwrap();
        assert_eq!(get(&p, "ONLY_WEB"), None);
        assert_eq!(p.dir, PathBuf::from("/app"));

        let p = prepare(
            &settings,
            &"launcher".into(),
            &["ls".into(), "-l".into()],
            env,
        )
        .unwrap();
        assert_eq!(p.program, SHELL);
        assert_eq!(p.process_type, None);
        assert_eq!(p.dir, PathBuf::from("/app"));

        fs::remove_file(layers.path().join("config/metadata.toml")).unwrap();
        let err = prepare(&settings, &"launcher".into(), &[], Env::new()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("could not read {l}/config/metadata.toml: ")),
            "{err}"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(single_quoted("it's"), r"'it'\''s'");
        assert_eq!(double_quoted("$HOME"), "\"$HOME\"");
        assert_eq!(double_quoted(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(double_quoted(r#"a\"b"#), r#""a\"b""#);
        assert_eq!(double_quoted(r"ends\"), r#""ends\\""#);
    }

    /// Runs `sh -c <script> argv0` as `prepare` would, and returns stdout.
    fn run_shell(
        profiles: &[PathBuf],
        dir: &Path,
        script: Option<&str>,
        tokens: &[&str],
    ) -> String {
        let tokens: Vec<OsString> = tokens.iter().map(OsString::from).collect();
        let text = shell_script(profiles, dir, script, &tokens);
        let out = Command::new(SHELL)
            .args(["-c", &text, "launcher"])
            .env("WHO", "world")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{text}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn shell_processes() {
        let d = tempfile::tempdir().unwrap();
        let profile = d.path().join("p.sh");
        fs::write(&profile, "export FROM_PROFILE=yes\n").unwrap();
        let dir = d.path().canonicalize().unwrap();
        let pwd = dir.display().to_string();
        // A buildpack's script, no arguments.
        assert_eq!(
            run_shell(
                std::slice::from_ref(&profile),
                d.path(),
                Some("echo $FROM_PROFILE $(pwd)"),
                &[]
            ),
            format!("yes {pwd}\n")
        );
        // A buildpack's script with arguments: expanded, not split, appended.
        assert_eq!(
            run_shell(
                &[],
                d.path(),
                Some("printf '<%s>'"),
                &["$WHO", "a b", "it's \"q\""]
            ),
            "<world><a b><it's \"q\">"
        );
        // A user's command: every token expanded.
        assert_eq!(
            run_shell(
                &[profile],
                d.path(),
                None,
                &["printf", "%s|", "$FROM_PROFILE", "$WHO x"]
            ),
            "yes|world x|"
        );
    }
}
