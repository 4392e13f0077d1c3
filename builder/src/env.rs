//! Environments of the build phase, from layers, per the buildpack spec's
//! "Environment" section: layer path variables (`bin` → `PATH`, `lib` →
//! `LD_LIBRARY_PATH` and `LIBRARY_PATH`, `include` → `CPATH`, `pkgconfig` →
//! `PKG_CONFIG_PATH`) and environment files with `.override`, `.default`,
//! `.append`, `.prepend` and `.delim` suffixes.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Environment variables, by name.
pub type Env = BTreeMap<String, String>;

/// The layer path variables for build.
const BUILD_PATHS: &[(&str, &str)] = &[
    ("bin", "PATH"),
    ("lib", "LD_LIBRARY_PATH"),
    ("lib", "LIBRARY_PATH"),
    ("include", "CPATH"),
    ("pkgconfig", "PKG_CONFIG_PATH"),
];

/// Prepends `<layer>/<dir>` to the matching variables (a later layer's
/// paths come first, as the spec orders them: reversed buildpack order).
pub fn add_layer_paths(env: &mut Env, layer_in_sandbox: &str, layer_on_disk: &Path) {
    for (dir, var) in BUILD_PATHS {
        if layer_on_disk.join(dir).is_dir() {
            let path = format!("{layer_in_sandbox}/{dir}");
            let value = match env.get(*var).filter(|v| !v.is_empty()) {
                Some(old) => format!("{path}:{old}"),
                None => path,
            };
            env.insert((*var).to_owned(), value);
        }
    }
}

/// Applies the environment files of one layer's directories, in the order
/// given (e.g. `env/` then `env.build/`). All operations of one layer are
/// applied together so `.delim` files of that layer apply to it.
pub fn apply_layer_env(env: &mut Env, dirs: &[&Path]) {
    #[derive(Default)]
    struct Ops {
        overrides: Vec<String>,
        defaults: Vec<String>,
        appends: Vec<String>,
        prepends: Vec<String>,
        delim: Option<String>,
    }
    let mut vars: BTreeMap<String, Ops> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Ok(value) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let (name, suffix) = file.split_once('.').unwrap_or((file.as_str(), ""));
            let ops = vars.entry(name.to_owned()).or_default();
            match suffix {
                "" | "override" => ops.overrides.push(value),
                "default" => ops.defaults.push(value),
                "append" => ops.appends.push(value),
                "prepend" => ops.prepends.push(value),
                "delim" => ops.delim = Some(value),
                _ => {}
            }
        }
    }
    for (name, ops) in vars {
        let delim = ops.delim.unwrap_or_default();
        // Earlier directories' defaults win; later directories' overrides win.
        if let Some(default) = ops.defaults.first()
            && env.get(&name).is_none_or(|v| v.is_empty())
        {
            env.insert(name.clone(), default.clone());
        }
        if let Some(value) = ops.overrides.last() {
            env.insert(name.clone(), value.clone());
        }
        for value in ops.appends {
            let new = match env.get(&name).filter(|v| !v.is_empty()) {
                Some(old) => format!("{old}{delim}{value}"),
                None => value,
            };
            env.insert(name.clone(), new);
        }
        for value in ops.prepends.into_iter().rev() {
            let new = match env.get(&name).filter(|v| !v.is_empty()) {
                Some(old) => format!("{value}{delim}{old}"),
                None => value,
            };
            env.insert(name.clone(), new);
        }
    }
}

/// The user's build-time variables in `<platform>/env/` (one file per
/// variable, the file name is the name).
pub fn platform_env(platform: &Path) -> Env {
    let mut env = Env::new();
    if let Ok(entries) = fs::read_dir(platform.join("env")) {
        for e in entries.flatten() {
            if let (Some(name), Ok(value)) = (e.file_name().to_str(), fs::read_to_string(e.path()))
            {
                env.insert(name.to_owned(), value);
            }
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, value) in files {
            fs::write(d.path().join(name), value).unwrap();
        }
        d
    }

    #[test]
    fn suffixes() {
        let mut env = Env::from([
            ("PATH".into(), "/usr/bin".into()),
            ("KEEP".into(), "k".into()),
        ]);
        let a = dir(&[
            ("PATH.prepend", "/layers/a/bin"),
            ("PATH.delim", ":"),
            ("FLAGS.append", "-O2"),
            ("FLAGS.delim", " "),
            ("KEEP.default", "ignored"),
            ("NEW.default", "n"),
            ("MODE", "prod"),
        ]);
        let b = dir(&[("MODE.override", "dev"), ("FLAGS.append", "-g")]);
        apply_layer_env(&mut env, &[a.path(), b.path()]);
        assert_eq!(env["PATH"], "/layers/a/bin:/usr/bin");
        assert_eq!(env["FLAGS"], "-O2 -g");
        assert_eq!(env["KEEP"], "k", "a default does not replace a value");
        assert_eq!(env["NEW"], "n");
        assert_eq!(env["MODE"], "dev", "the later directory's override wins");
    }

    #[test]
    fn appends_without_a_delimiter_concatenate() {
        let mut env = Env::from([("X".into(), "a".into())]);
        let d = dir(&[("X.append", "b"), ("Y.prepend", "p")]);
        apply_layer_env(&mut env, &[d.path()]);
        assert_eq!(env["X"], "ab");
        assert_eq!(env["Y"], "p");
    }

    #[test]
    fn layer_paths() {
        let layer = tempfile::tempdir().unwrap();
        fs::create_dir(layer.path().join("bin")).unwrap();
        fs::create_dir(layer.path().join("lib")).unwrap();
        let mut env = Env::from([("PATH".into(), "/usr/bin".into())]);
        add_layer_paths(&mut env, "/layers/bp/l", layer.path());
        assert_eq!(env["PATH"], "/layers/bp/l/bin:/usr/bin");
        assert_eq!(env["LD_LIBRARY_PATH"], "/layers/bp/l/lib");
        assert!(!env.contains_key("CPATH"));
    }
}
