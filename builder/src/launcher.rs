//! The launcher: a small static executable (crate `slipway-launcher`, in
//! `builder/launcher/`) that the exporter puts at `/cnb/lifecycle/launcher`
//! in every app image, with `/cnb/process/<type>` symlinks to it. It picks
//! the process (by the name it was started as, `CNB_PROCESS_TYPE`, its
//! first argument, or the default), applies the launch layers'
//! environment and `exec.d` programs, and execs the process — so an image
//! runs on any OCI runtime without the upstream lifecycle. It reads
//! `/layers/config/metadata.toml`, whose format its library defines
//! ([`slipway_launcher::metadata`]); the exporter writes it with the same
//! types.
//!
//! `build.rs` builds it (release, `+crt-static`, for this crate's target)
//! and this module embeds the result.

/// The launcher executable: a static ELF for this crate's target.
pub const LAUNCHER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/slipway-launcher"));

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_launcher::metadata::{Buildpack, Metadata, Process};
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// Parses the ELF header and program headers; `Err` says what is wrong.
    fn check_static_elf(bytes: &[u8]) -> Result<(), String> {
        let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
            return Err(format!("not an ELF file ({} bytes)", bytes.len()));
        }
        if bytes[4] != 2 || bytes[5] != 1 {
            return Err("not a 64-bit little-endian ELF file".into());
        }
        // ET_EXEC, or ET_DYN for a static PIE.
        let kind = u16_at(16);
        if kind != 2 && kind != 3 {
            return Err(format!("ELF type {kind} is not an executable"));
        }
        let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
        for i in 0..phnum as usize {
            let at = phoff + i * phentsize;
            if u32_at(at) == 3 {
                return Err("it has a PT_INTERP header: it needs a dynamic loader".into());
            }
        }
        Ok(())
    }

    #[test]
    fn the_launcher_is_a_static_executable() {
        check_static_elf(LAUNCHER).unwrap();
        // The check itself: a dynamically linked executable fails it.
        let dynamic = fs::read("/bin/sh").unwrap();
        assert!(
            check_static_elf(&dynamic)
                .unwrap_err()
                .contains("PT_INTERP")
        );
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
    }

    /// An image's `/cnb` and `/layers`, and an app directory, in a
    /// temporary directory.
    struct Image {
        root: tempfile::TempDir,
    }

    impl Image {
        fn new() -> Image {
            let root = tempfile::tempdir().unwrap();
            let image = Image { root };
            let write = |path: &str, text: &str, mode: u32| {
                let path = image.path(path);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, text).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            };
            write("cnb/lifecycle/launcher", "", 0o755);
            fs::write(image.launcher(), LAUNCHER).unwrap();
            let metadata = Metadata {
                buildpacks: vec![
                    Buildpack {
                        id: "example/runtime".into(),
                        version: "1.0.0".into(),
                        api: "0.10".into(),
                    },
                    Buildpack {
                        id: "old/shell".into(),
                        version: "0.1.0".into(),
                        api: "0.8".into(),
                    },
                ],
                processes: vec![
                    process("web", &["env"], true, None, "example/runtime"),
                    process(
                        "where",
                        &["pwd"],
                        true,
                        Some(image.path("app/sub")),
                        "example/runtime",
                    ),
                    process("legacy", &["echo $MSG $GREETING"], false, None, "old/shell"),
                ],
            };
            for p in &metadata.processes {
                let link = image.path(&format!("cnb/process/{}", p.kind));
                fs::create_dir_all(link.parent().unwrap()).unwrap();
                symlink(image.launcher(), link).unwrap();
            }
            write("layers/config/metadata.toml", &metadata.to_toml(), 0o644);
            write(
                "layers/example_runtime/rt/env/GREETING.default",
                "hello",
                0o644,
            );
            write(
                "layers/example_runtime/rt/env.launch/web/ONLY_WEB",
                "1",
                0o644,
            );
            write("layers/example_runtime/rt/bin/tool", "", 0o755);
            write(
                "layers/example_runtime/rt/exec.d/set",
                "#!/bin/sh\necho 'FROM_EXEC_D = \"yes\"' >&3\n",
                0o755,
            );
            write(
                "layers/old_shell/sh/profile.d/msg.sh",
                "export MSG=from-profile\n",
                0o644,
            );
            fs::create_dir_all(image.path("app/sub")).unwrap();
            image
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.root.path().join(rel)
        }

        fn launcher(&self) -> PathBuf {
            self.path("cnb/lifecycle/launcher")
        }

        /// Runs `program` (the launcher or a link to it) as the image's
        /// entrypoint would, with `CNB_LAYERS_DIR` and `CNB_APP_DIR` set to
        /// the temporary tree.
        fn run(&self, program: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env_clear()
                .env("PATH", "/cnb/process:/usr/local/bin:/usr/bin:/bin")
                .env("HOME", "/home/cnb")
                .env("CNB_PLATFORM_API", "0.13")
                .env("CNB_LAYERS_DIR", self.path("layers"))
                .env("CNB_APP_DIR", self.path("app"))
                .envs(extra.iter().copied());
            // Another test thread may fork while it still holds the launcher
            // open for writing (between its fork and exec): try again.
            loop {
                match cmd.output() {
                    Err(e) if e.raw_os_error() == Some(26) => std::thread::yield_now(),
                    result => return result.unwrap(),
                }
            }
        }
    }

    fn process(
        kind: &str,
        command: &[&str],
        direct: bool,
        dir: Option<PathBuf>,
        bp: &str,
    ) -> Process {
        Process {
            kind: kind.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: vec![],
            direct,
            default: false,
            working_dir: dir.map(|d| d.display().to_string()),
            buildpack_id: Some(bp.into()),
            exec_env: vec![],
        }
    }

    fn stdout(out: &Output) -> String {
        assert!(
            out.status.success(),
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout.clone()).unwrap()
    }

    #[test]
    fn the_launcher_runs_a_process_in_its_environment() {
        let image = Image::new();
        let env = stdout(&image.run(&image.path("cnb/process/web"), &[], &[]));
        let mut vars: Vec<&str> = env.lines().collect();
        vars.sort();
        let rt = image.path("layers/example_runtime/rt");
        assert_eq!(
            vars,
            [
                "FROM_EXEC_D=yes".to_string(),
                "GREETING=hello".into(),
                "HOME=/home/cnb".into(),
                "ONLY_WEB=1".into(),
                format!("PATH={}/bin:/usr/local/bin:/usr/bin:/bin", rt.display()),
            ],
            "the launcher's inputs (CNB_*) and /cnb/process are gone; the layers' variables are there"
        );

        // The default process (web: the only one named so), as the image's
        // entrypoint does without a default.
        let env = stdout(&image.run(&image.launcher(), &[], &[]));
        assert!(env.contains("ONLY_WEB=1\n"), "{env}");

        // By CNB_PROCESS_TYPE, and by the first argument: the working
        // directory is the process's.
        let sub = image.path("app/sub").canonicalize().unwrap();
        let want = format!("{}\n", sub.display());
        let by_env = image.run(&image.launcher(), &[], &[("CNB_PROCESS_TYPE", "where")]);
        assert_eq!(stdout(&by_env), want);
        assert_eq!(stdout(&image.run(&image.launcher(), &["where"], &[])), want);

        // An older buildpack's shell process: profiles sourced first.
        let legacy = image.run(&image.path("cnb/process/legacy"), &[], &[]);
        assert_eq!(stdout(&legacy), "from-profile hello\n");

        // A user's command: `--` direct (no expansion), else through the
        // shell (expanded), in the app directory; the exit code is its own.
        let direct = image.run(&image.launcher(), &["--", "echo", "$GREETING"], &[]);
        assert_eq!(stdout(&direct), "$GREETING\n");
        let shell = image.run(&image.launcher(), &["echo", "$GREETING", "$MSG"], &[]);
        assert_eq!(stdout(&shell), "hello from-profile\n");
        let app = image.path("app").canonicalize().unwrap();
        assert_eq!(
            stdout(&image.run(&image.launcher(), &["--", "pwd"], &[])),
            format!("{}\n", app.display())
        );
        let code = image.run(&image.launcher(), &["--", "sh", "-c", "exit 7"], &[]);
        assert_eq!(code.status.code(), Some(7));
    }

    #[test]
    fn the_launcher_explains_what_it_cannot_do() {
        let image = Image::new();
        let out = image.run(&image.launcher(), &[], &[("CNB_PROCESS_TYPE", "db")]);
        assert_eq!(out.status.code(), Some(82));
        let metadata = image.path("layers/config/metadata.toml");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "launcher: no process of type db in {}\n",
                metadata.display()
            )
        );
        let out = image.run(&image.launcher(), &["--", "no-such-program"], &[]);
        assert_eq!(out.status.code(), Some(82));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "launcher: could not run no-such-program: No such file or directory (os error 2)\n"
        );
    }
}
