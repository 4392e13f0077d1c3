//! The launch environment, per the buildpack spec's "Environment" section
//! and the platform spec's "Launch Environment".
//!
//! For each buildpack in `metadata.toml` order, for its launch layers in
//! name order: `<layer>/bin` goes before `PATH` and `<layer>/lib` before
//! `LD_LIBRARY_PATH` (one buildpack's layers together, in name order, so
//! the last buildpack's come first); then each layer's `env/`,
//! `env.launch/` and `env.launch/<process type>/` files are applied, in
//! that order. A file is named after its variable, with a suffix for
//! what it does:
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
//! override beats `env.launch/`'s, which beats `env/`'s; an `env/` default
//! is set first and so wins; appends come out `env/` first, prepends
//! `env.launch/<type>/` first.

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

/// Puts `<layer>/bin` of each layer before `PATH` and `<layer>/lib` before
/// `LD_LIBRARY_PATH`, the layers in the order given.
pub fn add_layer_paths(env: &mut Env, layers: &[PathBuf]) {
    for (dir, var) in [("bin", "PATH"), ("lib", "LD_LIBRARY_PATH")] {
        let found: Vec<PathBuf> = layers
            .iter()
            .map(|l| l.join(dir))
            .filter(|d| d.is_dir())
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

/// Applies one layer's environment directories: `env/`, `env.launch/` and,
/// for a process type, `env.launch/<type>/`.
pub fn apply_layer_env(
    env: &mut Env,
    layer: &Path,
    process_type: Option<&str>,
) -> Result<(), LaunchError> {
    let mut dirs = vec![layer.join("env"), layer.join("env.launch")];
    if let Some(kind) = process_type {
        dirs.push(layer.join("env.launch").join(kind));
    }
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
    fn layer(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (path, value) in files {
            let path = d.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, value).unwrap();
        }
        d
    }

    #[test]
    fn env_files() {
        // (what it shows, starting environment, the layer's files, process
        // type, variables expected afterwards (`None`: unset)).
        type Case<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            &'a [(&'a str, Option<&'a str>)],
        );
        let cases: &[Case] = &[
            (
                "a bare name overrides",
                &[("A", "old")],
                &[("env/A", "new")],
                None,
                &[("A", Some("new"))],
            ),
            (
                "override sets",
                &[],
                &[("env/A.override", "x")],
                None,
                &[("A", Some("x"))],
            ),
            (
                "contents are used as they are",
                &[],
                &[("env/A", " two\nlines \n")],
                None,
                &[("A", Some(" two\nlines \n"))],
            ),
            (
                "default fills an unset variable",
                &[],
                &[("env/A.default", "d")],
                None,
                &[("A", Some("d"))],
            ),
            (
                "default fills an empty variable",
                &[("A", "")],
                &[("env/A.default", "d")],
                None,
                &[("A", Some("d"))],
            ),
            (
                "default keeps a value",
                &[("A", "v")],
                &[("env/A.default", "d")],
                None,
                &[("A", Some("v"))],
            ),
            (
                "append without a delimiter concatenates",
                &[("A", "x")],
                &[("env/A.append", "y")],
                None,
                &[("A", Some("xy"))],
            ),
            (
                "append with a delimiter",
                &[("A", "x")],
                &[("env/A.append", "y"), ("env/A.delim", " ")],
                None,
                &[("A", Some("x y"))],
            ),
            (
                "append to nothing has no delimiter",
                &[],
                &[("env/A.append", "y"), ("env/A.delim", ":")],
                None,
                &[("A", Some("y"))],
            ),
            (
                "prepend with a delimiter",
                &[("PATH", "/usr/bin")],
                &[("env/PATH.prepend", "/opt/bin"), ("env/PATH.delim", ":")],
                None,
                &[("PATH", Some("/opt/bin:/usr/bin"))],
            ),
            (
                "prepend to an empty value has no delimiter",
                &[("A", "")],
                &[("env/A.prepend", "p"), ("env/A.delim", ":")],
                None,
                &[("A", Some("p"))],
            ),
            (
                "a delimiter elsewhere in the layer applies",
                &[("A", "x")],
                &[("env/A.delim", ","), ("env.launch/A.append", "y")],
                None,
                &[("A", Some("x,y"))],
            ),
            (
                "env.launch overrides env",
                &[],
                &[("env/A", "1"), ("env.launch/A", "2")],
                None,
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
                Some("web"),
                &[("A", Some("3"))],
            ),
            (
                "another process's directory does not apply",
                &[],
                &[("env.launch/A", "2"), ("env.launch/worker/A", "3")],
                Some("web"),
                &[("A", Some("2"))],
            ),
            (
                "no process type: no process directory",
                &[],
                &[("env.launch/web/A", "3")],
                None,
                &[("A", None)],
            ),
            (
                "env's default wins over env.launch's",
                &[],
                &[("env/A.default", "1"), ("env.launch/A.default", "2")],
                None,
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
                Some("web"),
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
                Some("web"),
                &[("A", Some("3:2:1:0"))],
            ),
            (
                "env.build is not for launch",
                &[],
                &[("env.build/A", "b")],
                None,
                &[("A", None)],
            ),
            (
                "unknown suffixes and nameless files are ignored",
                &[],
                &[("env/A.bogus", "x"), ("env/.hidden", "y")],
                None,
                &[("A", None)],
            ),
            (
                "the name ends at the first period",
                &[],
                &[("env/A.B.default", "x")],
                None,
                &[("A", None), ("A.B", None)],
            ),
            (
                "other variables are left alone",
                &[("KEEP", "k")],
                &[("env/A", "a")],
                None,
                &[("KEEP", Some("k")), ("A", Some("a"))],
            ),
        ];
        for (what, start, files, kind, want) in cases {
            let l = layer(files);
            let mut e = env(start);
            apply_layer_env(&mut e, l.path(), *kind).unwrap();
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
        add_layer_paths(&mut e, &layers);
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
