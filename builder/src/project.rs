//! The app's own `project.toml`: the Cloud Native Buildpacks project
//! descriptor (extension spec, schema 0.2: `[_]` and `[io.buildpacks]`; and
//! the older `[project]` / `[build]` form that pack still accepts).
//!
//! What a build takes from it: which files reach the build (`include` or
//! `exclude`, gitignore patterns: the others are removed from the
//! workspace before any buildpack runs, so they never reach the app
//! layer), build-time variables (`build.env`, below the request's own),
//! an explicit group of buildpacks instead of detection (from the builder
//! by `id`@`version`, from a directory of the app by `uri` — an app-local
//! buildpack —, or an inline `script`), and `pre`/`post` groups added to
//! every group. A descriptor that cannot be used fails the build with a
//! sentence naming the key; keys it does not know are warned about.

use std::path::{Component, Path, PathBuf};

use toml::Value;

/// One entry of a group the descriptor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A buildpack of the builder (`version` empty: any).
    Builder { id: String, version: String },
    /// A buildpack in the app, at this path relative to its root.
    AppLocal { path: PathBuf },
    /// An inline buildpack: its build script.
    Inline {
        id: String,
        api: String,
        shell: String,
        script: String,
    },
}

/// What a build uses from `project.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub env: Vec<(String, String)>,
    pub group: Vec<Entry>,
    pub pre: Vec<Entry>,
    pub post: Vec<Entry>,
    /// Debian packages to install (`[[io.buildpacks.deb-packages]]`-style
    /// lists and `[com.heroku.buildpacks.deb-packages] install`).
    pub deb_packages: Vec<String>,
    /// Said in the build log: keys not understood, settings not used.
    pub warnings: Vec<String>,
}

/// Reads `project.toml` at the app's root, if there is one. An error is a
/// sentence naming the key.
pub fn read(app: &Path) -> Result<Option<Descriptor>, String> {
    let path = app.join("project.toml");
    // Read by the server, outside the sandbox: never through a link.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err("project.toml is a link: commit the file itself".into());
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("project.toml cannot be read: {e}")),
    };
    parse(&text).map(Some)
}

/// Parses a descriptor.
pub fn parse(text: &str) -> Result<Descriptor, String> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("project.toml is not valid TOML: {}", e.message()))?;
    let mut d = Descriptor::default();
    let known_top = ["_", "io", "project", "build", "metadata", "com"];
    if let Some(under) = doc.get("_") {
        let t = table(under, "_")?;
        match t.get("schema-version") {
            Some(Value::String(v)) if v == "0.2" || v == "0.1" => {}
            Some(Value::String(v)) => {
                return Err(format!(
                    "project.toml: _.schema-version {v:?} is not a schema Slipway knows (0.2)"
                ));
            }
            Some(_) => return Err("project.toml: _.schema-version must be a string".into()),
            None => {
                return Err(
                    "project.toml: the [_] table must hold schema-version (\"0.2\")".into(),
                );
            }
        }
        warn_unknown(
            t,
            "_",
            &[
                "schema-version",
                "id",
                "name",
                "version",
                "authors",
                "documentation-url",
                "source-url",
                "licenses",
                "metadata",
            ],
            &mut d.warnings,
        );
    }
    // schema 0.2: [io.buildpacks]
    if let Some(io) = doc.get("io") {
        let io = table(io, "io")?;
        for (k, _) in io {
            if k != "buildpacks" {
                d.warnings
                    .push(format!("project.toml: io.{k} is not used by Slipway"));
            }
        }
        if let Some(bp) = io.get("buildpacks") {
            let bp = table(bp, "io.buildpacks")?;
            warn_unknown(
                bp,
                "io.buildpacks",
                &[
                    "builder",
                    "include",
                    "exclude",
                    "group",
                    "pre",
                    "post",
                    "build",
                    "env",
                    "deb-packages",
                    "schema-version",
                ],
                &mut d.warnings,
            );
            if bp.contains_key("builder") {
                d.warnings.push(
                    "project.toml: io.buildpacks.builder is not used: a build runs on the builder \
                     its request names (one the admin approved)"
                        .into(),
                );
            }
            d.include = strings(bp.get("include"), "io.buildpacks.include")?;
            d.exclude = strings(bp.get("exclude"), "io.buildpacks.exclude")?;
            d.group = entries(bp.get("group"), "io.buildpacks.group")?;
            for (key, out) in [("pre", &mut d.pre), ("post", &mut d.post)] {
                if let Some(v) = bp.get(key) {
                    let t = table(v, &format!("io.buildpacks.{key}"))?;
                    warn_unknown(
                        t,
                        &format!("io.buildpacks.{key}"),
                        &["group"],
                        &mut d.warnings,
                    );
                    *out = entries(t.get("group"), &format!("io.buildpacks.{key}.group"))?;
                }
            }
            if let Some(build) = bp.get("build") {
                let t = table(build, "io.buildpacks.build")?;
                warn_unknown(t, "io.buildpacks.build", &["env"], &mut d.warnings);
                d.env = env(t.get("env"), "io.buildpacks.build.env")?;
            }
            if let Some(e) = bp.get("env") {
                d.env.extend(env(Some(e), "io.buildpacks.env")?);
            }
            if let Some(debs) = bp.get("deb-packages") {
                d.deb_packages
                    .extend(deb_packages(debs, "io.buildpacks.deb-packages")?);
            }
        }
    }
    // The older form: [project], [build], [metadata].
    if let Some(build) = doc.get("build") {
        let t = table(build, "build")?;
        warn_unknown(
            t,
            "build",
            &["include", "exclude", "buildpacks", "env", "builder"],
            &mut d.warnings,
        );
        d.include
            .extend(strings(t.get("include"), "build.include")?);
        d.exclude
            .extend(strings(t.get("exclude"), "build.exclude")?);
        if d.group.is_empty() {
            d.group = entries(t.get("buildpacks"), "build.buildpacks")?;
        }
        d.env.extend(env(t.get("env"), "build.env")?);
        if t.contains_key("builder") {
            d.warnings
                .push("project.toml: build.builder is not used: a build runs on the builder its request names".into());
        }
    }
    // Heroku's Debian packages buildpack, which tools migrating from the
    // heroku builder have: [com.heroku.buildpacks.deb-packages] install.
    if let Some(heroku) = doc
        .get("com")
        .and_then(|c| c.get("heroku"))
        .and_then(|h| h.get("buildpacks"))
        .and_then(|b| b.get("deb-packages"))
    {
        let t = table(heroku, "com.heroku.buildpacks.deb-packages")?;
        if let Some(install) = t.get("install") {
            d.deb_packages.extend(deb_packages(
                install,
                "com.heroku.buildpacks.deb-packages.install",
            )?);
        }
    }
    for k in doc.keys() {
        if !known_top.contains(&k.as_str()) {
            d.warnings
                .push(format!("project.toml: [{k}] is not used by Slipway"));
        }
    }
    if !d.include.is_empty() && !d.exclude.is_empty() {
        return Err(
            "project.toml: include and exclude cannot both be given (the spec makes them exclusive)"
                .into(),
        );
    }
    for p in d.include.iter().chain(&d.exclude) {
        if p.trim().is_empty() {
            return Err("project.toml: an empty include or exclude pattern".into());
        }
    }
    Ok(d)
}

fn table<'a>(v: &'a Value, key: &str) -> Result<&'a toml::Table, String> {
    v.as_table()
        .ok_or_else(|| format!("project.toml: {key} must be a table"))
}

fn warn_unknown(t: &toml::Table, key: &str, known: &[&str], warnings: &mut Vec<String>) {
    for k in t.keys() {
        if !known.contains(&k.as_str()) {
            warnings.push(format!(
                "project.toml: {key}.{k} is not a key Slipway knows; ignored"
            ));
        }
    }
}

fn strings(v: Option<&Value>, key: &str) -> Result<Vec<String>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    v.as_array()
        .ok_or_else(|| format!("project.toml: {key} must be a list of strings"))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("project.toml: {key} must be a list of strings"))
        })
        .collect()
}

fn env(v: Option<&Value>, key: &str) -> Result<Vec<(String, String)>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let list = v.as_array().ok_or_else(|| {
        format!("project.toml: {key} must be a list of tables with name and value")
    })?;
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let t = table(e, &at)?;
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("project.toml: {at} has no name"))?;
        let value = t
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("project.toml: {at} ({name}) has no string value"))?;
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(format!(
                "project.toml: {at}.name {name:?} is not a variable name"
            ));
        }
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn deb_packages(v: &Value, key: &str) -> Result<Vec<String>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("project.toml: {key} must be a list"))?;
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        // A name, or a table with `name` (as heroku's buildpack allows).
        let name = match e {
            Value::String(s) => s.as_str(),
            Value::Table(t) => t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("project.toml: {key}[{i}] has no name"))?,
            _ => return Err(format!("project.toml: {key}[{i}] must be a package name")),
        };
        out.push(name.to_owned());
    }
    Ok(out)
}

fn entries(v: Option<&Value>, key: &str) -> Result<Vec<Entry>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let list = v
        .as_array()
        .ok_or_else(|| format!("project.toml: {key} must be a list of buildpacks"))?;
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let t = table(e, &at)?;
        for k in t.keys() {
            if !["id", "version", "uri", "script"].contains(&k.as_str()) {
                return Err(format!(
                    "project.toml: {at}.{k} is not a buildpack key (id, version, uri, script)"
                ));
            }
        }
        let id = t.get("id").and_then(Value::as_str).unwrap_or("");
        if let Some(script) = t.get("script") {
            let s = table(script, &format!("{at}.script"))?;
            let inline = s
                .get("inline")
                .and_then(Value::as_str)
                .filter(|x| !x.trim().is_empty())
                .ok_or_else(|| format!("project.toml: {at}.script has no inline script"))?;
            let api = s
                .get("api")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("project.toml: {at}.script has no api (the Buildpack API it follows, such as \"0.10\")"))?;
            if t.contains_key("uri") || t.contains_key("version") {
                return Err(format!(
                    "project.toml: {at} has a script and a uri or version: give only one"
                ));
            }
            out.push(Entry::Inline {
                id: if id.is_empty() {
                    format!("inline-{i}")
                } else {
                    id.to_owned()
                },
                api: api.to_owned(),
                shell: s
                    .get("shell")
                    .and_then(Value::as_str)
                    .unwrap_or("/bin/sh")
                    .to_owned(),
                script: inline.to_owned(),
            });
            continue;
        }
        if let Some(uri) = t.get("uri") {
            let uri = uri
                .as_str()
                .ok_or_else(|| format!("project.toml: {at}.uri must be a string"))?;
            out.push(Entry::AppLocal {
                path: app_path(uri)
                    .map_err(|why| format!("project.toml: {at}.uri {uri:?} {why}"))?,
            });
            continue;
        }
        if id.is_empty() {
            return Err(format!(
                "project.toml: {at} names no buildpack: give id, uri or script"
            ));
        }
        out.push(Entry::Builder {
            id: id.to_owned(),
            version: t
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        });
    }
    Ok(out)
}

/// A `uri` must name a directory inside the app: a relative path (or a
/// `file://` URI without host) that does not climb out of it.
fn app_path(uri: &str) -> Result<PathBuf, &'static str> {
    let path = if let Some(rest) = uri.strip_prefix("file://") {
        rest
    } else if uri.contains("://") || uri.starts_with("urn:") {
        return Err("is not a directory of the app: remote buildpacks are not fetched");
    } else {
        uri
    };
    let p = Path::new(path);
    if p.is_absolute() {
        return Err("is outside the app: give a path relative to its root");
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err("is outside the app: it may not climb out with .."),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names the app itself, not a buildpack directory in it");
    }
    Ok(out)
}

/// Applies `include` or `exclude` to the app in `root`: removes every file
/// that the descriptor keeps out of the build. Returns how many went.
pub fn filter_files(root: &Path, d: &Descriptor) -> Result<usize, String> {
    if d.include.is_empty() && d.exclude.is_empty() {
        return Ok(0);
    }
    let including = !d.include.is_empty();
    let patterns = if including { &d.include } else { &d.exclude };
    let mut b = ignore::gitignore::GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p).map_err(|e| {
            format!("project.toml: the pattern {p:?} is not a gitignore pattern: {e}")
        })?;
    }
    let matcher = b
        .build()
        .map_err(|e| format!("project.toml: the include/exclude patterns: {e}"))?;
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| e.to_string())?;
        for e in entries.flatten() {
            let path = e.path();
            let ft = e.file_type().map_err(|e| e.to_string())?;
            let is_dir = ft.is_dir();
            let hit = matcher
                .matched_path_or_any_parents(&path, is_dir)
                .is_ignore();
            if is_dir {
                if !including && hit {
                    removed += count_files(&path);
                    std::fs::remove_dir_all(&path).map_err(|e| e.to_string())?;
                } else {
                    stack.push(path);
                }
                continue;
            }
            let drop = if including { !hit } else { hit };
            if drop {
                std::fs::remove_file(&path).map_err(|e| e.to_string())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_0_2() {
        let d = parse(
            r#"
[_]
schema-version = "0.2"
id = "org.toolforge.x"

[io.buildpacks]
exclude = ["spec/", "*.log"]

[[io.buildpacks.group]]
uri = "./buildpacks/mine"

[[io.buildpacks.group]]
id = "slipway/procfile"
version = "0.1.0"

[[io.buildpacks.group]]
id = "hello"
  [io.buildpacks.group.script]
  api = "0.10"
  inline = "echo hi"

[[io.buildpacks.pre.group]]
id = "slipway/python"

[[io.buildpacks.build.env]]
name = "GREETING"
value = "hello"

[com.heroku.buildpacks.deb-packages]
install = ["jq", { name = "figlet" }]
"#,
        )
        .unwrap();
        assert_eq!(d.exclude, vec!["spec/", "*.log"]);
        assert_eq!(
            d.group,
            vec![
                Entry::AppLocal {
                    path: "buildpacks/mine".into()
                },
                Entry::Builder {
                    id: "slipway/procfile".into(),
                    version: "0.1.0".into()
                },
                Entry::Inline {
                    id: "hello".into(),
                    api: "0.10".into(),
                    shell: "/bin/sh".into(),
                    script: "echo hi".into()
                },
            ]
        );
        assert_eq!(
            d.pre,
            vec![Entry::Builder {
                id: "slipway/python".into(),
                version: String::new()
            }]
        );
        assert_eq!(d.env, vec![("GREETING".into(), "hello".into())]);
        assert_eq!(d.deb_packages, vec!["jq", "figlet"]);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn the_older_form_and_warnings() {
        let d = parse(
            r#"
[project]
id = "x"

[build]
include = ["cmd/", "go.mod"]
builder = "cnbs/sample-builder"
colour = "blue"

[[build.buildpacks]]
uri = "bp"

[[build.env]]
name = "A"
value = "1"

[tool.black]
x = 1
"#,
        )
        .unwrap();
        assert_eq!(d.include, vec!["cmd/", "go.mod"]);
        assert_eq!(d.group, vec![Entry::AppLocal { path: "bp".into() }]);
        assert_eq!(d.env, vec![("A".into(), "1".into())]);
        let w = d.warnings.join("\n");
        assert!(w.contains("build.colour is not a key"), "{w}");
        assert!(w.contains("build.builder is not used"), "{w}");
        assert!(w.contains("[tool] is not used"), "{w}");
    }

    #[test]
    fn bad_descriptors_name_the_key() {
        let cases = [
            ("[_\nx", "is not valid TOML"),
            (
                "[_]\nschema-version = \"9.9\"\n",
                "_.schema-version \"9.9\" is not a schema",
            ),
            ("[_]\nid = \"x\"\n", "must hold schema-version"),
            (
                "[[io.buildpacks.group]]\nuri = \"../elsewhere\"\n",
                "io.buildpacks.group[0].uri \"../elsewhere\" is outside the app",
            ),
            (
                "[[io.buildpacks.group]]\nuri = \"/etc\"\n",
                "is outside the app",
            ),
            (
                "[[io.buildpacks.group]]\nuri = \"https://example.org/bp.tgz\"\n",
                "remote buildpacks are not fetched",
            ),
            (
                "[[io.buildpacks.group]]\nid = \"x\"\n[io.buildpacks.group.script]\napi = \"0.10\"\n",
                "io.buildpacks.group[0].script has no inline script",
            ),
            (
                "[[io.buildpacks.group]]\nid = \"x\"\n[io.buildpacks.group.script]\ninline = \"true\"\n",
                "has no api",
            ),
            (
                "[[io.buildpacks.group]]\nversion = \"1\"\n",
                "names no buildpack",
            ),
            (
                "[[io.buildpacks.group]]\nid = \"x\"\nrepo = \"y\"\n",
                "io.buildpacks.group[0].repo is not a buildpack key",
            ),
            (
                "[io.buildpacks]\ninclude = [\"a\"]\nexclude = [\"b\"]\n",
                "cannot both be given",
            ),
            (
                "[[io.buildpacks.build.env]]\nname = \"1X\"\nvalue = \"y\"\n",
                "is not a variable name",
            ),
            (
                "[[io.buildpacks.build.env]]\nname = \"X\"\n",
                "(X) has no string value",
            ),
            (
                "[io.buildpacks]\ninclude = \"a\"\n",
                "io.buildpacks.include must be a list of strings",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn include_and_exclude_remove_files_before_the_build() {
        let make = || {
            let d = tempfile::tempdir().unwrap();
            for f in [
                "a.go",
                "go.mod",
                "cmd/main.go",
                "spec/x_test.go",
                "notes.log",
                "docs/readme.md",
            ] {
                let p = d.path().join(f);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, f).unwrap();
            }
            d
        };
        let listed = |d: &Path| {
            let mut out = Vec::new();
            let mut stack = vec![d.to_path_buf()];
            while let Some(x) = stack.pop() {
                for e in std::fs::read_dir(&x).unwrap().flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else {
                        out.push(e.path().strip_prefix(d).unwrap().display().to_string());
                    }
                }
            }
            out.sort();
            out
        };
        let d = make();
        let desc = Descriptor {
            exclude: vec!["spec/".into(), "*.log".into()],
            ..Descriptor::default()
        };
        assert_eq!(filter_files(d.path(), &desc).unwrap(), 2);
        assert_eq!(
            listed(d.path()),
            vec!["a.go", "cmd/main.go", "docs/readme.md", "go.mod"]
        );
        let d = make();
        let desc = Descriptor {
            include: vec!["cmd/".into(), "go.mod".into(), "*.go".into()],
            ..Descriptor::default()
        };
        assert_eq!(filter_files(d.path(), &desc).unwrap(), 2);
        assert_eq!(
            listed(d.path()),
            vec!["a.go", "cmd/main.go", "go.mod", "spec/x_test.go"]
        );
    }
}
