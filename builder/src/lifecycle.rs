//! The detect and build phases of the buildpacks lifecycle, each buildpack
//! in a [`Sandbox`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use slipway_launcher::env::{self, Env, Phase};
use slipway_launcher::metadata::escape_id;

use crate::buildpack::{
    BuildPlan, BuildToml, Buildpack, BuildpackPlan, Catalog, LaunchToml, LayerToml, Order,
    PlanAlternative, Require, read_toml,
};
use crate::sandbox::Sandbox;
use crate::{LAYERS, WORKSPACE};

/// Why a build stopped, in a sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// Exit code 20 of the platform spec's detector.
    #[error("no buildpack group detected this app: {0}")]
    NothingDetected(String),
    /// Exit code 21: a buildpack's detect failed with an error.
    #[error("buildpack {id} failed during detection (exit status {code})")]
    DetectError { id: String, code: i32 },
    #[error("buildpack {id} failed to build (exit status {code})")]
    BuildFailed { id: String, code: i32 },
    #[error("{0}")]
    Invalid(String),
    #[error("the sandbox failed: {0}")]
    Io(#[from] std::io::Error),
    /// A build layer's environment files could not be read.
    #[error("could not make the build environment: {0}")]
    LayerEnv(#[from] slipway_launcher::LaunchError),
}

/// Where the target runs, as buildpacks see it (`CNB_TARGET_*`).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    pub distro_name: Option<String>,
    pub distro_version: Option<String>,
}

impl Target {
    fn env(&self, env: &mut Env) {
        env.insert("CNB_TARGET_OS".into(), self.os.clone().into());
        env.insert("CNB_TARGET_ARCH".into(), self.arch.clone().into());
        for (k, v) in [
            ("CNB_TARGET_ARCH_VARIANT", &self.variant),
            ("CNB_TARGET_DISTRO_NAME", &self.distro_name),
            ("CNB_TARGET_DISTRO_VERSION", &self.distro_version),
        ] {
            if let Some(v) = v {
                env.insert(k.into(), v.into());
            }
        }
    }
}

/// What the lifecycle needs for a build.
pub struct Lifecycle<'a> {
    pub sandbox: &'a Sandbox,
    pub catalog: &'a Catalog,
    /// The builder image's environment (PATH and such).
    pub base_env: Env,
    /// User-provided variables (also in `<platform>/env/`).
    pub user_env: Env,
    pub target: Target,
    pub log: &'a (dyn Fn(&str) + Send + Sync),
}

/// One buildpack of the selected group, and what detection planned for it.
#[derive(Debug, Clone)]
pub struct Selected {
    pub buildpack: Buildpack,
    /// Names this buildpack provides (in the chosen trial).
    pub provides: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Detected {
    pub group: Vec<Selected>,
    /// Every requirement of the group, in order.
    pub requires: Vec<Require>,
}

/// What one buildpack left after its build.
#[derive(Debug, Clone)]
pub struct Built {
    pub buildpack: Buildpack,
    pub launch: LaunchToml,
    /// Its layers (name → metadata), those with a `.toml`.
    pub layers: BTreeMap<String, LayerToml>,
}

impl Lifecycle<'_> {
    fn env_for(&self, bp: &Buildpack) -> Env {
        let mut env = self.base_env.clone();
        env.insert("CNB_PLATFORM_DIR".into(), "/platform".into());
        env.insert(
            "CNB_BUILDPACK_DIR".into(),
            format!("/{}", bp.dir.display()).into(),
        );
        env.insert("CNB_EXEC_ENV".into(), "production".into());
        env.insert("HOME".into(), "/home/cnb".into());
        self.target.env(&mut env);
        if !bp.descriptor.buildpack.clear_env {
            for (k, v) in &self.user_env {
                env.insert(k.clone(), v.clone());
            }
        }
        env
    }

    /// Resolves the order (composites expanded, optional entries kept as
    /// such) into candidate groups.
    pub fn groups(&self, order: &Order) -> Result<Vec<Vec<(Buildpack, bool)>>, LifecycleError> {
        let mut out = Vec::new();
        for group in &order.order {
            let mut partial: Vec<Vec<(Buildpack, bool)>> = vec![Vec::new()];
            for entry in &group.group {
                let bp = self
                    .catalog
                    .find(&entry.id, &entry.version)
                    .ok_or_else(|| {
                        LifecycleError::Invalid(format!(
                            "the builder's order names buildpack {}@{}, which it does not hold",
                            entry.id, entry.version
                        ))
                    })?;
                let alternatives: Vec<Vec<(Buildpack, bool)>> = if bp.descriptor.order.is_empty() {
                    vec![vec![(bp.clone(), entry.optional)]]
                } else {
                    let inner = self.groups(&Order {
                        order: bp.descriptor.order.clone(),
                    })?;
                    inner
                        .into_iter()
                        .map(|g| {
                            g.into_iter()
                                .map(|(b, o)| (b, o || entry.optional))
                                .collect()
                        })
                        .collect()
                };
                let mut next = Vec::new();
                for p in &partial {
                    for alt in &alternatives {
                        let mut g = p.clone();
                        g.extend(alt.iter().cloned());
                        next.push(g);
                    }
                }
                partial = next;
            }
            out.extend(partial);
        }
        Ok(out)
    }

    /// The detect phase: the first group whose buildpacks detect and whose
    /// build plan resolves.
    pub async fn detect(&self, order: &Order) -> Result<Detected, LifecycleError> {
        let groups = self.groups(order)?;
        // Each buildpack's detect runs once, whichever groups hold it.
        let mut results: HashMap<(String, String), Option<BuildPlan>> = HashMap::new();
        let mut tried = Vec::new();
        for (gi, group) in groups.iter().enumerate() {
            let mut passed: Vec<(Buildpack, bool, BuildPlan)> = Vec::new();
            let mut group_failed = false;
            for (bp, optional) in group {
                let key = (bp.id().to_owned(), bp.version().to_owned());
                let result = match results.get(&key) {
                    Some(r) => r.clone(),
                    None => {
                        let r = self.detect_one(bp, results.len()).await?;
                        results.insert(key.clone(), r.clone());
                        r
                    }
                };
                match result {
                    Some(plan) => passed.push((bp.clone(), *optional, plan)),
                    None if *optional => {}
                    None => {
                        group_failed = true;
                        break;
                    }
                }
            }
            let names: Vec<String> = group
                .iter()
                .map(|(b, o)| format!("{}{}", b.id(), if *o { " (optional)" } else { "" }))
                .collect();
            tried.push(names.join(" + "));
            if group_failed || passed.is_empty() {
                continue;
            }
            if let Some(detected) = resolve(&passed) {
                (self.log)(&format!(
                    "detected group {}: {}",
                    gi + 1,
                    detected
                        .group
                        .iter()
                        .map(|s| format!("{}@{}", s.buildpack.id(), s.buildpack.version()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                return Ok(detected);
            }
        }
        Err(LifecycleError::NothingDetected(format!(
            "tried {}",
            tried.join("; ")
        )))
    }

    /// Runs one buildpack's `bin/detect`: its plan if it passed, `None` if
    /// it did not.
    async fn detect_one(
        &self,
        bp: &Buildpack,
        n: usize,
    ) -> Result<Option<BuildPlan>, LifecycleError> {
        let plan_name = format!("detect-plan-{n}.toml");
        let plan_host = self.sandbox.tmp.join(&plan_name);
        std::fs::write(&plan_host, "")?;
        let mut env = self.env_for(bp);
        env.insert(
            "CNB_BUILD_PLAN_PATH".into(),
            format!("/tmp/{plan_name}").into(),
        );
        let program = format!("/{}/bin/detect", bp.dir.display());
        // Positional arguments for every Buildpack API, as the upstream
        // lifecycle passes them (buildpacks written against 0.11 use them).
        let args = vec!["/platform".to_owned(), format!("/tmp/{plan_name}")];
        let id = bp.id().to_owned();
        let log = |line: &str| (self.log)(&format!("[detect {id}] {line}"));
        let status = self
            .sandbox
            .run(&program, &args, &env, WORKSPACE, &log)
            .await?;
        match status.code() {
            Some(0) => {
                let plan: BuildPlan = read_toml(&plan_host).map_err(LifecycleError::Invalid)?;
                (self.log)(&format!("{}@{} passed detection", bp.id(), bp.version()));
                Ok(Some(plan))
            }
            Some(100) => {
                (self.log)(&format!("{}@{} does not apply", bp.id(), bp.version()));
                Ok(None)
            }
            code => {
                (self.log)(&format!(
                    "{}@{} failed detection with an error (exit status {code:?})",
                    bp.id(),
                    bp.version()
                ));
                Ok(None)
            }
        }
    }

    /// The build phase: each buildpack of the group in order.
    pub async fn build(&self, detected: &Detected) -> Result<Vec<Built>, LifecycleError> {
        let mut built: Vec<Built> = Vec::new();
        // Requirements not yet met, by name; each goes to its next provider.
        let mut pending: Vec<Require> = detected.requires.clone();
        for (i, sel) in detected.group.iter().enumerate() {
            let bp = &sel.buildpack;
            let dir_name = escape_id(bp.id());
            let layers_host = self.sandbox.layers.join(&dir_name);
            std::fs::create_dir_all(&layers_host)?;
            let mine: Vec<Require> = pending
                .iter()
                .filter(|r| sel.provides.contains(&r.name))
                .cloned()
                .collect();
            let plan_name = format!("bp-plan-{i}.toml");
            std::fs::write(
                self.sandbox.tmp.join(&plan_name),
                toml::to_string(&BuildpackPlan {
                    entries: mine.clone(),
                })
                .map_err(|e| LifecycleError::Invalid(e.to_string()))?,
            )?;
            let mut env = self.env_for(bp);
            // Build layers of the buildpacks before (in name order): paths
            // and env files, as the sandbox shows them (under /layers).
            let in_sandbox = |p: &Path| {
                Path::new(LAYERS).join(
                    p.strip_prefix(&self.sandbox.layers)
                        .expect("build layers are in the sandbox's layers directory"),
                )
            };
            for prev in &built {
                let prev_dir = self.sandbox.layers.join(escape_id(prev.buildpack.id()));
                let build_layers: Vec<PathBuf> = prev
                    .layers
                    .iter()
                    .filter(|(_, layer)| layer.types().build)
                    .map(|(name, _)| prev_dir.join(name))
                    .filter(|dir| dir.is_dir())
                    .collect();
                env::apply_buildpack_layers(&mut env, &build_layers, Phase::Build, in_sandbox)?;
            }
            env.insert(
                "CNB_LAYERS_DIR".into(),
                format!("{LAYERS}/{dir_name}").into(),
            );
            env.insert(
                "CNB_BP_PLAN_PATH".into(),
                format!("/tmp/{plan_name}").into(),
            );
            let program = format!("/{}/bin/build", bp.dir.display());
            // Positional arguments for every Buildpack API, as upstream.
            let args = vec![
                format!("{LAYERS}/{dir_name}"),
                "/platform".to_owned(),
                format!("/tmp/{plan_name}"),
            ];
            let id = bp.id().to_owned();
            let log = |line: &str| (self.log)(&format!("[{id}] {line}"));
            let status = self
                .sandbox
                .run(&program, &args, &env, WORKSPACE, &log)
                .await?;
            if !status.success() {
                return Err(LifecycleError::BuildFailed {
                    id: bp.id().to_owned(),
                    code: status.code().unwrap_or(-1),
                });
            }
            let launch: LaunchToml =
                read_toml(&layers_host.join("launch.toml")).map_err(LifecycleError::Invalid)?;
            let build_toml: BuildToml =
                read_toml(&layers_host.join("build.toml")).map_err(LifecycleError::Invalid)?;
            let layers = read_layers(&layers_host)?;
            // Ignored layers go out of sight of the next buildpacks.
            for (name, layer) in &layers {
                let t = layer.types();
                if !(t.launch || t.build || t.cache) && layers_host.join(name).is_dir() {
                    std::fs::rename(
                        layers_host.join(name),
                        layers_host.join(format!("{name}.ignore")),
                    )?;
                }
            }
            // Met entries leave the plan; unmet ones wait for the next provider.
            let unmet: Vec<&str> = build_toml.unmet.iter().map(|u| u.name.as_str()).collect();
            pending.retain(|r| {
                !mine.iter().any(|m| m.name == r.name) || unmet.contains(&r.name.as_str())
            });
            built.push(Built {
                buildpack: bp.clone(),
                launch,
                layers,
            });
        }
        Ok(built)
    }
}

/// The `<layer>.toml` files of a buildpack's layers directory.
pub fn read_layers(dir: &Path) -> Result<BTreeMap<String, LayerToml>, LifecycleError> {
    let mut layers = BTreeMap::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(layer) = name.strip_suffix(".toml") else {
            continue;
        };
        if matches!(layer, "launch" | "build" | "store") {
            continue;
        }
        let toml: LayerToml = read_toml(&entry.path()).map_err(LifecycleError::Invalid)?;
        layers.insert(layer.to_owned(), toml);
    }
    Ok(layers)
}

/// Tries the plans of a group's passed buildpacks, alternatives in
/// left-to-right depth-first order; the first trial that resolves wins.
fn resolve(passed: &[(Buildpack, bool, BuildPlan)]) -> Option<Detected> {
    let alternatives: Vec<Vec<PlanAlternative>> =
        passed.iter().map(|(_, _, p)| p.alternatives()).collect();
    let mut choice = vec![0usize; passed.len()];
    loop {
        let trial: Vec<&PlanAlternative> = choice
            .iter()
            .enumerate()
            .map(|(i, c)| &alternatives[i][*c])
            .collect();
        if let Some(d) = try_trial(passed, &trial) {
            return Some(d);
        }
        // Next combination: the last buildpack's alternatives vary fastest.
        let mut i = passed.len();
        loop {
            if i == 0 {
                return None;
            }
            i -= 1;
            choice[i] += 1;
            if choice[i] < alternatives[i].len() {
                break;
            }
            choice[i] = 0;
        }
    }
}

fn try_trial(
    passed: &[(Buildpack, bool, BuildPlan)],
    trial: &[&PlanAlternative],
) -> Option<Detected> {
    let mut included: Vec<bool> = vec![true; passed.len()];
    loop {
        let mut changed = false;
        for i in 0..passed.len() {
            if !included[i] {
                continue;
            }
            let requires_ok = trial[i].requires.iter().all(|r| {
                (0..=i).any(|j| included[j] && trial[j].provides.iter().any(|p| p.name == r.name))
            });
            let provides_ok = trial[i].provides.iter().all(|p| {
                (i..passed.len())
                    .any(|j| included[j] && trial[j].requires.iter().any(|r| r.name == p.name))
            });
            if !(requires_ok && provides_ok) {
                if passed[i].1 {
                    included[i] = false;
                    changed = true;
                } else {
                    return None;
                }
            }
        }
        if !changed {
            break;
        }
    }
    if !included.iter().any(|x| *x) {
        return None;
    }
    let mut group = Vec::new();
    let mut requires = Vec::new();
    for i in 0..passed.len() {
        if included[i] {
            group.push(Selected {
                buildpack: passed[i].0.clone(),
                provides: trial[i].provides.iter().map(|p| p.name.clone()).collect(),
            });
            requires.extend(trial[i].requires.iter().cloned());
        }
    }
    Some(Detected { group, requires })
}

/// Host path helpers for a build's directories.
pub fn layer_dir(layers: &Path, buildpack_id: &str, layer: &str) -> PathBuf {
    layers.join(escape_id(buildpack_id)).join(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildpack::{Descriptor, Info, Provide};

    fn bp(id: &str) -> Buildpack {
        Buildpack {
            descriptor: Descriptor {
                api: "0.10".into(),
                buildpack: Info {
                    id: id.into(),
                    version: "1.0.0".into(),
                    name: String::new(),
                    clear_env: false,
                },
                order: Vec::new(),
                targets: Vec::new(),
            },
            dir: format!("cnb/buildpacks/{id}/1.0.0").into(),
        }
    }

    fn plan(provides: &[&str], requires: &[&str]) -> BuildPlan {
        BuildPlan {
            provides: provides
                .iter()
                .map(|n| Provide { name: (*n).into() })
                .collect(),
            requires: requires
                .iter()
                .map(|n| Require {
                    name: (*n).into(),
                    metadata: Default::default(),
                })
                .collect(),
            or: Vec::new(),
        }
    }

    #[test]
    fn plans_resolve_like_the_spec_says() {
        // python provides python; procfile requires nothing.
        let passed = vec![
            (bp("python"), false, plan(&["python"], &["python"])),
            (bp("procfile"), false, plan(&[], &[])),
        ];
        let d = resolve(&passed).unwrap();
        assert_eq!(d.group.len(), 2);
        assert_eq!(d.requires[0].name, "python");

        // A requirement nobody provides fails a required buildpack…
        assert!(resolve(&[(bp("app"), false, plan(&[], &["node"]))]).is_none());
        // …and drops an optional one.
        let d = resolve(&[
            (bp("a"), true, plan(&[], &["node"])),
            (bp("b"), false, plan(&[], &[])),
        ])
        .unwrap();
        assert_eq!(
            d.group.iter().map(|s| s.buildpack.id()).collect::<Vec<_>>(),
            ["b"]
        );
        // A provision nobody requires fails too.
        assert!(resolve(&[(bp("x"), false, plan(&["jdk"], &[]))]).is_none());
        // Alternatives: the second one resolves.
        let mut p = plan(&["node"], &[]);
        p.or.push(PlanAlternative {
            provides: vec![Provide {
                name: "node".into(),
            }],
            requires: vec![Require {
                name: "node".into(),
                metadata: Default::default(),
            }],
        });
        let d = resolve(&[(bp("node"), false, p)]).unwrap();
        assert_eq!(d.group[0].provides, ["node"]);
        // A later buildpack's requirement is not met by a later provider.
        assert!(
            resolve(&[
                (bp("uses"), false, plan(&[], &["go"])),
                (bp("gives"), false, plan(&["go"], &[]))
            ])
            .is_none()
        );
    }
}
