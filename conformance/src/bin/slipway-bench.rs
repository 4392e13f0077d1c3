//! `slipway-bench`: the registry-core benchmark.
//!
//! Starts Slipway and Debian's `docker-registry` (CNCF distribution 2.8) side
//! by side on loopback, each with fresh storage, pushes the same random
//! (incompressible) content to both, then measures both in the same run,
//! alternating which server goes first, so machine noise hits both:
//!
//! - manifest GET by tag and 1 MiB blob GET with `wrk` (requests/s, p99);
//! - a large blob GET with `curl -o /dev/null`, against a plain read of the
//!   same blob file from page cache (the physical limit);
//! - large blob pushes, monolithic (`POST` then `PUT ?digest=` with the whole
//!   body: distribution 2.8 ignores `?digest=` on `POST`) and chunked
//!   (`PATCH` with `Content-Range`, then `PUT ?digest=`);
//! - peak RSS (`VmHWM`) of each server process at the end.
//!
//! With `--deployment replicas`, the scale-out comparison instead: two
//! `slipway serve` replicas over one PostgreSQL database and one SeaweedFS
//! (S3) prefix, the single-node default (SQLite + filesystem), and
//! distribution with its S3 driver on the same SeaweedFS; manifest GET,
//! large blob GET and push, and peak RSS (see [`replicas`]).
//!
//! Progress goes to standard error; the result, a Markdown table, to
//! standard output. `conformance/bench/run.sh` builds everything and runs it.

use std::fmt::Write as _;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use rand::RngCore;
use reqwest::{Client, Method, StatusCode, header};
use sha2::{Digest as _, Sha256};
use tokio::process::{Child, Command};

const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The repository everything is pushed to (project `bench`).
const REPO: &str = "bench/app";
const TAG: &str = "latest";

#[derive(Parser, Debug)]
#[command(
    name = "slipway-bench",
    about = "Benchmark Slipway against CNCF distribution 2.8 on this machine"
)]
struct Args {
    /// The `slipway` binary (a release build).
    #[arg(long)]
    slipway: PathBuf,
    /// Debian's distribution binary.
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    distribution: PathBuf,
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    #[arg(long, default_value = "curl")]
    curl: PathBuf,
    /// What Slipway is (commit), shown in the report.
    #[arg(long, default_value = "")]
    slipway_version: String,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 8)]
    wrk_secs: u64,
    /// wrk runs per server and measurement (the median is reported).
    #[arg(long, default_value_t = 2)]
    wrk_rounds: usize,
    /// Size of the large blob, in MiB.
    #[arg(long, default_value_t = 512)]
    big_mib: usize,
    /// Large-blob GETs per server (the median is reported).
    #[arg(long, default_value_t = 5)]
    get_runs: usize,
    /// Pushes per server and push mode (the median is reported).
    #[arg(long, default_value_t = 5)]
    push_rounds: usize,
    /// Chunk size of chunked pushes, in MiB.
    #[arg(long, default_value_t = 8)]
    chunk_mib: usize,
    /// Where the servers keep their data (a fresh directory is made inside,
    /// and removed at the end unless --keep).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Keep the data directories and server logs.
    #[arg(long)]
    keep: bool,
    /// `single`: Slipway against distribution, both on the local file
    /// system. `replicas`: two Slipway replicas over PostgreSQL + S3
    /// (SeaweedFS) against the single node and against distribution on the
    /// same S3 store.
    #[arg(long, value_enum, default_value_t = Deployment::Single)]
    deployment: Deployment,
    /// `replicas`: a PostgreSQL URL whose role may create databases (a fresh
    /// one is made and dropped); default `SLIPWAY_TEST_POSTGRES_URL`, else
    /// postgres@127.0.0.1:5432.
    #[arg(long)]
    postgres: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Deployment {
    Single,
    Replicas,
}

/// Which registry a server is (and so, with file system storage, where it
/// keeps a blob's bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slipway,
    Distribution,
}

/// A running server, killed when dropped.
struct Server {
    kind: Kind,
    /// How progress messages and errors name it.
    name: String,
    base: String,
    dir: PathBuf,
    child: Child,
    pid: u32,
    client: Client,
    /// Basic credentials sent with pushes (Slipway's admin; distribution
    /// runs without auth). Pulls are anonymous on both.
    push_auth: Option<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `url` (absolute, of any server of the deployment) on this server:
    /// its path and query after this server's base.
    fn rebase(&self, url: &str) -> String {
        rebase(&self.base, url)
    }

    /// Absolute URL of a `Location` header value.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            self.url(location)
        }
    }

    fn push_request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, url);
        match &self.push_auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    /// Where the server keeps a published blob's bytes.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        match self.kind {
            Kind::Slipway => self
                .dir
                .join("data/blobs/blobs/sha256")
                .join(&hex[..2])
                .join(hex),
            Kind::Distribution => self
                .dir
                .join("root/docker/registry/v2/blobs/sha256")
                .join(&hex[..2])
                .join(hex)
                .join("data"),
        }
    }

    /// Peak and current resident set size, in KiB.
    fn rss_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| anyhow!("no {name} in /proc/{}/status", self.pid))
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    async fn stop(mut self) {
        // SIGTERM first, so Slipway shuts down as in production.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `url`'s path and query after `base` (`url` may be relative).
fn rebase(base: &str, url: &str) -> String {
    let path = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map_or(url, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    format!("{base}{path}")
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn client() -> Result<Client> {
    Ok(Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()?)
}

/// The benchmark's project (public: pulls are anonymous on every server).
fn project() -> &'static str {
    REPO.split('/').next().unwrap_or(REPO)
}

/// A single node with the embedded defaults (SQLite + blob tree in its
/// data directory), with the benchmark's project.
async fn start_slipway(bin: &Path, dir: &Path, password: &str) -> Result<Server> {
    let server = start_slipway_with(bin, dir, "Slipway", password, "", &[]).await?;
    create_project(&server, password).await?;
    Ok(server)
}

/// `slipway serve` with log filter `warn` and `extra` appended to its TOML
/// configuration (sections only), and `env` in its environment.
async fn start_slipway_with(
    bin: &Path,
    dir: &Path,
    name: &str,
    password: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> Result<Server> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("slipway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[log]\nfilter = \"warn\"\n{extra}",
            dir.join("data").display()
        ),
    )?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("SLIPWAY_ADMIN_PASSWORD", password)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log"))?)
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let server = Server {
        kind: Kind::Slipway,
        name: name.to_owned(),
        base: format!("http://127.0.0.1:{port}"),
        dir: dir.to_owned(),
        pid: child.id().expect("a running child has a pid"),
        child,
        client: client()?,
        push_auth: Some(("admin".into(), password.into())),
    };
    wait_ready(server).await
}

async fn create_project(server: &Server, password: &str) -> Result<()> {
    let project = project();
    let r = server
        .client
        .post(server.url("/api/v1/projects"))
        .basic_auth("admin", Some(password))
        .json(&serde_json::json!({"name": project, "public": true}))
        .send()
        .await
        .context("cannot create the benchmark's project")?;
    if r.status() != reqwest::StatusCode::CREATED {
        bail!("creating project {project} answered {}", r.status());
    }
    Ok(())
}

/// distribution with filesystem storage in `dir/root`.
async fn start_distribution(bin: &Path, dir: &Path) -> Result<Server> {
    let storage = format!(
        "  filesystem:\n    rootdirectory: {}\n",
        dir.join("root").display()
    );
    start_distribution_with(bin, dir, "distribution", &storage).await
}

/// distribution with `storage` (the driver's YAML, indented under
/// `storage:`), log level `warn`, access log off, delete enabled and the
/// in-memory blob descriptor cache.
async fn start_distribution_with(
    bin: &Path,
    dir: &Path,
    name: &str,
    storage: &str,
) -> Result<Server> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n{storage}  delete:\n    enabled: true\n  \
             cache:\n    blobdescriptor: inmemory\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: slipway-bench-not-a-secret\n",
        ),
    )?;
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        // Its AWS SDK (Go, v1) refuses to start when this names a CA bundle,
        // as on machines that intercept TLS: the S3 store here is plain
        // HTTP on loopback anyway.
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log"))?)
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let server = Server {
        kind: Kind::Distribution,
        name: name.to_owned(),
        base: format!("http://127.0.0.1:{port}"),
        dir: dir.to_owned(),
        pid: child.id().expect("a running child has a pid"),
        child,
        client: client()?,
        push_auth: None,
    };
    wait_ready(server).await
}

/// Polls `GET /v2/` until the server answers (any status below 500), with a
/// deadline; fails early when the process exits.
async fn wait_ready(mut server: Server) -> Result<Server> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{} exited ({status}) before answering; its log:\n{}",
                server.name,
                log_tail(&server.dir)
            );
        }
        if let Ok(r) = server.client.get(server.url("/v2/")).send().await
            && r.status().as_u16() < 500
        {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer on {} within 30 s; its log:\n{}",
                server.name,
                server.base,
                log_tail(&server.dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for f in ["stdout.log", "stderr.log"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            let _ = writeln!(out, "  {f}: {l}");
        }
    }
    out
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn expect(resp: &reqwest::Response, want: StatusCode, what: &str) -> Result<()> {
    ensure!(
        resp.status() == want,
        "{what}: expected {want}, got {}",
        resp.status()
    );
    Ok(())
}

fn location(resp: &reqwest::Response) -> Result<String> {
    resp.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no Location in the {} answer", resp.status()))
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

async fn start_upload(s: &Server, repo: &str) -> Result<String> {
    let resp = s
        .push_request(Method::POST, &s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await?;
    expect(&resp, StatusCode::ACCEPTED, "POST blobs/uploads/")?;
    Ok(s.absolute(&location(&resp)?))
}

/// `POST /blobs/uploads/` then `PUT ?digest=` with the whole body. Request
/// `k` goes to `servers[k % servers.len()]`: replicas of one deployment take
/// turns.
async fn push_monolithic(
    servers: &[&Server],
    repo: &str,
    data: Bytes,
    digest: &str,
) -> Result<Duration> {
    let t = Instant::now();
    let url = start_upload(servers[0], repo).await?;
    let s = servers[1 % servers.len()];
    let resp = s
        .push_request(Method::PUT, &with_digest(&s.rebase(&url), digest))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(data)
        .send()
        .await?;
    expect(&resp, StatusCode::CREATED, "PUT ?digest= (monolithic)")?;
    Ok(t.elapsed())
}

/// `POST`, `PATCH` chunks with `Content-Range`, then `PUT ?digest=`; request
/// `k` goes to `servers[k % servers.len()]`.
async fn push_chunked(
    servers: &[&Server],
    repo: &str,
    data: Bytes,
    digest: &str,
    chunk: usize,
) -> Result<Duration> {
    let t = Instant::now();
    let mut url = start_upload(servers[0], repo).await?;
    let mut k = 1;
    let mut offset = 0;
    while offset < data.len() {
        let s = servers[k % servers.len()];
        let end = (offset + chunk).min(data.len());
        let resp = s
            .push_request(Method::PATCH, &s.rebase(&url))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_RANGE, format!("{offset}-{}", end - 1))
            .body(data.slice(offset..end))
            .send()
            .await?;
        expect(&resp, StatusCode::ACCEPTED, "PATCH chunk")?;
        url = s.absolute(&location(&resp)?);
        offset = end;
        k += 1;
    }
    let s = servers[k % servers.len()];
    let resp = s
        .push_request(Method::PUT, &with_digest(&s.rebase(&url), digest))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await?;
    expect(&resp, StatusCode::CREATED, "PUT ?digest= (chunked)")?;
    Ok(t.elapsed())
}

async fn put_manifest(s: &Server, repo: &str, tag: &str, body: &Bytes) -> Result<()> {
    let resp = s
        .push_request(Method::PUT, &s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await?;
    expect(&resp, StatusCode::CREATED, "PUT manifest")
}

/// Checks that an anonymous GET returns exactly `want`.
async fn check_get(s: &Server, path: &str, accept: Option<&str>, want: &[u8]) -> Result<()> {
    let mut rb = s.client.get(s.url(path));
    if let Some(a) = accept {
        rb = rb.header(header::ACCEPT, a);
    }
    let resp = rb.send().await?;
    if resp.status() == StatusCode::UNAUTHORIZED {
        bail!(
            "{} refuses anonymous pulls of {path}: the benchmark pulls anonymously from both \
             servers, so the project `bench` must be public",
            s.name
        );
    }
    expect(&resp, StatusCode::OK, &format!("GET {path}"))?;
    let body = resp.bytes().await?;
    ensure!(
        body.len() == want.len() && body[..] == want[..],
        "{}: GET {path} returned other bytes ({} instead of {})",
        s.name,
        body.len(),
        want.len()
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct WrkResult {
    rps: f64,
    p99_ms: f64,
}

/// `wrk -t2 -c32 --latency`: requests per second and the 99th percentile.
async fn wrk(args: &Args, url: &str, accept: Option<&str>, secs: u64) -> Result<WrkResult> {
    wrk_with(args, url, accept, secs, 2, 32).await
}

/// `wrk -t<threads> -c<connections> --latency`.
async fn wrk_with(
    args: &Args,
    url: &str,
    accept: Option<&str>,
    secs: u64,
    threads: usize,
    connections: usize,
) -> Result<WrkResult> {
    let mut cmd = Command::new(&args.wrk);
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .args(["--latency", "--timeout", "10s"])
        .arg(format!("-d{secs}s"));
    if let Some(a) = accept {
        cmd.arg("-H").arg(format!("Accept: {a}"));
    }
    let out = cmd.arg(url).stdin(Stdio::null()).output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("wrk on {url}: {}", line.trim());
    }
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors")) {
        eprintln!("  warning: wrk on {url}: {}", line.trim());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_wrk_time(v.trim()))
        .ok_or_else(|| anyhow!("no 99% latency in wrk's output:\n{text}"))?;
    Ok(WrkResult { rps, p99_ms: p99 })
}

/// `812.00us`, `1.23ms`, `1.02s`, `2.00m` → milliseconds.
fn parse_wrk_time(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// One `curl -o /dev/null` download: MB/s (10^6 bytes per second).
async fn curl_get(args: &Args, url: &str, size: usize) -> Result<f64> {
    let out = Command::new(&args.curl)
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
        ])
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let parts: Vec<&str> = text.split_whitespace().collect();
    ensure!(
        out.status.success() && parts.len() == 3 && parts[0] == "200",
        "curl {url}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: usize = parts[1].parse()?;
    ensure!(got == size, "curl {url}: {got} bytes instead of {size}");
    let secs: f64 = parts[2].parse()?;
    Ok(size as f64 / secs / 1e6)
}

/// Reads a file from page cache into a 1 MiB buffer (like `dd bs=1M
/// of=/dev/null`): MB/s.
fn raw_read(path: &Path) -> Result<f64> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; MIB];
    let t = Instant::now();
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e6)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} – {}", fmt_num(min), fmt_num(max))
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        // Thousands separated by a thin space would be prettier; commas
        // paste everywhere.
        let s = format!("{:.0}", x);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sync(1)`: no dirty pages left from one push to slow the next down.
async fn sync() -> Result<()> {
    let status = Command::new("sync").status().await?;
    ensure!(status.success(), "sync failed");
    Ok(())
}

/// Both servers, the order alternating with `round` (even: Slipway first).
fn order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// Samples per server (index 0 Slipway, 1 distribution).
#[derive(Default)]
struct Samples([Vec<f64>; 2]);

impl Samples {
    fn median(&self, i: usize) -> f64 {
        median(&self.0[i])
    }
}

struct Row {
    what: String,
    unit: &'static str,
    higher_is_better: bool,
    slipway: f64,
    distribution: f64,
    samples: Option<[String; 2]>,
    target: Option<(String, bool)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // One thread: the driver only waits for its clients (wrk, curl) and
    // servers, and SeaweedFS, started from this thread, is killed when the
    // thread that started it ends (its parent-death signal).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let root = args
        .work_dir
        .join(format!("slipway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = match args.deployment {
        Deployment::Single => bench(&args, &root).await,
        Deployment::Replicas => replicas::bench(&args, &root).await,
    };
    if args.keep || result.is_err() {
        eprintln!("data and server logs kept in {}", root.display());
    } else {
        std::fs::remove_dir_all(&root)?;
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    result
}

/// The load average before the run, with a warning when it is high.
fn load_before() -> String {
    let load = loadavg();
    if load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        > Some(0.5)
    {
        eprintln!(
            "warning: the load average is {load} before starting: other work on this \
             machine will show in the figures"
        );
    }
    load
}

/// The image pushed to every server: a 1 MiB layer, its config and an OCI
/// manifest, random (incompressible).
struct Content {
    small: Bytes,
    small_digest: String,
    config: Bytes,
    config_digest: String,
    manifest: Bytes,
}

impl Content {
    fn generate(rng: &mut impl RngCore) -> Result<Content> {
        let mut small = vec![0u8; MIB];
        rng.fill_bytes(&mut small);
        let small = Bytes::from(small);
        let small_digest = sha256(&small);
        let config = Bytes::from(serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [small_digest] },
        }))?);
        let config_digest = sha256(&config);
        let manifest = Bytes::from(serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": small_digest,
                "size": small.len(),
            }],
        }))?);
        Ok(Content {
            small,
            small_digest,
            config,
            config_digest,
            manifest,
        })
    }

    /// Pushes the image and `big` (an extra blob) through `servers` (taking
    /// turns), then checks the manifest and the layer on each of them.
    async fn push(&self, servers: &[&Server], big: &Bytes, big_digest: &str) -> Result<()> {
        push_monolithic(servers, REPO, self.small.clone(), &self.small_digest).await?;
        push_monolithic(servers, REPO, self.config.clone(), &self.config_digest).await?;
        push_monolithic(servers, REPO, big.clone(), big_digest).await?;
        put_manifest(servers[0], REPO, TAG, &self.manifest).await?;
        for s in servers {
            check_get(
                s,
                &format!("/v2/{REPO}/manifests/{TAG}"),
                Some(OCI_MANIFEST),
                &self.manifest,
            )
            .await?;
            check_get(
                s,
                &format!("/v2/{REPO}/blobs/{}", self.small_digest),
                None,
                &self.small,
            )
            .await?;
        }
        Ok(())
    }
}

fn random_password(rng: &mut impl RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

async fn bench(args: &Args, root: &Path) -> Result<()> {
    let load_before = load_before();
    let big_len = args.big_mib * MIB;
    let chunk = args.chunk_mib * MIB;

    eprintln!("generating {} MiB of random data", args.big_mib + 1);
    let mut rng = rand::rng();
    let content = Content::generate(&mut rng)?;
    let mut big = vec![0u8; big_len];
    rng.fill_bytes(&mut big);
    let small_digest = content.small_digest.clone();

    let password = random_password(&mut rng);
    eprintln!("starting Slipway and distribution");
    let servers = [
        start_slipway(&args.slipway, &root.join("slipway"), &password).await?,
        start_distribution(&args.distribution, &root.join("distribution")).await?,
    ];

    // Content: the large blob as the first variant (a fresh blob for each
    // push measurement is derived from it below).
    let big_bytes = Bytes::from(big.clone());
    let big_digest = sha256(&big_bytes);
    for s in &servers {
        eprintln!("pushing the content to {}", s.name);
        content.push(&[s], &big_bytes, &big_digest).await?;
        let file = s.blob_file(&big_digest);
        let len = std::fs::metadata(&file)
            .with_context(|| format!("{}'s blob file {}", s.name, file.display()))?
            .len();
        ensure!(
            len as usize == big_len,
            "{} holds {len} bytes",
            file.display()
        );
    }
    drop(big_bytes);
    drop(content);
    sync().await?;

    let mut rows = Vec::new();

    // Small requests under load: wrk.
    for (what, path, accept) in [
        (
            "Manifest GET by tag",
            format!("/v2/{REPO}/manifests/{TAG}"),
            Some(OCI_MANIFEST),
        ),
        (
            "Blob GET, 1 MiB",
            format!("/v2/{REPO}/blobs/{small_digest}"),
            None,
        ),
    ] {
        let (mut rps, mut p99) = (Samples::default(), Samples::default());
        for i in [0, 1] {
            eprintln!("{what}: warming {} up", servers[i].name);
            wrk(args, &servers[i].url(&path), accept, 2).await?;
        }
        for round in 0..args.wrk_rounds {
            for i in order(round) {
                let r = wrk(args, &servers[i].url(&path), accept, args.wrk_secs).await?;
                eprintln!(
                    "{what}: {} {:.0} req/s, p99 {:.2} ms",
                    servers[i].name, r.rps, r.p99_ms
                );
                rps.0[i].push(r.rps);
                p99.0[i].push(r.p99_ms);
            }
        }
        let manifest_row = what.starts_with("Manifest");
        let ratio = rps.median(0) / rps.median(1);
        rows.push(Row {
            what: format!("{what}, 32 connections"),
            unit: "req/s",
            higher_is_better: true,
            slipway: rps.median(0),
            distribution: rps.median(1),
            samples: Some([spread(&rps.0[0]), spread(&rps.0[1])]),
            target: manifest_row.then(|| ("≥ 3× distribution".to_owned(), ratio >= 3.0)),
        });
        rows.push(Row {
            what: format!("{what}, p99 latency"),
            unit: "ms",
            higher_is_better: false,
            slipway: p99.median(0),
            distribution: p99.median(1),
            samples: Some([spread(&p99.0[0]), spread(&p99.0[1])]),
            target: None,
        });
    }

    // The large blob: curl against a plain read of the same file, and
    // against two minimal HTTP servers that send the same file (the best a
    // server can do here, for the same client over loopback).
    let url = |s: &Server| s.url(&format!("/v2/{REPO}/blobs/{big_digest}"));
    let reference_file = servers[0].blob_file(&big_digest);
    let sendfile_url = file_server(reference_file.clone(), FileCopy::Sendfile)?;
    let rw_url = file_server(reference_file.clone(), FileCopy::ReadWrite)?;
    let mut get = Samples::default();
    let mut raw = Vec::new();
    let (mut sendfile, mut rw) = (Vec::new(), Vec::new());
    for s in &servers {
        curl_get(args, &url(s), big_len).await?; // warm-up
        raw_read(&s.blob_file(&big_digest))?; // warm-up
    }
    for round in 0..args.get_runs {
        for i in order(round) {
            let s = &servers[i];
            let mbps = curl_get(args, &url(s), big_len).await?;
            eprintln!("Blob GET, {} MiB: {} {mbps:.0} MB/s", args.big_mib, s.name);
            get.0[i].push(mbps);
        }
        let f = curl_get(args, &sendfile_url, big_len).await?;
        let w = curl_get(args, &rw_url, big_len).await?;
        // The limit: the best of three reads in a row.
        let mut r = 0f64;
        for _ in 0..3 {
            r = r.max(raw_read(&reference_file)?);
        }
        eprintln!(
            "Blob GET, {} MiB: minimal server with sendfile {f:.0} MB/s, with read+write \
             {w:.0} MB/s; raw read {r:.0} MB/s",
            args.big_mib
        );
        sendfile.push(f);
        rw.push(w);
        raw.push(r);
    }
    let raw_mbps = median(&raw);
    rows.push(Row {
        what: format!("Blob GET, {} MiB, curl", args.big_mib),
        unit: "MB/s",
        higher_is_better: true,
        slipway: get.median(0),
        distribution: get.median(1),
        samples: Some([spread(&get.0[0]), spread(&get.0[1])]),
        target: None,
    });
    let (to_raw_s, to_raw_d) = (get.median(0) / raw_mbps, get.median(1) / raw_mbps);
    rows.push(Row {
        what: format!(
            "Blob GET, {} MiB ÷ raw page-cache read of the blob file ({} MB/s)",
            args.big_mib,
            fmt_num(raw_mbps)
        ),
        unit: "× raw",
        higher_is_better: true,
        slipway: to_raw_s,
        distribution: to_raw_d,
        samples: None,
        target: Some(("Slipway ≥ 0.8× raw".to_owned(), to_raw_s >= 0.8)),
    });
    let references = vec![
        (
            "Raw read of the blob file from page cache (1 MiB reads, best of 3)".to_owned(),
            raw,
        ),
        (
            "Minimal HTTP server, sendfile(2), same file, same curl".to_owned(),
            sendfile,
        ),
        (
            "Minimal HTTP server, read(2) + write(2) through one 1 MiB buffer".to_owned(),
            rw,
        ),
    ];

    // Pushes: a fresh blob for every push, so nothing is deduplicated.
    let mut mono = Samples::default();
    let mut chunked = Samples::default();
    let mut variant = 0u64;
    for round in 0..args.push_rounds {
        for mode in ["monolithic", "chunked"] {
            variant += 1;
            big[..8].copy_from_slice(&variant.to_le_bytes());
            let data = Bytes::from(big.clone());
            let digest = sha256(&data);
            // Alternate the order between rounds and modes.
            for i in order(round + usize::from(mode == "chunked")) {
                let s = &servers[i];
                let took = if mode == "monolithic" {
                    push_monolithic(&[s], "bench/push", data.clone(), &digest).await?
                } else {
                    push_chunked(&[s], "bench/push", data.clone(), &digest, chunk).await?
                };
                sync().await?;
                let mbps = big_len as f64 / took.as_secs_f64() / 1e6;
                eprintln!(
                    "Push {mode}, {} MiB: {} {mbps:.0} MB/s",
                    args.big_mib, s.name
                );
                if mode == "monolithic" {
                    &mut mono
                } else {
                    &mut chunked
                }
                .0[i]
                    .push(mbps);
            }
        }
    }
    drop(big);
    for (what, s) in [
        (
            format!(
                "Push {} MiB, monolithic (POST, then PUT ?digest= with the body)",
                args.big_mib
            ),
            &mono,
        ),
        (
            format!(
                "Push {} MiB, chunked ({} MiB PATCHes with Content-Range, then PUT ?digest=)",
                args.big_mib, args.chunk_mib
            ),
            &chunked,
        ),
    ] {
        let ratio = s.median(0) / s.median(1);
        rows.push(Row {
            what,
            unit: "MB/s",
            higher_is_better: true,
            slipway: s.median(0),
            distribution: s.median(1),
            samples: Some([spread(&s.0[0]), spread(&s.0[1])]),
            target: Some(("≥ 1.5× distribution".to_owned(), ratio >= 1.5)),
        });
    }

    // Peak memory, read while the processes still run.
    let mut hwm = [0u64; 2];
    let mut rss = [0u64; 2];
    for (i, s) in servers.iter().enumerate() {
        (hwm[i], rss[i]) = s.rss_kib()?;
    }
    rows.push(Row {
        what: "Peak RSS of the server process (VmHWM)".into(),
        unit: "MiB",
        higher_is_better: false,
        slipway: hwm[0] as f64 / 1024.0,
        distribution: hwm[1] as f64 / 1024.0,
        samples: Some([
            format!("{:.1} at the end", rss[0] as f64 / 1024.0),
            format!("{:.1} at the end", rss[1] as f64 / 1024.0),
        ]),
        target: Some(("below distribution".to_owned(), hwm[0] < hwm[1])),
    });
    for s in servers {
        s.stop().await;
    }

    print!("{}", report(args, &rows, &references, &load_before).await);
    Ok(())
}

async fn report(
    args: &Args,
    rows: &[Row],
    references: &[(String, Vec<f64>)],
    load_before: &str,
) -> String {
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dist_version = Command::new(&args.distribution)
        .arg("--version")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nSlipway {} vs {dist_version}; {cpu}, {cores} cores, Linux {}; client and servers on \
         the same machine, loopback. Medians of {} wrk runs of {} s, {} GETs, {} pushes per \
         server, alternating which server goes first. Load average (1, 5, 15 min) before: \
         {load_before}; after: {}.\n",
        if args.slipway_version.is_empty() {
            "(unknown commit)"
        } else {
            &args.slipway_version
        },
        kernel.trim(),
        args.wrk_rounds,
        args.wrk_secs,
        args.get_runs,
        args.push_rounds,
        loadavg(),
    );
    let _ = writeln!(
        out,
        "| Measurement | Unit | Slipway | distribution 2.8 | Slipway ÷ distribution | Target | Met |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|---|:-:|");
    for r in rows {
        let ratio = r.slipway / r.distribution;
        let better = match (r.higher_is_better, ratio >= 1.0) {
            _ if (ratio - 1.0).abs() < 0.005 => "",
            (true, true) | (false, false) => " (Slipway better)",
            _ => " (distribution better)",
        };
        let direction = if r.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let (target, met) = match &r.target {
            Some((t, ok)) => (t.as_str(), if *ok { "✅" } else { "❌" }),
            None => ("", ""),
        };
        let _ = writeln!(
            out,
            "| {} | {} ({direction}) | {} | {} | {ratio:.2}×{better} | {target} | {met} |",
            r.what,
            r.unit,
            fmt_num(r.slipway),
            fmt_num(r.distribution),
        );
    }
    let _ = writeln!(out, "\nSpread of the samples (min – max):\n");
    let _ = writeln!(out, "| Measurement | Slipway | distribution 2.8 |");
    let _ = writeln!(out, "|---|--:|--:|");
    for r in rows {
        if let Some([a, b]) = &r.samples {
            let (a, b) = if r.unit == "× raw" {
                (format!("raw read: {a} MB/s"), b.clone())
            } else {
                (a.clone(), b.clone())
            };
            let _ = writeln!(out, "| {} ({}) | {a} | {b} |", r.what, r.unit);
        }
    }
    let _ = writeln!(
        out,
        "\nReference points for the {} MiB blob GET, measured in the same rounds:\n",
        args.big_mib
    );
    let _ = writeln!(
        out,
        "| Reference | MB/s (median) | min – max | ÷ raw read |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|");
    let raw = references.first().map_or(f64::NAN, |(_, v)| median(v));
    for (what, v) in references {
        let m = median(v);
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {:.2}× |",
            fmt_num(m),
            spread(v),
            m / raw
        );
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum FileCopy {
    /// sendfile(2): the kernel sends page-cache pages, no copy in the server.
    Sendfile,
    /// read(2) into one reused 1 MiB buffer, write(2) to the socket.
    ReadWrite,
}

/// A minimal HTTP/1.1 server on a free loopback port that answers every
/// request with the bytes of `path`, one connection at a time, on its own
/// thread (left running until the benchmark exits). Returns its URL.
fn file_server(path: PathBuf, copy: FileCopy) -> Result<String> {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/blob", listener.local_addr()?);
    let serve = move |mut conn: std::net::TcpStream| -> std::io::Result<()> {
        conn.set_nodelay(true)?;
        let mut request = Vec::new();
        let mut byte = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut byte[..1])?;
            if n == 0 {
                return Ok(());
            }
            request.push(byte[0]);
        }
        let mut file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        )?;
        match copy {
            FileCopy::Sendfile => {
                use std::os::fd::AsRawFd;
                let mut offset: libc::off_t = 0;
                while (offset as u64) < len {
                    let left = (len - offset as u64).min(1 << 30) as usize;
                    // SAFETY: both descriptors are open for the whole call and
                    // `offset` is a valid, exclusively borrowed off_t.
                    let n = unsafe {
                        libc::sendfile(conn.as_raw_fd(), file.as_raw_fd(), &mut offset, left)
                    };
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        if e.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(e);
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
            FileCopy::ReadWrite => {
                let mut buf = vec![0u8; MIB];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    conn.write_all(&buf[..n])?;
                }
            }
        }
        Ok(())
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = serve(conn);
        }
    });
    Ok(url)
}

/// `--deployment replicas`: Slipway scaled out (two replicas over one
/// PostgreSQL database and one S3 prefix on SeaweedFS) next to the single
/// node default, and distribution 2.8 with its S3 driver on the same
/// SeaweedFS.
///
/// - Manifest GET by tag: 32 connections in all. For the replicas, two wrk
///   processes run at once, `-t1 -c16` each on one replica (what a
///   round-robin load balancer would send them, without a proxy's own cost
///   on these two cores); their requests/s are summed and the larger p99 is
///   reported. The single servers get one `wrk -t2 -c32`: the same client
///   threads and connections.
/// - 512 MiB blob GET: `curl -o /dev/null`, streamed through the server
///   (Slipway's `redirect = false`, distribution's `redirect: disable`);
///   for the replicas, runs alternate between them.
/// - 512 MiB pushes, monolithic and chunked, with the requests of each push
///   alternating between the replicas (`POST` on one, the next `PATCH` or
///   `PUT` on the other, and so on).
/// - Peak RSS of every server process, and of SeaweedFS.
mod replicas {
    use super::*;
    use slipway_storage::testing::{ACCESS_KEY, PostgresDb, SECRET_KEY, SeaweedFs};

    /// Created by `SeaweedFs::start` (its readiness probe).
    const BUCKET: &str = "slipway-test";
    /// Slipway's replicas keep their blobs under this prefix...
    const SLIPWAY_PREFIX: &str = "slipway/";
    /// ...and distribution under this root directory, in the same bucket.
    const DISTRIBUTION_ROOT: &str = "/distribution";
    /// Slipway's S3 part size (its default) and distribution 2.8's chunk
    /// size (its default), in MiB.
    const SLIPWAY_PART_MIB: usize = 8;
    const DISTRIBUTION_CHUNK_MIB: usize = 10;

    /// What is measured: one deployment, of one or more server processes.
    struct Target {
        name: &'static str,
        servers: Vec<Server>,
    }

    impl Target {
        /// The servers, starting with `first` (mod their number): which
        /// replica takes the first request changes from round to round.
        fn turns(&self, first: usize) -> Vec<&Server> {
            let n = self.servers.len();
            (0..n).map(|k| &self.servers[(first + k) % n]).collect()
        }
    }

    const REPLICAS: usize = 0;
    const SINGLE: usize = 1;
    const DIST_S3: usize = 2;

    /// The three targets in an order that rotates with `round`.
    fn order3(round: usize) -> [usize; 3] {
        [round % 3, (round + 1) % 3, (round + 2) % 3]
    }

    /// Samples per target.
    #[derive(Default)]
    struct Samples3([Vec<f64>; 3]);

    impl Samples3 {
        fn medians(&self) -> [f64; 3] {
            [median(&self.0[0]), median(&self.0[1]), median(&self.0[2])]
        }
        fn spreads(&self) -> [String; 3] {
            [spread(&self.0[0]), spread(&self.0[1]), spread(&self.0[2])]
        }
    }

    struct Row3 {
        what: String,
        unit: &'static str,
        higher_is_better: bool,
        values: [f64; 3],
        samples: [String; 3],
    }

    impl Row3 {
        fn from_samples(
            what: String,
            unit: &'static str,
            higher_is_better: bool,
            s: &Samples3,
        ) -> Row3 {
            Row3 {
                what,
                unit,
                higher_is_better,
                values: s.medians(),
                samples: s.spreads(),
            }
        }
    }

    pub(super) async fn bench(args: &Args, root: &Path) -> Result<()> {
        let load_before = load_before();
        for tool in [&args.distribution, &args.wrk, &args.curl] {
            ensure!(
                Command::new(tool)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .is_ok(),
                "{} is missing",
                tool.display()
            );
        }
        eprintln!("starting SeaweedFS and creating a PostgreSQL database");
        // Started from this (the only) thread, which lives until the end:
        // SeaweedFS dies with the thread that started it.
        let weed = SeaweedFs::start();
        let db = PostgresDb::fresh(args.postgres.as_deref()).await;
        let result = measure(args, root, &weed, &db.url, load_before).await;
        db.drop_db().await;
        drop(weed);
        result
    }

    async fn start_replicas(
        args: &Args,
        root: &Path,
        weed: &SeaweedFs,
        database: &str,
        password: &str,
    ) -> Result<Target> {
        let key_file = root.join("replicas-token-signing-key.pem");
        let extra = format!(
            "\n[database]\nurl = \"{database}\"\n\n\
             [storage]\nbackend = \"s3\"\n\n\
             [storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\n\
             prefix = \"{SLIPWAY_PREFIX}\"\npath_style = true\naccess_key = \"{ACCESS_KEY}\"\n\
             part_size_mib = {SLIPWAY_PART_MIB}\ncreate_bucket = true\n\n\
             [auth]\nkey_file = \"{}\"\n",
            weed.endpoint,
            key_file.display()
        );
        let env = [("SLIPWAY_STORAGE__S3__SECRET_KEY", SECRET_KEY)];
        let mut servers = Vec::new();
        // One after the other: the first applies the migrations and
        // creates the signing key the second then reads.
        for i in 1..=2 {
            servers.push(
                start_slipway_with(
                    &args.slipway,
                    &root.join(format!("replica-{i}")),
                    &format!("Slipway replica {i}"),
                    password,
                    &extra,
                    &env,
                )
                .await?,
            );
        }
        create_project(&servers[0], password).await?;
        Ok(Target {
            name: "Slipway, 2 replicas (PostgreSQL + S3)",
            servers,
        })
    }

    async fn start_distribution_s3(args: &Args, root: &Path, weed: &SeaweedFs) -> Result<Target> {
        // distribution 2.8's s3-aws driver: path-style addressing is forced
        // whenever `regionendpoint` is set (`forcepathstyle` only came in
        // 3.0); `redirect: disable` streams blob GETs through the registry
        // instead of answering 307 to a presigned URL, as Slipway does with
        // `redirect = false`.
        let storage = format!(
            "  s3:\n    accesskey: {ACCESS_KEY}\n    secretkey: {SECRET_KEY}\n    \
             region: us-east-1\n    regionendpoint: {}\n    bucket: {BUCKET}\n    \
             rootdirectory: {DISTRIBUTION_ROOT}\n    secure: false\n    v4auth: true\n    \
             chunksize: {}\n  redirect:\n    disable: true\n",
            weed.endpoint,
            DISTRIBUTION_CHUNK_MIB * MIB
        );
        let server = start_distribution_with(
            &args.distribution,
            &root.join("distribution-s3"),
            "distribution on S3",
            &storage,
        )
        .await?;
        Ok(Target {
            name: "distribution 2.8 on S3",
            servers: vec![server],
        })
    }

    /// Downloads the blob through `s` and checks its digest (and, the first
    /// time, warms every layer up: S3 client, SeaweedFS, page cache).
    async fn verify_blob(s: &Server, digest: &str, len: usize) -> Result<()> {
        let resp = s
            .client
            .get(s.url(&format!("/v2/{REPO}/blobs/{digest}")))
            .send()
            .await?;
        expect(
            &resp,
            StatusCode::OK,
            &format!("{}: GET the large blob", s.name),
        )?;
        let mut h = Sha256::new();
        let mut got = 0;
        let mut stream = resp.bytes_stream();
        use futures::StreamExt as _;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            got += chunk.len();
            h.update(&chunk);
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        ensure!(
            got == len && actual == digest,
            "{}: the large blob came back as {got} bytes with digest {actual}",
            s.name
        );
        Ok(())
    }

    /// Manifest GETs with 32 connections in all, split evenly over the
    /// target's servers, at once: summed requests/s, the largest p99.
    async fn wrk_target(
        args: &Args,
        t: &Target,
        path: &str,
        accept: Option<&str>,
        secs: u64,
    ) -> Result<WrkResult> {
        let n = t.servers.len();
        let runs = t.servers.iter().map(|s| {
            let url = s.url(path);
            async move { wrk_with(args, &url, accept, secs, (2 / n).max(1), 32 / n).await }
        });
        let results = futures::future::try_join_all(runs).await?;
        Ok(WrkResult {
            rps: results.iter().map(|r| r.rps).sum(),
            p99_ms: results.iter().map(|r| r.p99_ms).fold(0.0, f64::max),
        })
    }

    /// The pid of the SeaweedFS process serving S3 at `endpoint`.
    fn weed_pid(endpoint: &str) -> Option<u32> {
        let port = endpoint.rsplit(':').next()?;
        let needle = format!("-s3.port={port}");
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (args.iter().any(|a| a.ends_with(b"weed")) && args.contains(&needle.as_bytes()))
                .then_some(pid)
        })
    }

    fn rss_of(pid: u32) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    async fn measure(
        args: &Args,
        root: &Path,
        weed: &SeaweedFs,
        database: &str,
        load_before: String,
    ) -> Result<()> {
        let big_len = args.big_mib * MIB;
        let chunk = args.chunk_mib * MIB;
        eprintln!("generating {} MiB of random data", args.big_mib + 1);
        let mut rng = rand::rng();
        let content = Content::generate(&mut rng)?;
        let mut big = vec![0u8; big_len];
        rng.fill_bytes(&mut big);
        let password = random_password(&mut rng);

        eprintln!("starting two Slipway replicas, a single node and distribution on S3");
        let mut single = start_slipway(&args.slipway, &root.join("single"), &password).await?;
        single.name = "Slipway, single node".into();
        let targets = [
            start_replicas(args, root, weed, database, &password).await?,
            Target {
                name: "Slipway, single node (SQLite + file system)",
                servers: vec![single],
            },
            start_distribution_s3(args, root, weed).await?,
        ];

        let big_bytes = Bytes::from(big.clone());
        let big_digest = sha256(&big_bytes);
        for t in &targets {
            eprintln!("pushing the content to {}", t.name);
            content.push(&t.turns(0), &big_bytes, &big_digest).await?;
            for s in &t.servers {
                verify_blob(s, &big_digest, big_len).await?;
            }
        }
        drop(big_bytes);
        sync().await?;

        let mut rows = Vec::new();

        // Manifest GET by tag.
        let path = format!("/v2/{REPO}/manifests/{TAG}");
        let (mut rps, mut p99) = (Samples3::default(), Samples3::default());
        for t in &targets {
            eprintln!("Manifest GET: warming {} up", t.name);
            wrk_target(args, t, &path, Some(OCI_MANIFEST), 2).await?;
        }
        for round in 0..args.wrk_rounds {
            for i in order3(round) {
                let r =
                    wrk_target(args, &targets[i], &path, Some(OCI_MANIFEST), args.wrk_secs).await?;
                eprintln!(
                    "Manifest GET: {} {:.0} req/s, p99 {:.2} ms",
                    targets[i].name, r.rps, r.p99_ms
                );
                rps.0[i].push(r.rps);
                p99.0[i].push(r.p99_ms);
            }
        }
        rows.push(Row3::from_samples(
            "Manifest GET by tag, 32 connections".into(),
            "req/s",
            true,
            &rps,
        ));
        rows.push(Row3::from_samples(
            "Manifest GET by tag, p99 latency".into(),
            "ms",
            false,
            &p99,
        ));

        // The large blob, streamed through the server.
        let mut get = Samples3::default();
        for run in 0..args.get_runs {
            for i in order3(run) {
                let t = &targets[i];
                let s = &t.servers[run % t.servers.len()];
                let url = s.url(&format!("/v2/{REPO}/blobs/{big_digest}"));
                let mbps = curl_get(args, &url, big_len).await?;
                eprintln!("Blob GET, {} MiB: {} {mbps:.0} MB/s", args.big_mib, s.name);
                get.0[i].push(mbps);
            }
        }
        rows.push(Row3::from_samples(
            format!("Blob GET, {} MiB, curl", args.big_mib),
            "MB/s",
            true,
            &get,
        ));

        // Pushes: a fresh blob every time.
        let (mut mono, mut chunked) = (Samples3::default(), Samples3::default());
        let mut variant = 0u64;
        for round in 0..args.push_rounds {
            for mode in ["monolithic", "chunked"] {
                variant += 1;
                big[..8].copy_from_slice(&variant.to_le_bytes());
                let data = Bytes::from(big.clone());
                let digest = sha256(&data);
                for i in order3(round + usize::from(mode == "chunked")) {
                    let t = &targets[i];
                    let turns = t.turns(round);
                    let took = if mode == "monolithic" {
                        push_monolithic(&turns, "bench/push", data.clone(), &digest).await?
                    } else {
                        push_chunked(&turns, "bench/push", data.clone(), &digest, chunk).await?
                    };
                    sync().await?;
                    let mbps = big_len as f64 / took.as_secs_f64() / 1e6;
                    eprintln!(
                        "Push {mode}, {} MiB: {} {mbps:.0} MB/s",
                        args.big_mib, t.name
                    );
                    if mode == "monolithic" {
                        &mut mono
                    } else {
                        &mut chunked
                    }
                    .0[i]
                        .push(mbps);
                }
            }
        }
        drop(big);
        rows.push(Row3::from_samples(
            format!(
                "Push {} MiB, monolithic (POST, then PUT ?digest= with the body)",
                args.big_mib
            ),
            "MB/s",
            true,
            &mono,
        ));
        rows.push(Row3::from_samples(
            format!(
                "Push {} MiB, chunked ({} MiB PATCHes with Content-Range, then PUT ?digest=)",
                args.big_mib, args.chunk_mib
            ),
            "MB/s",
            true,
            &chunked,
        ));

        // Peak memory of every process, read while they still run.
        let mut processes = Vec::new();
        let mut peak = [0f64; 3];
        let mut ends = [String::new(), String::new(), String::new()];
        for (i, t) in targets.iter().enumerate() {
            let mut at_end = Vec::new();
            for s in &t.servers {
                let (hwm, rss) = s.rss_kib()?;
                peak[i] = peak[i].max(hwm as f64 / 1024.0);
                at_end.push(format!("{:.1}", rss as f64 / 1024.0));
                processes.push((s.name.clone(), hwm, rss));
            }
            ends[i] = format!("{} at the end", at_end.join(" and "));
        }
        if let Some((hwm, rss)) = weed_pid(&weed.endpoint).and_then(rss_of) {
            processes.push((
                "SeaweedFS (`weed server`: master, volume, filer and S3 gateway), shared by the \
                 replicas and distribution"
                    .into(),
                hwm,
                rss,
            ));
        }
        rows.push(Row3 {
            what: "Peak RSS of a server process (VmHWM; the larger replica)".into(),
            unit: "MiB",
            higher_is_better: false,
            values: peak,
            samples: ends,
        });
        for t in targets {
            for s in t.servers {
                s.stop().await;
            }
        }

        print!(
            "{}",
            report(args, &rows, &processes, &load_before, &weed_version().await).await
        );
        Ok(())
    }

    async fn weed_version() -> String {
        Command::new("weed")
            .arg("version")
            .output()
            .await
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    }

    fn ratio_cell(a: f64, b: f64, higher_is_better: bool, a_name: &str, b_name: &str) -> String {
        let ratio = a / b;
        let better = match (higher_is_better, ratio >= 1.0) {
            _ if (ratio - 1.0).abs() < 0.005 => String::new(),
            (true, true) | (false, false) => format!(" ({a_name} better)"),
            _ => format!(" ({b_name} better)"),
        };
        format!("{ratio:.2}×{better}")
    }

    async fn report(
        args: &Args,
        rows: &[Row3],
        processes: &[(String, u64, u64)],
        load_before: &str,
        weed_version: &str,
    ) -> String {
        let mut out = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let dist_version = Command::new(&args.distribution)
            .arg("--version")
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nSlipway {} (2 replicas over PostgreSQL and SeaweedFS, S3 parts of {SLIPWAY_PART_MIB} \
             MiB; and a single node on SQLite + file system) vs {dist_version} (s3 driver, \
             chunks of {DISTRIBUTION_CHUNK_MIB} MiB, redirect disabled) on the same \
             SeaweedFS ({weed_version}); {cpu}, {cores} cores, Linux {}; clients, servers, \
             PostgreSQL and SeaweedFS on the same machine, loopback. Medians of {} wrk runs of \
             {} s, {} GETs, {} pushes per target, rotating which target goes first. Load \
             average (1, 5, 15 min) before: {load_before}; after: {}.\n",
            if args.slipway_version.is_empty() {
                "(unknown commit)"
            } else {
                &args.slipway_version
            },
            kernel.trim(),
            args.wrk_rounds,
            args.wrk_secs,
            args.get_runs,
            args.push_rounds,
            loadavg(),
        );
        let _ = writeln!(
            out,
            "| Measurement | Unit | Slipway, 2 replicas (PG + S3) | Slipway, single node | \
             distribution 2.8 on S3 | Replicas ÷ distribution on S3 | Replicas ÷ single node |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|");
        for r in rows {
            let v = r.values;
            let direction = if r.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            };
            let _ = writeln!(
                out,
                "| {} | {} ({direction}) | {} | {} | {} | {} | {} |",
                r.what,
                r.unit,
                fmt_num(v[REPLICAS]),
                fmt_num(v[SINGLE]),
                fmt_num(v[DIST_S3]),
                ratio_cell(
                    v[REPLICAS],
                    v[DIST_S3],
                    r.higher_is_better,
                    "replicas",
                    "distribution"
                ),
                ratio_cell(
                    v[REPLICAS],
                    v[SINGLE],
                    r.higher_is_better,
                    "replicas",
                    "single node"
                ),
            );
        }
        let _ = writeln!(out, "\nSpread of the samples (min – max):\n");
        let _ = writeln!(
            out,
            "| Measurement | Slipway, 2 replicas | Slipway, single node | distribution on S3 |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|");
        for r in rows {
            let [a, b, c] = &r.samples;
            let _ = writeln!(out, "| {} ({}) | {a} | {b} | {c} |", r.what, r.unit);
        }
        let _ = writeln!(out, "\nPeak RSS of every process at the end of the run:\n");
        let _ = writeln!(out, "| Process | VmHWM (MiB) | VmRSS at the end (MiB) |");
        let _ = writeln!(out, "|---|--:|--:|");
        for (name, hwm, rss) in processes {
            let _ = writeln!(
                out,
                "| {name} | {} | {} |",
                fmt_num(*hwm as f64 / 1024.0),
                fmt_num(*rss as f64 / 1024.0)
            );
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn targets_take_turns() {
            assert_eq!(order3(0), [0, 1, 2]);
            assert_eq!(order3(4), [1, 2, 0]);
            assert_eq!(ratio_cell(20.0, 10.0, true, "a", "b"), "2.00× (a better)");
            assert_eq!(ratio_cell(20.0, 10.0, false, "a", "b"), "2.00× (b better)");
            assert_eq!(ratio_cell(10.0, 10.01, true, "a", "b"), "1.00×");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_times() {
        let cases = [
            ("812.00us", Some(0.812)),
            ("1.50ms", Some(1.5)),
            ("2.00s", Some(2000.0)),
            ("1.00m", Some(60_000.0)),
            ("12", None),
            ("1.0h", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_wrk_time(v), want, "{v}");
        }
    }

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(fmt_num(1234567.4), "1,234,567");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
    }

    #[test]
    fn locations_move_between_replicas() {
        let cases = [
            (
                "http://a:1/v2/x/blobs/uploads/u?_state=s",
                "http://b:2/v2/x/blobs/uploads/u?_state=s",
            ),
            ("/v2/x/blobs/uploads/u", "http://b:2/v2/x/blobs/uploads/u"),
            ("https://a", "http://b:2/"),
        ];
        for (url, want) in cases {
            assert_eq!(rebase("http://b:2", url), want, "{url}");
        }
    }

    #[test]
    fn digests_go_into_the_query() {
        assert_eq!(
            with_digest("http://h/u/1", "sha256:ab"),
            "http://h/u/1?digest=sha256:ab"
        );
        assert_eq!(
            with_digest("http://h/u/1?_state=x", "sha256:ab"),
            "http://h/u/1?_state=x&digest=sha256:ab"
        );
    }
}
