//! What buildpacks and builders declare, read leniently: buildpacks written
//! for older Buildpack APIs (the upstream samples among them) must run
//! unchanged, so fields the current spec dropped are accepted, and a launch
//! command may be a string (older APIs: run through a shell) or an array.
//! (libcnb-data's types are strict about unknown fields and the current
//! formats, so these are our own.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `buildpack.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    pub api: String,
    pub buildpack: Info,
    /// A composite buildpack's own order.
    #[serde(default)]
    pub order: Vec<OrderGroup>,
    #[serde(default)]
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Info {
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "clear-env")]
    pub clear_env: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
}

/// `order.toml` / a composite's `[[order]]`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Order {
    #[serde(default)]
    pub order: Vec<OrderGroup>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderGroup {
    pub group: Vec<GroupEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct GroupEntry {
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub optional: bool,
}

/// `run.toml`: the run image, and its mirrors.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RunToml {
    #[serde(default)]
    pub images: Vec<RunImage>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunImage {
    pub image: String,
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// What `bin/detect` writes: requirements and provisions, with
/// alternatives.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct BuildPlan {
    #[serde(default)]
    pub provides: Vec<Provide>,
    #[serde(default)]
    pub requires: Vec<Require>,
    #[serde(default)]
    pub or: Vec<PlanAlternative>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct PlanAlternative {
    #[serde(default)]
    pub provides: Vec<Provide>,
    #[serde(default)]
    pub requires: Vec<Require>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Provide {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Require {
    pub name: String,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub metadata: toml::Table,
}

impl BuildPlan {
    /// Each potential plan: the top level, then each `or` alternative.
    pub fn alternatives(&self) -> Vec<PlanAlternative> {
        let mut out = vec![PlanAlternative {
            provides: self.provides.clone(),
            requires: self.requires.clone(),
        }];
        out.extend(self.or.iter().cloned());
        out
    }
}

/// The plan `bin/build` reads.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BuildpackPlan {
    pub entries: Vec<Require>,
}

/// `<layers>/<layer>.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
pub struct LayerToml {
    #[serde(default)]
    pub types: LayerTypes,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub metadata: toml::Table,
    // Buildpack API < 0.6 put the flags at the top level.
    #[serde(default, skip_serializing)]
    pub launch: bool,
    #[serde(default, skip_serializing)]
    pub build: bool,
    #[serde(default, skip_serializing)]
    pub cache: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
pub struct LayerTypes {
    #[serde(default)]
    pub launch: bool,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub cache: bool,
}

impl LayerToml {
    pub fn types(&self) -> LayerTypes {
        LayerTypes {
            launch: self.types.launch || self.launch,
            build: self.types.build || self.build,
            cache: self.types.cache || self.cache,
        }
    }
}

/// `<layers>/launch.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct LaunchToml {
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub processes: Vec<LaunchProcess>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LaunchProcess {
    #[serde(rename = "type")]
    pub kind: String,
    pub command: Command,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub direct: Option<bool>,
    #[serde(default)]
    pub default: bool,
    #[serde(default, rename = "working-dir")]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// `<layers>/build.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct BuildToml {
    #[serde(default)]
    pub unmet: Vec<Provide>,
}

/// Reads and parses a TOML file; a missing file is the default value.
pub fn read_toml<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A buildpack found in a builder's root file system.
#[derive(Debug, Clone)]
pub struct Buildpack {
    pub descriptor: Descriptor,
    /// Its directory in the root file system, e.g.
    /// `cnb/buildpacks/slipway_python/0.1.0` (relative to the root).
    pub dir: PathBuf,
}

impl Buildpack {
    pub fn id(&self) -> &str {
        &self.descriptor.buildpack.id
    }

    pub fn version(&self) -> &str {
        &self.descriptor.buildpack.version
    }

    /// `<major>.<minor>` of its Buildpack API, for behaviour that changed.
    pub fn api(&self) -> (u32, u32) {
        let mut parts = self
            .descriptor
            .api
            .split('.')
            .map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }
}

/// The buildpacks of a builder, by id and version.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub buildpacks: BTreeMap<(String, String), Buildpack>,
}

impl Catalog {
    /// Reads `/cnb/buildpacks/<id>/<version>/buildpack.toml` under `root`.
    pub fn load(root: &Path) -> Result<Catalog, String> {
        let base = root.join("cnb/buildpacks");
        let mut catalog = Catalog::default();
        let ids = std::fs::read_dir(&base)
            .map_err(|e| format!("the builder has no {}: {e}", "/cnb/buildpacks"))?;
        for id_dir in ids.flatten() {
            for version_dir in std::fs::read_dir(id_dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let toml_path = version_dir.path().join("buildpack.toml");
                if !toml_path.exists() {
                    continue;
                }
                let text = std::fs::read_to_string(&toml_path)
                    .map_err(|e| format!("cannot read {}: {e}", toml_path.display()))?;
                let descriptor: Descriptor = toml::from_str(&text)
                    .map_err(|e| format!("{} is not valid: {e}", toml_path.display()))?;
                let rel = version_dir
                    .path()
                    .strip_prefix(root)
                    .map(Path::to_owned)
                    .unwrap_or_else(|_| version_dir.path());
                catalog.buildpacks.insert(
                    (
                        descriptor.buildpack.id.clone(),
                        descriptor.buildpack.version.clone(),
                    ),
                    Buildpack {
                        descriptor,
                        dir: rel,
                    },
                );
            }
        }
        Ok(catalog)
    }

    /// The buildpack `id` at `version` (any version when empty).
    /// Adds the buildpack in `host` (its `buildpack.toml`), which the
    /// sandbox sees at `/<dir>`; its id and version.
    pub fn add(&mut self, host: &Path, dir: PathBuf) -> Result<(String, String), String> {
        let toml_path = host.join("buildpack.toml");
        let text = std::fs::read_to_string(&toml_path)
            .map_err(|e| format!("{} has no buildpack.toml: {e}", dir.display()))?;
        let descriptor: Descriptor = toml::from_str(&text)
            .map_err(|e| format!("{}/buildpack.toml is not valid: {e}", dir.display()))?;
        let key = (
            descriptor.buildpack.id.clone(),
            descriptor.buildpack.version.clone(),
        );
        self.buildpacks
            .insert(key.clone(), Buildpack { descriptor, dir });
        Ok(key)
    }

    pub fn find(&self, id: &str, version: &str) -> Option<&Buildpack> {
        if version.is_empty() {
            return self
                .buildpacks
                .iter()
                .rev()
                .find(|((i, _), _)| i == id)
                .map(|(_, b)| b);
        }
        self.buildpacks.get(&(id.to_owned(), version.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_formats() {
        let launch: LaunchToml = toml::from_str(
            r#"
[[processes]]
type = "web"
command = "echo hello"

[[processes]]
type = "worker"
command = ["python3", "w.py"]
args = ["--fast"]
default = true
"#,
        )
        .unwrap();
        assert!(matches!(launch.processes[0].command, Command::Shell(_)));
        assert!(
            matches!(launch.processes[1].command, Command::Exec(ref c) if c == &["python3", "w.py"])
        );
        let old: LayerToml =
            toml::from_str("launch = true\ncache = true\n[metadata]\nv = 1").unwrap();
        assert_eq!(
            old.types(),
            LayerTypes {
                launch: true,
                build: false,
                cache: true
            }
        );
        let plan: BuildPlan = toml::from_str(
            r#"
[[provides]]
name = "python"
[[requires]]
name = "python"
[requires.metadata]
version = "3"
[[or]]
[[or.requires]]
name = "node"
"#,
        )
        .unwrap();
        let alts = plan.alternatives();
        assert_eq!(alts.len(), 2);
        assert_eq!(alts[0].requires[0].metadata["version"].as_str(), Some("3"));
    }
}
