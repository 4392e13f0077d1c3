//! `<layers>/config/metadata.toml`: what the exporter records in an app
//! image for the launcher — its processes and the buildpacks whose launch
//! layers set up the environment, in order.
//!
//! ```toml
//! [[buildpacks]]
//! id = "slipway/python"      # layers in /layers/slipway_python/
//! version = "0.1.0"
//! api = "0.10"
//!
//! [[processes]]
//! type = "web"
//! command = ["python3", "app.py"]
//! args = []
//! direct = true
//! default = true
//! working-dir = "/workspace"
//! buildpack-id = "slipway/procfile"
//! ```
//!
//! The one definition of the format: `slipway-builder`'s exporter writes
//! it with [`Metadata::to_toml`], the launcher reads it with
//! [`Metadata::parse`]. Unknown keys are ignored when reading.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub buildpacks: Vec<Buildpack>,
    #[serde(default)]
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buildpack {
    pub id: String,
    #[serde(default)]
    pub version: String,
    /// The Buildpack API it was built with: decides how user arguments
    /// combine with a process's own.
    #[serde(default)]
    pub api: String,
}

impl Buildpack {
    /// The directory of its layers, `<layers>/<id with / as _>`.
    pub fn dir_name(&self) -> String {
        escape_id(&self.id)
    }

    /// Whether it supports overridable process arguments (Buildpack API
    /// 0.9 and later): user arguments then replace the process's `args`.
    /// An unparsable API counts as a current one.
    pub fn replaces_args(&self) -> bool {
        api_version(&self.api).is_none_or(|v| v >= (0, 9))
    }
}

/// `/` → `_`, as the spec names buildpack directories.
pub fn escape_id(id: &str) -> String {
    id.replace('/', "_")
}

/// `"0.10"` → `(0, 10)`.
fn api_version(api: &str) -> Option<(u32, u32)> {
    let (major, minor) = api.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Process {
    #[serde(rename = "type")]
    pub kind: String,
    /// The program and its fixed leading arguments (for a shell process of
    /// an older Buildpack API: one element, a shell script).
    pub command: Vec<String>,
    /// Arguments that the user's arguments replace.
    #[serde(default)]
    pub args: Vec<String>,
    /// Executed directly (always, for commands given as arrays); `false`:
    /// through `/bin/sh` (older Buildpack APIs only).
    #[serde(default = "yes")]
    pub direct: bool,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub buildpack_id: Option<String>,
    /// The execution environments it is for; empty or `"*"`: all. Not
    /// written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_env: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Process {
    /// Whether it may run in execution environment `exec_env`.
    pub fn eligible(&self, exec_env: &str) -> bool {
        self.exec_env.is_empty() || self.exec_env.iter().any(|e| e == "*" || e == exec_env)
    }
}

impl Metadata {
    pub fn parse(text: &str) -> Result<Metadata, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("launch metadata serialises")
    }

    pub fn process(&self, kind: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.kind == kind)
    }

    /// The process to run when none is named: the one marked default, else
    /// `web`, else the only one.
    pub fn default_process(&self) -> Option<&Process> {
        self.processes
            .iter()
            .find(|p| p.default)
            .or_else(|| self.process("web"))
            .or_else(|| (self.processes.len() == 1).then(|| &self.processes[0]))
    }

    pub fn buildpack(&self, id: &str) -> Option<&Buildpack> {
        self.buildpacks.iter().find(|b| b.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../testdata/metadata.toml");
    /// `SAMPLE` as the exporter writes it: the bytes `slipway-builder`'s
    /// own copy of these types wrote before it used this module.
    const WRITTEN: &str = include_str!("../testdata/metadata.written.toml");

    #[test]
    fn reads_the_shared_sample() {
        let m = Metadata::parse(SAMPLE).unwrap();
        let ids: Vec<_> = m.buildpacks.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["slipway/python", "slipway/procfile", "old/shell"]);
        assert_eq!(m.buildpacks[0].api, "0.10");
        assert_eq!(m.buildpacks[0].version, "0.1.0");
        assert_eq!(m.buildpacks[0].dir_name(), "slipway_python");
        let kinds: Vec<_> = m.processes.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["web", "worker", "legacy"]);
        let web = m.process("web").unwrap();
        assert_eq!(web.command, ["python3", "app.py"]);
        assert_eq!(web.args, ["--port", "8080"]);
        assert!(web.direct && web.default);
        assert_eq!(web.working_dir.as_deref(), Some("/workspace/src"));
        assert_eq!(web.buildpack_id.as_deref(), Some("slipway/procfile"));
        let worker = m.process("worker").unwrap();
        assert!(worker.direct && !worker.default && worker.args.is_empty());
        assert_eq!(worker.working_dir, None);
        let legacy = m.process("legacy").unwrap();
        assert_eq!(legacy.command, ["echo legacy $0"]);
        assert!(!legacy.direct);
        assert_eq!(m.default_process().unwrap().kind, "web");
    }

    #[test]
    fn writes_the_format_images_hold() {
        let m = Metadata::parse(SAMPLE).unwrap();
        assert_eq!(m.to_toml(), WRITTEN);
        assert_eq!(Metadata::parse(WRITTEN).unwrap(), m);
        // Execution environments are written only when a process has them.
        let mut with_env = m.clone();
        with_env.processes[1].exec_env = vec!["test".into()];
        let text = with_env.to_toml();
        assert_eq!(text.matches("exec-env = [\"test\"]").count(), 1, "{text}");
        assert_eq!(Metadata::parse(&text).unwrap(), with_env);
    }

    #[test]
    fn escaped_ids() {
        assert_eq!(escape_id("slipway/python"), "slipway_python");
        assert_eq!(escape_id("a/b/c"), "a_b_c");
        assert_eq!(escape_id("plain"), "plain");
    }

    #[test]
    fn default_process() {
        let p = |kind: &str, default: bool| Process {
            kind: kind.into(),
            command: vec!["x".into()],
            args: vec![],
            direct: true,
            default,
            working_dir: None,
            buildpack_id: None,
            exec_env: vec![],
        };
        let m = |ps: Vec<Process>| Metadata {
            buildpacks: vec![],
            processes: ps,
        };
        let cases = [
            (
                m(vec![p("a", false), p("web", false), p("b", true)]),
                Some("b"),
            ),
            (m(vec![p("a", false), p("web", false)]), Some("web")),
            (m(vec![p("a", false)]), Some("a")),
            (m(vec![p("a", false), p("b", false)]), None),
            (m(vec![]), None),
        ];
        for (metadata, want) in cases {
            assert_eq!(metadata.default_process().map(|p| p.kind.as_str()), want);
        }
    }

    #[test]
    fn api_versions() {
        let bp = |api: &str| Buildpack {
            id: "x".into(),
            version: "1.0.0".into(),
            api: api.into(),
        };
        assert!(bp("0.9").replaces_args());
        assert!(bp("0.10").replaces_args());
        assert!(bp("1.0").replaces_args());
        assert!(!bp("0.8").replaces_args());
        assert!(!bp("0.2").replaces_args());
        assert!(bp("").replaces_args());
    }

    #[test]
    fn exec_env() {
        let mut p = Metadata::parse(SAMPLE).unwrap().processes.remove(0);
        assert!(p.eligible("production"));
        p.exec_env = vec!["test".into(), "development".into()];
        assert!(p.eligible("test") && !p.eligible("production"));
        p.exec_env = vec!["*".into()];
        assert!(p.eligible("production"));
    }
}
