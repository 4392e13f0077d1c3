//! Which process to run, and with what arguments, from how the launcher
//! was started (the platform spec's launcher "Inputs"):
//!
//! 1. started as `/cnb/process/<type>` (`argv[0]`'s file name is a process
//!    type): that process, the arguments are the user's;
//! 2. else `CNB_PROCESS_TYPE` set: that process (as older platform APIs
//!    did), the arguments are the user's;
//! 3. else `-- <cmd> [<arg>...]`: the user's command, executed directly
//!    in the app directory;
//! 4. else `<type> [<arg>...]` where `<type>` is a process type: that
//!    process (as older platform APIs did), the rest are the user's
//!    arguments — use `--` to run a command named like a process type;
//! 5. else `<cmd> [<arg>...]`: the user's command through the shell, in
//!    the app directory;
//! 6. else (no arguments): the default process — the one marked default,
//!    else `web`, else the only one.
//!
//! A buildpack's process takes the user's arguments as the spec says: if
//! its buildpack supports overridable arguments (Buildpack API 0.9 and
//! later, or a `command` with arguments in it), they replace the
//! process's `args` and it runs directly; otherwise they are appended and
//! the process's `direct` holds.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::metadata::{Metadata, Process};
use crate::{LaunchError, Settings};

/// How to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// `execve` of `argv` (the program, looked up in `PATH`, then its
    /// arguments).
    Direct { argv: Vec<OsString> },
    /// Through the shell: a buildpack's `script` with `tokens` as its
    /// arguments, or without a script, the user's command, `tokens`.
    Shell {
        script: Option<String>,
        tokens: Vec<OsString>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The buildpack process's type; `None` for a user's command.
    pub process_type: Option<String>,
    pub how: How,
    /// The process's `working-dir`; `None`: the app directory.
    pub working_dir: Option<PathBuf>,
}

pub fn choose(
    metadata: &Metadata,
    settings: &Settings,
    argv0: &OsString,
    args: &[OsString],
) -> Result<Chosen, LaunchError> {
    let eligible = |kind: &str| -> Result<&Process, LaunchError> {
        let p = metadata
            .process(kind)
            .ok_or_else(|| LaunchError::NoProcess {
                kind: kind.to_owned(),
                path: settings.metadata_path(),
            })?;
        if !p.eligible(&settings.exec_env) {
            return Err(LaunchError::NotEligible {
                kind: kind.to_owned(),
                exec_env: settings.exec_env.clone(),
            });
        }
        Ok(p)
    };
    let name = Path::new(argv0).file_name().and_then(|n| n.to_str());
    if let Some(kind) = name.filter(|n| metadata.process(n).is_some()) {
        return buildpack_process(metadata, eligible(kind)?, args);
    }
    if let Some(kind) = settings.process_type.as_deref().filter(|k| !k.is_empty()) {
        return buildpack_process(metadata, eligible(kind)?, args);
    }
    match args.first() {
        Some(first) if first == "--" => {
            let Some(cmd) = args.get(1) else {
                return Err(LaunchError::NoCommand {
                    what: "-- must be followed by a command".into(),
                });
            };
            let mut argv = vec![cmd.clone()];
            argv.extend_from_slice(&args[2..]);
            Ok(Chosen {
                process_type: None,
                how: How::Direct { argv },
                working_dir: None,
            })
        }
        Some(first) => {
            if let Some(kind) = first.to_str().filter(|k| metadata.process(k).is_some()) {
                return buildpack_process(metadata, eligible(kind)?, &args[1..]);
            }
            Ok(Chosen {
                process_type: None,
                how: How::Shell {
                    script: None,
                    tokens: args.to_vec(),
                },
                working_dir: None,
            })
        }
        None => match metadata.default_process() {
            Some(p) => buildpack_process(metadata, eligible(&p.kind)?, &[]),
            None => Err(LaunchError::NoDefault {
                path: settings.metadata_path(),
            }),
        },
    }
}

fn buildpack_process(
    metadata: &Metadata,
    p: &Process,
    user: &[OsString],
) -> Result<Chosen, LaunchError> {
    if p.command.is_empty() {
        return Err(LaunchError::NoCommand {
            what: format!("process {} has an empty command", p.kind),
        });
    }
    let replaces = p.command.len() > 1
        || p.buildpack_id
            .as_deref()
            .and_then(|id| metadata.buildpack(id))
            .is_none_or(|b| b.replaces_args());
    let own = p.args.iter().map(OsString::from);
    let args: Vec<OsString> = if replaces && !user.is_empty() {
        user.to_vec()
    } else {
        own.chain(user.iter().cloned()).collect()
    };
    let how = if replaces || p.direct {
        let mut argv: Vec<OsString> = p.command.iter().map(OsString::from).collect();
        argv.extend(args);
        How::Direct { argv }
    } else {
        How::Shell {
            script: Some(p.command.join(" ")),
            tokens: args,
        }
    };
    Ok(Chosen {
        process_type: Some(p.kind.clone()),
        how,
        working_dir: p.working_dir.as_ref().map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../testdata/metadata.toml");

    fn settings(process_type: Option<&str>) -> Settings {
        Settings {
            layers: "/layers".into(),
            app: "/workspace".into(),
            exec_env: "production".into(),
            process_type: process_type.map(Into::into),
        }
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn direct(kind: Option<&str>, argv: &[&str], dir: Option<&str>) -> Chosen {
        Chosen {
            process_type: kind.map(Into::into),
            how: How::Direct { argv: os(argv) },
            working_dir: dir.map(PathBuf::from),
        }
    }

    #[test]
    fn choosing() {
        let m = Metadata::parse(SAMPLE).unwrap();
        let web = Some("/workspace/src");
        // (argv[0], CNB_PROCESS_TYPE, arguments, expected)
        let cases: Vec<(&str, Option<&str>, &[&str], Chosen)> = vec![
            (
                "/cnb/process/web",
                None,
                &[],
                direct(Some("web"), &["python3", "app.py", "--port", "8080"], web),
            ),
            (
                "/cnb/process/web",
                None,
                &["--port", "9"],
                direct(Some("web"), &["python3", "app.py", "--port", "9"], web),
            ),
            (
                "/cnb/process/web",
                None,
                &["--", "x"],
                direct(Some("web"), &["python3", "app.py", "--", "x"], web),
            ),
            (
                "/cnb/process/worker",
                Some("web"),
                &[],
                direct(Some("worker"), &["python3", "worker.py"], None),
            ),
            (
                "/cnb/lifecycle/launcher",
                Some("worker"),
                &["-v"],
                direct(Some("worker"), &["python3", "worker.py", "-v"], None),
            ),
            (
                "/cnb/lifecycle/launcher",
                None,
                &[],
                direct(Some("web"), &["python3", "app.py", "--port", "8080"], web),
            ),
            (
                "/cnb/lifecycle/launcher",
                None,
                &["worker", "a"],
                direct(Some("worker"), &["python3", "worker.py", "a"], None),
            ),
            (
                "/cnb/lifecycle/launcher",
                None,
                &["--", "worker", "a b"],
                direct(None, &["worker", "a b"], None),
            ),
            (
                "/cnb/lifecycle/launcher",
                None,
                &["echo", "$HOME"],
                Chosen {
                    process_type: None,
                    how: How::Shell {
                        script: None,
                        tokens: os(&["echo", "$HOME"]),
                    },
                    working_dir: None,
                },
            ),
            (
                // An older buildpack's shell process: arguments appended.
                "/cnb/process/legacy",
                None,
                &["x"],
                Chosen {
                    process_type: Some("legacy".into()),
                    how: How::Shell {
                        script: Some("echo legacy $0".into()),
                        tokens: os(&["x"]),
                    },
                    working_dir: None,
                },
            ),
        ];
        for (argv0, env_type, args, want) in cases {
            let got = choose(&m, &settings(env_type), &argv0.into(), &os(args)).unwrap();
            assert_eq!(got, want, "{argv0} {env_type:?} {args:?}");
        }
    }

    #[test]
    fn older_buildpacks_append_user_arguments() {
        let mut m = Metadata::parse(SAMPLE).unwrap();
        m.buildpacks[1].api = "0.8".into(); // slipway/procfile, which gave web
        let web = m.process("web").unwrap().clone();
        // A command with arguments in it is always the newer form.
        let got = buildpack_process(&m, &web, &os(&["-v"])).unwrap();
        assert_eq!(
            got.how,
            How::Direct {
                argv: os(&["python3", "app.py", "-v"])
            }
        );
        let mut one = web.clone();
        one.command = vec!["python3".into()];
        let got = buildpack_process(&m, &one, &os(&["-v"])).unwrap();
        assert_eq!(
            got.how,
            How::Direct {
                argv: os(&["python3", "--port", "8080", "-v"])
            }
        );
        one.direct = false;
        let got = buildpack_process(&m, &one, &[]).unwrap();
        assert_eq!(
            got.how,
            How::Shell {
                script: Some("python3".into()),
                tokens: os(&["--port", "8080"])
            }
        );
        // A newer buildpack's process is direct whatever it says.
        m.buildpacks[1].api = "0.10".into();
        let got = buildpack_process(&m, &one, &os(&["-v"])).unwrap();
        assert_eq!(
            got.how,
            How::Direct {
                argv: os(&["python3", "-v"])
            }
        );
    }

    #[test]
    fn errors() {
        let m = Metadata::parse(SAMPLE).unwrap();
        let err = |argv0: &str, env_type: Option<&str>, args: &[&str], m: &Metadata| {
            choose(m, &settings(env_type), &argv0.into(), &os(args))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("/cnb/lifecycle/launcher", Some("db"), &[], &m),
            "no process of type db in /layers/config/metadata.toml"
        );
        assert_eq!(
            err("/cnb/lifecycle/launcher", None, &["--"], &m),
            "-- must be followed by a command"
        );
        let mut restricted = m.clone();
        restricted.processes[0].exec_env = vec!["test".into()];
        assert_eq!(
            err("/cnb/process/web", None, &[], &restricted),
            "process web is not for the production execution environment (CNB_EXEC_ENV)"
        );
        let none = Metadata::default();
        assert_eq!(
            err("/cnb/lifecycle/launcher", None, &[], &none),
            "/layers/config/metadata.toml names no default process: give a command, or a process type"
        );
        // With no processes, arguments are a command.
        let got = choose(&none, &settings(None), &"launcher".into(), &os(&["ls"])).unwrap();
        assert_eq!(got.process_type, None);
    }
}
