//! `/layers/config/metadata.toml`: what the exporter records in an app
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

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchMetadata {
    #[serde(default)]
    pub buildpacks: Vec<BuildpackRef>,
    #[serde(default)]
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackRef {
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub api: String,
}

impl BuildpackRef {
    /// The directory name of the buildpack's layers: its id with `/` as `_`.
    pub fn dir_name(&self) -> String {
        escape_id(&self.id)
    }
}

/// `/` → `_`, as the spec names buildpack directories.
pub fn escape_id(id: &str) -> String {
    id.replace('/', "_")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Process {
    #[serde(rename = "type")]
    pub kind: String,
    /// The program and its fixed leading arguments.
    pub command: Vec<String>,
    /// Arguments that the user's arguments replace.
    #[serde(default)]
    pub args: Vec<String>,
    /// Executed directly (always, for commands given as arrays); `false`:
    /// through `/bin/sh -c`.
    #[serde(default = "yes")]
    pub direct: bool,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub buildpack_id: Option<String>,
}

fn yes() -> bool {
    true
}

impl LaunchMetadata {
    pub fn parse(text: &str) -> Result<LaunchMetadata, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("launch metadata serialises")
    }

    /// The process to run when none is named: the one marked default, else
    /// `web`, else the only one.
    pub fn default_process(&self) -> Option<&Process> {
        self.processes
            .iter()
            .find(|p| p.default)
            .or_else(|| self.processes.iter().find(|p| p.kind == "web"))
            .or_else(|| (self.processes.len() == 1).then(|| &self.processes[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default() {
        let text = r#"
[[buildpacks]]
id = "slipway/python"
version = "0.1.0"
api = "0.10"

[[processes]]
type = "worker"
command = ["python3", "worker.py"]

[[processes]]
type = "web"
command = ["python3", "app.py"]
args = ["--port", "8080"]
working-dir = "/workspace"
"#;
        let m = LaunchMetadata::parse(text).unwrap();
        assert_eq!(m.buildpacks[0].dir_name(), "slipway_python");
        assert_eq!(m.default_process().unwrap().kind, "web");
        assert!(m.processes[0].direct);
        assert_eq!(LaunchMetadata::parse(&m.to_toml()).unwrap(), m);
    }
}
