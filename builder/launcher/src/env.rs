//! The environment that layers set up, per the buildpack spec's
//! "Environment" section and the platform spec's "Launch Environment": at
//! launch, for this launcher; at build, for `slipway-builder`'s lifecycle
//! (the environment of each buildpack's `bin/build`), which uses this
//! module rather than a copy of its rules.
//!
//! For each buildpack in order (`metadata.toml`'s at launch, the group's at
//! build), for its layers in name order ([`apply_buildpack_layers`]):
//! `<layer>/bin` goes before `PATH`, `<layer>/lib` before `LD_LIBRARY_PATH`
//! and, at build only, `<layer>/lib` before `LIBRARY_PATH`,
//! `<layer>/include` before `CPATH` and `<layer>/pkgconfig` before
//! `PKG_CONFIG_PATH` (one buildpack's layers together, in name order, so
//! the last buildpack's come first); then each layer's environment
//! directories are applied, in this order ([`Phase`]):
//!
//! | phase  | directories                                       |
//! |--------|---------------------------------------------------|
//! | build  | `env/`, `env.build/`                              |
//! | launch | `env/`, `env.launch/`, `env.launch/<process type>/` |
//!
//! A file is named after its variable, with a suffix for what it does:
//!
//! | file             | effect                                                  |
//! |------------------|---------------------------------------------------------|
//! | `NAME`           | set (override)                                          |
//! | `NAME.override`  | set (override)                                          |
//! | `NAME.default`   | set only if unset or empty                              |
//! | `NAME.append`    | add after the value, with the delimiter between         |
//! | `NAME.prepend`   | add before the value, with the delimiter between        |
//! | `NAME.delim`     | the delimiter (none without it)                         |
//!
//! Contents are used as they are (no trimming, no shell). The files of one
//! directory apply in name order. The delimiter comes from the same
//! directory, else from another of the layer's directories. Applying the
//! directories one after the other gives the spec's precedence: a process's
//! override beats `env.launch/`'s (or `env.build/`'s), which beats
//! `env/`'s; an `env/` default is set first and so wins; appends come out
//! `env/` first, prepends `env.launch/<type>/` first.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::LaunchError;

/// Environment variables, by name.
pub type Env = BTreeMap<OsString, OsString>;

/// Variables the launcher reads that the process does not see (the
/// platform spec's list, and the platform API variables the lifecycle
/// also drops).
const NOT_PASSED_ON: &[&str] = &[
    "CNB_APP_DIR",
    "CNB_LAYERS_DIR",
    "CNB_PROCESS_TYPE",
    "CNB_PLATFORM_API",
    "CNB_DEPRECATION_MODE",
];

/// `PATH` entries the launcher removes: the process symlinks' directory and
/// the launcher's own.
const NOT_ON_PATH: &[&str] = &["/cnb/process", "/cnb/lifecycle"];

/// The environment a process starts from: the launcher's own, less the
/// launcher's inputs, with `/cnb/process` and `/cnb/lifecycle` out of `PATH`.
pub fn base(mut env: Env) -> Env {
    for name in NOT_PASSED_ON {
        env.remove(OsStr::new(name));
    }
    if let Some(path) = env.get_mut(OsStr::new("PATH")) {
        let kept: Vec<&[u8]> = path
            .as_bytes()
            .split(|b| *b == b':')
            .filter(|p| !NOT_ON_PATH.iter().any(|n| n.as_bytes() == *p))
            .collect();
        *path = OsString::from_vec(kept.join(&b':'));
    }
    env
}

/// One buildpack's launch layers, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildpackLayers {
    pub layers: Vec<PathBuf>,
}

/// The launch layers of each buildpack in `dirs` (`<layers>/<buildpack
/// dir>`, in buildpack order; a missing directory has none).
///
/// A layer is a directory; in an image every one is a launch layer (the
/// exporter puts no other there, and no `<layer>.toml`). Where a
/// `<layer>.toml` is present, as in a build's layers directory, it must
/// say `launch = true` under `[types]` (or at the top, for Buildpack APIs
/// before 0.6).
pub fn launch_layers(dirs: &[PathBuf]) -> Result<Vec<BuildpackLayers>, LaunchError> {
    let mut all = Vec::new();
    for dir in dirs {
        let mut layers = Vec::new();
        for path in sorted_entries(dir)? {
            if !path.is_dir() {
                continue;
            }
            let mut toml_name = path.file_name().unwrap_or_default().to_owned();
            toml_name.push(".toml");
            let toml_path = dir.join(toml_name);
            match fs::read_to_string(&toml_path) {
                Ok(text) => {
                    if !declares_launch(&text).map_err(|e| LaunchError::Layers {
                        path: toml_path.clone(),
                        reason: e,
                    })? {
                        continue;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LaunchError::Layers {
                        path: toml_path,
                        reason: e.to_string(),
                    });
                }
            }
            layers.push(path);
        }
        all.push(BuildpackLayers { layers });
    }
    Ok(all)
}

fn declares_launch(text: &str) -> Result<bool, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let flag = |t: &toml::Table| t.get("launch").and_then(toml::Value::as_bool);
    Ok(table
        .get("types")
        .and_then(toml::Value::as_table)
        .and_then(flag)
        .or_else(|| flag(&table))
        .unwrap_or(false))
}

/// The entries of `dir`, sorted by name; none if it does not exist.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, LaunchError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(LaunchError::Layers {
                path: dir.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LaunchError::Layers {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

/// The regular files (or links to them) in `dir`, sorted by name.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, LaunchError> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_file())
        .collect())
}

/// Which environment is being made: it decides the layers' environment
/// directories and path variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase<'a> {
    /// For a buildpack's `bin/build`, from the build layers of the
    /// buildpacks before it.
    Build,
    /// For a process (of the type given, if it is a buildpack's process),
    /// from the launch layers.
    Launch(Option<&'a str>),
}

impl Phase<'_> {
    /// The variables that a layer's subdirectories go before, as (subdirectory,
    /// variable).
    fn path_vars(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Phase::Build => &[
                ("bin", "PATH"),
                ("lib", "LD_LIBRARY_PATH"),
                ("lib", "LIBRARY_PATH"),
                ("include", "CPATH"),
                ("pkgconfig", "PKG_CONFIG_PATH"),
            ],
            Phase::Launch(_) => &[("bin", "PATH"), ("lib", "LD_LIBRARY_PATH")],
        }
    }

    /// A layer's environment directories, in the order they apply.
    fn env_dirs(self, layer: &Path) -> Vec<PathBuf> {
        match self {
            Phase::Build => vec![layer.join("env"), layer.join("env.build")],
            Phase::Launch(process_type) => {
                let mut dirs = vec![layer.join("env"), layer.join("env.launch")];
                if let Some(kind) = process_type {
                    dirs.push(layer.join("env.launch").join(kind));
                }
                dirs
            }
        }
    }
}

/// Applies one buildpack's layers (in name order): their paths, then each
/// one's environment files. `shown_as` maps a layer's path here to the path
/// the process will see (the builder's sandbox mounts the layers
/// elsewhere; the launcher passes `Path::to_path_buf`).
pub fn apply_buildpack_layers(
    env: &mut Env,
    layers: &[PathBuf],
    phase: Phase,
    shown_as: impl Fn(&Path) -> PathBuf,
) -> Result<(), LaunchError> {
    add_layer_paths(env, layers, phase, shown_as);
    for layer in layers {
        apply_layer_env(env, layer, phase)?;
    }
    Ok(())
}

/// Puts the phase's path subdirectories of each layer that has them
/// before their variables (`<layer>/bin` before `PATH`, …), the layers in
/// the order given, as `shown_as` names them.
pub fn add_layer_paths(
    env: &mut Env,
    layers: &[PathBuf],
    phase: Phase,
    shown_as: impl Fn(&Path) -> PathBuf,
) {
    for (dir, var) in phase.path_vars() {
        let found: Vec<PathBuf> = layers
            .iter()
            .filter(|l| l.join(dir).is_dir())
            .map(|l| shown_as(l).join(dir))
            .collect();
        if found.is_empty() {
            continue;
        }
        let mut value = OsString::new();
        for (i, d) in found.iter().enumerate() {
            if i > 0 {
                value.push(":");
            }
            value.push(d);
        }
        prepend(env, OsStr::new(var), value, OsStr::new(":"));
    }
}

/// What an environment file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Override,
    Default,
    Append,
    Prepend,
    Delim,
}

/// `NAME.suffix` → (`NAME`, what it does); `None` for an unknown suffix or
/// a name no variable can have.
fn parse_file_name(file: &OsStr) -> Option<(&OsStr, Op)> {
    let bytes = file.as_bytes();
    let (name, suffix) = match bytes.iter().position(|b| *b == b'.') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &b""[..]),
    };
    if name.is_empty() || name.contains(&b'=') {
        return None;
    }
    let op = match suffix {
        b"" | b"override" => Op::Override,
        b"default" => Op::Default,
        b"append" => Op::Append,
        b"prepend" => Op::Prepend,
        b"delim" => Op::Delim,
        _ => return None,
    };
    Some((OsStr::from_bytes(name), op))
}

/// Applies one layer's environment directories for `phase` (see
/// [`Phase`]).
pub fn apply_layer_env(env: &mut Env, layer: &Path, phase: Phase) -> Result<(), LaunchError> {
    let dirs = phase.env_dirs(layer);
    // Every directory's files first, for the layer's delimiters.
    let mut files: Vec<Vec<(OsString, Op, OsString)>> = Vec::new();
    let mut layer_delims: BTreeMap<OsString, OsString> = BTreeMap::new();
    for dir in &dirs {
        let mut these = Vec::new();
        for path in sorted_files(dir)? {
            let file = path.file_name().unwrap_or_default();
            let Some((name, op)) = parse_file_name(file) else {
                continue;
            };
            let value = fs::read(&path).map_err(|e| LaunchError::Layers {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let value = OsString::from_vec(value);
            if op == Op::Delim {
                layer_delims
                    .entry(name.to_owned())
                    .or_insert_with(|| value.clone());
            }
            these.push((name.to_owned(), op, value));
        }
        files.push(these);
    }
    for these in files {
        let delims: BTreeMap<&OsStr, &OsStr> = these
            .iter()
            .filter(|(_, op, _)| *op == Op::Delim)
            .map(|(n, _, v)| (n.as_os_str(), v.as_os_str()))
            .collect();
        let delim_of = |name: &OsStr| -> OsString {
            delims
                .get(name)
                .map(|d| d.to_os_string())
                .or_else(|| layer_delims.get(name).cloned())
                .unwrap_or_default()
        };
        for (name, op, value) in &these {
            match op {
                Op::Override => {
                    env.insert(name.clone(), value.clone());
                }
                Op::Default => {
                    if env.get(name).is_none_or(|v| v.is_empty()) {
                        env.insert(name.clone(), value.clone());
                    }
                }
                Op::Append => {
                    let delim = delim_of(name);
                    let new = match env.get(name).filter(|v| !v.is_empty()) {
                        Some(old) => {
                            let mut new = old.clone();
                            new.push(&delim);
                            new.push(value);
                            new
                        }
                        None => value.clone(),
                    };
                    env.insert(name.clone(), new);
                }
                Op::Prepend => prepend(env, name, value.clone(), &delim_of(name)),
                Op::Delim => {}
            }
        }
    }
    Ok(())
}

fn prepend(env: &mut Env, name: &OsStr, mut value: OsString, delim: &OsStr) {
    if let Some(old) = env.get(name).filter(|v| !v.is_empty()) {
        value.push(delim);
        value.push(old);
    }
    env.insert(name.to_owned(), value);
}

/// The programs in a layer's `exec.d/` and, for a process type,
/// `exec.d/<type>/`, in name order.
pub fn exec_d_programs(
    layer: &Path,
    process_type: Option<&str>,
) -> Result<Vec<PathBuf>, LaunchError> {
    let mut programs = sorted_files(&layer.join("exec.d"))?;
    if let Some(kind) = process_type {
        programs.extend(sorted_files(&layer.join("exec.d").join(kind))?);
    }
    Ok(programs)
}

/// Runs an `exec.d` program in `env` with working directory `app`, and
/// sets the variables it writes to file descriptor 3 (TOML: `NAME =
/// "value"` lines).
pub fn run_exec_d(env: &mut Env, program: &Path, app: &Path) -> Result<(), LaunchError> {
    let fail = |reason: String| LaunchError::ExecD {
        program: program.to_owned(),
        reason,
    };
    let (mut reader, writer) = io::pipe().map_err(|e| fail(format!("no pipe: {e}")))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
    let mut command = Command::new(program);
    command
        .env_clear()
        .envs(env.iter())
        .current_dir(app)
        .stdin(Stdio::null());
    // SAFETY: between fork and exec the closure only calls dup2 and fcntl,
    // which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // Already there, but close-on-exec: clear that.
                if fcntl(3, F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if dup2(fd, 3) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| fail(e.to_string()))?;
    // Ours closed, the read ends when the program (and anything it left
    // running with the descriptor) is done with it.
    drop(command);
    drop(writer);
    let mut out = Vec::new();
    let read = reader.read_to_end(&mut out);
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    if !status.success() {
        return Err(fail(format!("it exited with {status}")));
    }
    read.map_err(|e| fail(format!("could not read its output: {e}")))?;
    let text = String::from_utf8(out).map_err(|_| fail("its output is not UTF-8".into()))?;
    let vars: BTreeMap<String, String> = toml::from_str(&text).map_err(|e| {
        fail(format!(
            "its output is not TOML of NAME = \"value\" lines: {e}"
        ))
    })?;
    for (name, value) in vars {
        env.insert(name.into(), value.into());
    }
    Ok(())
}

const F_SETFD: std::ffi::c_int = 2;

unsafe extern "C" {
    fn dup2(old: std::ffi::c_int, new: std::ffi::c_int) -> std::ffi::c_int;
    fn fcntl(fd: std::ffi::c_int, cmd: std::ffi::c_int, ...) -> std::ffi::c_int;
}

/// The shell profiles of a layer: `profile.d/` and, for a process type,
/// `profile.d/<type>/`, in name order.
pub fn profiles(layer: &Path, process_type: Option<&str>) -> Result<Vec<PathBuf>, LaunchError> {
    let mut files = sorted_files(&layer.join("profile.d"))?;
    if let Some(kind) = process_type {
        files.extend(sorted_files(&layer.join("profile.d").join(kind))?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    /// A layer directory with `files` (paths relative to the layer).
    use crate::tests::tree as layer;

    #[test]
    fn env_files() {
        // (what it shows, starting environment, the layer's files, phase,
        // variables expected afterwards (`None`: unset)).
        type Case<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            Phase<'a>,
            &'a [(&'a str, Option<&'a str>)],
        );
        let cases: &[Case] = &[
            (
                "a bare name overrides",
                &[("A", "old")],
                &[("env/A", "new")],
                Phase::Launch(None),
                &[("A", Some("new"))],
            ),
            (
                "override sets",
                &[],
                &[("env/A.override", "x")],
                Phase::Launch(None),
                &[("A", Some("x"))],
            ),
            (
                "contents are used as they are",
                &[],
                &[("env/A", " two\nlines \n")],
                Phase::Launch(None),
                &[("A", Some(" two\nlines \n"))],
            ),
            (
                "default fills an unset variable",
                &[],
                &[("env/A.default", "d")],
                Phase::Launch(None),
                &[("A", Some("d"))],
            ),
            (
                "default fills an empty variable",
                &[("A", "")],
                &[("env/A.default", "d")],
                Phase::Launch(None),
                &[("A", Some("d"))],
            ),
            (
                "default keeps a value",
                &[("A", "v")],
                &[("env/A.default", "d")],
                Phase::Launch(None),
                &[("A", Some("v"))],
            ),
            (
                "append without a delimiter concatenates",
                &[("A", "x")],
                &[("env/A.append", "y")],
                Phase::Launch(None),
                &[("A", Some("xy"))],
            ),
            (
                "append with a delimiter",
                &[("A", "x")],
                &[("env/A.append", "y"), ("env/A.delim", " ")],
                Phase::Launch(None),
                &[("A", Some("x y"))],
            ),
            (
                "append to nothing has no delimiter",
                &[],
                &[("env/A.append", "y"), ("env/A.delim", ":")],
                Phase::Launch(None),
                &[("A", Some("y"))],
            ),
            (
                "prepend with a delimiter",
                &[("PATH", "/usr/bin")],
                &[("env/PATH.prepend", "/opt/bin"), ("env/PATH.delim", ":")],
                Phase::Launch(None),
                &[("PATH", Some("/opt/bin:/usr/bin"))],
            ),
            (
                "prepend to an empty value has no delimiter",
                &[("A", "")],
                &[("env/A.prepend", "p"), ("env/A.delim", ":")],
                Phase::Launch(None),
                &[("A", Some("p"))],
            ),
            (
                "a delimiter elsewhere in the layer applies",
                &[("A", "x")],
                &[("env/A.delim", ","), ("env.launch/A.append", "y")],
                Phase::Launch(None),
                &[("A", Some("x,y"))],
            ),
            (
                "env.launch overrides env",
                &[],
                &[("env/A", "1"), ("env.launch/A", "2")],
                Phase::Launch(None),
                &[("A", Some("2"))],
            ),
            (
                "the process's directory overrides env.launch",
                &[],
                &[
                    ("env/A", "1"),
                    ("env.launch/A", "2"),
                    ("env.launch/web/A", "3"),
                ],
                Phase::Launch(Some("web")),
                &[("A", Some("3"))],
            ),
            (
                "another process's directory does not apply",
                &[],
                &[("env.launch/A", "2"), ("env.launch/worker/A", "3")],
                Phase::Launch(Some("web")),
                &[("A", Some("2"))],
            ),
            (
                "no process type: no process directory",
                &[],
                &[("env.launch/web/A", "3")],
                Phase::Launch(None),
                &[("A", None)],
            ),
            (
                "env's default wins over env.launch's",
                &[],
                &[("env/A.default", "1"), ("env.launch/A.default", "2")],
                Phase::Launch(None),
                &[("A", Some("1"))],
            ),
            (
                "appends: env, then env.launch, then the process's",
                &[("A", "0")],
                &[
                    ("env/A.append", "1"),
                    ("env/A.delim", ":"),
                    ("env.launch/A.append", "2"),
                    ("env.launch/web/A.append", "3"),
                ],
                Phase::Launch(Some("web")),
                &[("A", Some("0:1:2:3"))],
            ),
            (
                "prepends: the process's, then env.launch, then env",
                &[("A", "0")],
                &[
                    ("env/A.prepend", "1"),
                    ("env/A.delim", ":"),
                    ("env.launch/A.prepend", "2"),
                    ("env.launch/web/A.prepend", "3"),
                ],
                Phase::Launch(Some("web")),
                &[("A", Some("3:2:1:0"))],
            ),
            (
                "env.build is not for launch",
                &[],
                &[("env.build/A", "b")],
                Phase::Launch(None),
                &[("A", None)],
            ),
            (
                "env.build overrides env at build",
                &[],
                &[("env/A", "1"), ("env.build/A", "2")],
                Phase::Build,
                &[("A", Some("2"))],
            ),
            (
                "env.launch is not for build",
                &[],
                &[("env.launch/A", "l"), ("env.launch/web/B", "w")],
                Phase::Build,
                &[("A", None), ("B", None)],
            ),
            (
                "build: env's default wins, appends env then env.build",
                &[("P", "0")],
                &[
                    ("env/A.default", "1"),
                    ("env.build/A.default", "2"),
                    ("env/P.append", "1"),
                    ("env.build/P.append", "2"),
                    ("env.build/P.delim", ","),
                ],
                Phase::Build,
                &[("A", Some("1")), ("P", Some("0,1,2"))],
            ),
            (
                "build: prepends env.build first, each directory its own delimiter",
                &[("P", "0")],
                &[
                    ("env/P.prepend", "1"),
                    ("env/P.delim", ":"),
                    ("env.build/P.prepend", "2"),
                    ("env.build/P.delim", ";"),
                ],
                Phase::Build,
                &[("P", Some("2;1:0"))],
            ),
            (
                "unknown suffixes and nameless files are ignored",
                &[],
                &[("env/A.bogus", "x"), ("env/.hidden", "y")],
                Phase::Launch(None),
                &[("A", None)],
            ),
            (
                "the name ends at the first period",
                &[],
                &[("env/A.B.default", "x")],
                Phase::Launch(None),
                &[("A", None), ("A.B", None)],
            ),
            (
                "other variables are left alone",
                &[("KEEP", "k")],
                &[("env/A", "a")],
                Phase::Launch(None),
                &[("KEEP", Some("k")), ("A", Some("a"))],
            ),
        ];
        for (what, start, files, phase, want) in cases {
            let l = layer(files);
            let mut e = env(start);
            apply_layer_env(&mut e, l.path(), *phase).unwrap();
            for (name, value) in *want {
                assert_eq!(
                    e.get(OsStr::new(name)).map(|v| v.to_str().unwrap()),
                    *value,
                    "{what}: {name}"
                );
            }
        }
    }

    #[test]
    fn base_environment() {
        let e = base(env(&[
            ("PATH", "/cnb/process:/usr/bin:/cnb/lifecycle:/bin"),
            ("CNB_APP_DIR", "/w"),
            ("CNB_LAYERS_DIR", "/l"),
            ("CNB_PROCESS_TYPE", "web"),
            ("CNB_PLATFORM_API", "0.13"),
            ("CNB_EXEC_ENV", "production"),
            ("HOME", "/home/cnb"),
        ]));
        assert_eq!(
            e,
            env(&[
                ("PATH", "/usr/bin:/bin"),
                ("CNB_EXEC_ENV", "production"),
                ("HOME", "/home/cnb")
            ])
        );
    }

    #[test]
    fn layer_paths_one_buildpack_in_name_order() {
        let bp = layer(&[
            ("a/bin/x", ""),
            ("a/lib/x", ""),
            ("b/bin/x", ""),
            ("c/x", ""),
        ]);
        let layers = launch_layers(&[bp.path().to_owned()])
            .unwrap()
            .remove(0)
            .layers;
        let mut e = env(&[("PATH", "/usr/bin")]);
        add_layer_paths(&mut e, &layers, Phase::Launch(None), Path::to_path_buf);
        let p = bp.path().display();
        assert_eq!(
            e[OsStr::new("PATH")],
            OsString::from(format!("{p}/a/bin:{p}/b/bin:/usr/bin"))
        );
        assert_eq!(
            e[OsStr::new("LD_LIBRARY_PATH")],
            OsString::from(format!("{p}/a/lib"))
        );
    }

    #[test]
    fn build_paths_as_the_sandbox_shows_them() {
        let layers = layer(&[
            ("a/bp1/x/bin/t", ""),
            ("a/bp1/x/lib/t", ""),
            ("a/bp1/y/include/t", ""),
            ("a/bp1/y/pkgconfig/t", ""),
            ("a/bp1/y/bin/t", ""),
            ("a/bp2/z/bin/t", ""),
        ]);
        let root = layers.path().join("a");
        let shown_as = |p: &Path| Path::new("/layers").join(p.strip_prefix(&root).unwrap());
        let mut e = env(&[("PATH", "/usr/bin"), ("CPATH", "")]);
        let bp1 = [root.join("bp1/x"), root.join("bp1/y")];
        apply_buildpack_layers(&mut e, &bp1, Phase::Build, shown_as).unwrap();
        apply_buildpack_layers(&mut e, &[root.join("bp2/z")], Phase::Build, shown_as).unwrap();
        let get = |name: &str| e.get(OsStr::new(name)).map(|v| v.to_str().unwrap());
        assert_eq!(
            get("PATH"),
            Some("/layers/bp2/z/bin:/layers/bp1/x/bin:/layers/bp1/y/bin:/usr/bin"),
            "the later buildpack first, one buildpack's layers in name order"
        );
        assert_eq!(get("LD_LIBRARY_PATH"), Some("/layers/bp1/x/lib"));
        assert_eq!(get("LIBRARY_PATH"), Some("/layers/bp1/x/lib"));
        assert_eq!(
            get("CPATH"),
            Some("/layers/bp1/y/include"),
            "an empty value takes no delimiter"
        );
        assert_eq!(get("PKG_CONFIG_PATH"), Some("/layers/bp1/y/pkgconfig"));

        // At launch, only PATH and LD_LIBRARY_PATH.
        let mut e = Env::new();
        apply_buildpack_layers(&mut e, &bp1, Phase::Launch(None), Path::to_path_buf).unwrap();
        let names: Vec<_> = e.keys().map(|k| k.to_str().unwrap()).collect();
        assert_eq!(names, ["LD_LIBRARY_PATH", "PATH"]);
    }

    #[test]
    fn launch_layers_follow_layer_toml_when_present() {
        let bp = layer(&[
            ("image/x", ""),
            ("launch/x", ""),
            ("launch.toml", "[types]\nlaunch = true\n"),
            ("build/x", ""),
            ("build.toml", "[types]\nbuild = true\nlaunch = false\n"),
            ("untyped/x", ""),
            ("untyped.toml", "[metadata]\nversion = \"1\"\n"),
            ("old/x", ""),
            ("old.toml", "launch = true\n"),
            ("a-file", ""),
        ]);
        let missing = bp.path().join("no-such-buildpack");
        let all = launch_layers(&[missing, bp.path().to_owned()]).unwrap();
        assert!(all[0].layers.is_empty());
        let names: Vec<_> = all[1]
            .layers
            .iter()
            .map(|l| l.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["image", "launch", "old"]);

        fs::write(bp.path().join("image.toml"), "not toml [").unwrap();
        let err = launch_layers(&[bp.path().to_owned()]).unwrap_err();
        assert!(err.to_string().contains("image.toml"), "{err}");
    }

    #[test]
    fn exec_d_sets_what_it_writes_to_fd_3() {
        let l = layer(&[
            (
                "exec.d/a",
                "#!/bin/sh\nprintf 'FROM_A = \"%s\"\\nSEEN = \"%s\"\\n' \"$(pwd)\" \"$BEFORE\" >&3\n",
            ),
            (
                "exec.d/web/b",
                "#!/bin/sh\nprintf 'FROM_A = \"b\"\\n' >&3\n",
            ),
            ("exec.d/worker/c", "#!/bin/sh\nexit 1\n"),
        ]);
        for p in ["exec.d/a", "exec.d/web/b", "exec.d/worker/c"] {
            fs::set_permissions(l.path().join(p), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let app = tempfile::tempdir().unwrap();
        let programs = exec_d_programs(l.path(), Some("web")).unwrap();
        assert_eq!(
            programs,
            [l.path().join("exec.d/a"), l.path().join("exec.d/web/b")]
        );
        let mut e = env(&[("BEFORE", "before"), ("PATH", "/usr/bin:/bin")]);
        run_exec_d(&mut e, &programs[0], app.path()).unwrap();
        let app_dir = app.path().canonicalize().unwrap();
        assert_eq!(e[OsStr::new("FROM_A")], app_dir.as_os_str());
        assert_eq!(e[OsStr::new("SEEN")], "before");
        run_exec_d(&mut e, &programs[1], app.path()).unwrap();
        assert_eq!(e[OsStr::new("FROM_A")], "b");

        let err = run_exec_d(&mut e, &l.path().join("exec.d/worker/c"), app.path()).unwrap_err();
        assert!(err.to_string().contains("exit status: 1"), "{err}");
    }

    #[test]
    fn exec_d_output_must_be_toml_strings() {
        let l = layer(&[("exec.d/bad", "#!/bin/sh\necho 'X = 1' >&3\n")]);
        let program = l.path().join("exec.d/bad");
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        let err = run_exec_d(&mut Env::new(), &program, l.path()).unwrap_err();
        assert!(err.to_string().contains("not TOML"), "{err}");
    }

    #[test]
    fn profiles_in_name_order() {
        let l = layer(&[
            ("profile.d/b.sh", ""),
            ("profile.d/a.sh", ""),
            ("profile.d/web/c.sh", ""),
        ]);
        let p = profiles(l.path(), Some("web")).unwrap();
        let names: Vec<_> = p
            .iter()
            .map(|p| p.strip_prefix(l.path()).unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                PathBuf::from("profile.d/a.sh"),
                "profile.d/b.sh".into(),
                "profile.d/web/c.sh".into()
            ]
        );
        assert_eq!(profiles(l.path(), None).unwrap().len(), 2);
    }
}
