//! HTTPS with real clients, from a certificate authority the test makes
//! (rcgen): Slipway serves `[tls]` with an RSA certificate for `localhost`
//! and `127.0.0.1` behind an intermediate (the file holds the chain), and
//! asks for client certificates of another authority on the admin API.
//!
//! - curl (`--cacert`) speaks HTTP/2 and HTTP/1.1 to it; the token realm in
//!   the challenge is `https://`.
//! - skopeo pushes an image with `--dest-cert-dir`; without the authority it
//!   refuses the server, as it must.
//! - podman pulls with `--cert-dir`; containerd's `ctr` pulls through a
//!   `hosts.toml` naming the authority (`ca`), as a cluster's kubelet would.
//! - The admin API refuses the admin's password without a client
//!   certificate, and answers with one.
//! - The pair is replaced on disk while a slow pull is in flight: the pull
//!   completes with the right bytes, new connections get the new
//!   certificate (a new authority), the old authority no longer verifies; a
//!   broken new pair is refused and the one in use stays; a certificate for
//!   another host and an expired one are loaded and refused by curl,
//!   skopeo and podman — proving they verify.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use slipway_registry::testing::TestServer;

use crate::interop::image::{Image, referenced_blobs, sha256};
use crate::interop::tools::{Containerd, Podman, Skopeo, Tool, require_root, run, run_failing};

/// A certificate authority of the test's own.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn root(name: &str) -> Authority {
        let key = KeyPair::generate().expect("a key");
        Authority {
            issuer: CertifiedIssuer::self_signed(ca_params(name), key).expect("a root"),
        }
    }

    fn intermediate(&self, name: &str) -> Authority {
        let key = KeyPair::generate().expect("a key");
        Authority {
            issuer: CertifiedIssuer::signed_by(ca_params(name), key, &self.issuer)
                .expect("an intermediate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key, both PEM.
    fn leaf(&self, leaf: Leaf) -> (String, String) {
        let key = if leaf.rsa {
            KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("an RSA key")
        } else {
            KeyPair::generate().expect("an ECDSA key")
        };
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("parameters");
        p.distinguished_name
            .push(DnType::CommonName, leaf.names[0].to_owned());
        for name in leaf.names {
            p.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
            });
        }
        if leaf.expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        p.extended_key_usages = vec![if leaf.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.issuer).expect("a leaf");
        (cert.pem(), key.serialize_pem())
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

struct Leaf<'a> {
    names: &'a [&'a str],
    rsa: bool,
    expired: bool,
    client: bool,
}

const LOCALHOST: &[&str] = &["localhost", "127.0.0.1"];

fn server_leaf(names: &'static [&'static str]) -> Leaf<'static> {
    Leaf {
        names,
        rsa: false,
        expired: false,
        client: false,
    }
}

/// Writes `content` to `path` as a renewal does: a new file renamed over
/// the old one.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write a new file");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

/// A directory holding `ca.crt`: what skopeo's and podman's `--cert-dir`
/// take.
fn cert_dir(at: &Path, ca_pem: &str) -> PathBuf {
    std::fs::create_dir_all(at).expect("create a cert dir");
    std::fs::write(at.join("ca.crt"), ca_pem).expect("write ca.crt");
    at.to_path_buf()
}

struct Curl(Tool);

impl Curl {
    /// `curl -sS` trusting only `ca` (a PEM file).
    fn cmd(&self, ca: &Path) -> tokio::process::Command {
        let mut c = self.0.cmd(["-sS", "--max-time", "60", "--cacert"]);
        c.arg(ca);
        c
    }
}

/// The value of `slipway_tls_reloads_total{result="<result>"}`.
async fn reloads(curl: &Curl, url: &str, result: &str) -> u64 {
    let out = run(curl.0.cmd(["-sSk", &format!("{url}/metrics")])).await;
    let key = format!("slipway_tls_reloads_total{{result=\"{result}\"}}");
    out.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse::<f64>().expect("a number") as u64)
        .unwrap_or(0)
}

/// Waits until the server has (re)loaded its files `n` times with `result`.
async fn wait_reloads(curl: &Curl, url: &str, result: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while reloads(curl, url, result).await < n {
        assert!(
            Instant::now() < deadline,
            "the server did not count {n} TLS reload(s) with result {result} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_https_verify_the_certificate_and_survive_its_renewal() {
    require_root("containerd");
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temporary directory");
    let w = |name: &str| work.path().join(name);
    let curl = Curl(Tool::find("curl", "the Debian package curl"));
    let skopeo = Skopeo::find(work.path());
    let podman = Podman::find(work.path());

    // The authorities: a root and an intermediate for the server, another
    // for admins' client certificates.
    let root = Authority::root("Slipway test root");
    let intermediate = root.intermediate("Slipway test intermediate");
    let (leaf, key) = intermediate.leaf(Leaf {
        rsa: true,
        ..server_leaf(LOCALHOST)
    });
    let (cert_file, key_file) = (w("server.crt"), w("server.key"));
    std::fs::write(&cert_file, format!("{leaf}{}", intermediate.pem())).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let root_pem = w("root.pem");
    std::fs::write(&root_pem, root.pem()).unwrap();
    let admins = Authority::root("Slipway test admins");
    std::fs::write(w("admins.pem"), admins.pem()).unwrap();
    let (client, client_key) = admins.leaf(Leaf {
        names: &["admin"],
        rsa: false,
        expired: false,
        client: true,
    });
    std::fs::write(w("client.crt"), client).unwrap();
    std::fs::write(w("client.key"), client_key).unwrap();

    let (c, k, a) = (cert_file.clone(), key_file.clone(), w("admins.pem"));
    let server = TestServer::start_with(move |cfg| {
        cfg.tls.cert_file = c;
        cfg.tls.key_file = k;
        cfg.tls.client_ca_file = a;
        cfg.tls.reload_check_secs = 1;
    })
    .await;
    server.create_project("tool-tls", true).await;
    let url = server.url.clone();
    assert!(url.starts_with("https://localhost:"), "{url}");
    let host = url.trim_start_matches("https://").to_owned();

    // curl: HTTP/2 and HTTP/1.1, and the realm follows the scheme.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = run(curl.cmd(&root_pem).args([
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &format!("{url}/v2/"),
        ]))
        .await;
        assert_eq!(out, format!("{version} 401"), "curl {flag}");
    }
    let headers =
        run(curl
            .cmd(&root_pem)
            .args(["-D", "-", "-o", "/dev/null", &format!("{url}/v2/")]))
        .await;
    assert!(
        headers.contains(&format!("realm=\"https://{host}/auth/token\"")),
        "{headers}"
    );

    // skopeo pushes over HTTPS trusting the root; without it, it refuses.
    let certs = cert_dir(&w("certs"), &root.pem());
    let image = Image::build(&w("image"), 8 << 20).await;
    let remote = format!("docker://{host}/tool-tls/app:v1");
    let admin = server.admin_creds();
    let err =
        run_failing(skopeo.cmd(["copy", "--dest-creds", &admin, &image.reference(), &remote]))
            .await;
    assert!(
        err.contains("certificate signed by unknown authority"),
        "skopeo should refuse a server its trust store does not vouch for; it said:\n{err}"
    );
    run(skopeo
        .cmd(["copy", "--dest-creds", &admin, "--dest-cert-dir"])
        .arg(&certs)
        .args([&image.reference(), &remote]))
    .await;
    let (desc, manifest) = image.manifest();

    // podman pulls trusting the root.
    let reference = format!("{host}/tool-tls/app:v1");
    run(podman
        .cmd(["pull", "--cert-dir"])
        .arg(&certs)
        .arg(&reference))
    .await;

    // containerd, through hosts.toml's `ca`.
    let daemon = Containerd::start().await;
    let hosts = w("certs.d");
    std::fs::create_dir_all(hosts.join(&host)).unwrap();
    std::fs::write(
        hosts.join(&host).join("hosts.toml"),
        format!(
            "server = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {:?}\n",
            root_pem.display().to_string()
        ),
    )
    .unwrap();
    run(daemon
        .ctr(["image", "pull", "--hosts-dir"])
        .arg(&hosts)
        .arg(&reference))
    .await;
    crate::interop::check_pulled(&daemon, &reference, &desc.digest).await;

    // The admin API: the password alone is not enough.
    let projects = format!("{url}/api/v1/projects");
    let out = run(curl
        .cmd(&root_pem)
        .args(["-u", &admin, "-w", "\n%{http_code}", &projects]))
    .await;
    assert!(
        out.ends_with("\n403") && out.contains("client certificate"),
        "{out}"
    );
    let out = run(curl
        .cmd(&root_pem)
        .args(["-u", &admin, "-w", "\n%{http_code}", "--cert"])
        .arg(w("client.crt"))
        .arg("--key")
        .arg(w("client.key"))
        .arg(&projects))
    .await;
    assert!(out.ends_with("\n200") && out.contains("tool-tls"), "{out}");

    // Renewal while a pull is in flight: the 8 MiB layer at 2 MiB/s.
    let layer = referenced_blobs(&manifest)
        .into_iter()
        .max_by_key(|b| b.size)
        .unwrap();
    let slow_file = w("slow.bin");
    let mut slow = curl.cmd(&root_pem);
    slow.args(["--limit-rate", "2M", "-o"])
        .arg(&slow_file)
        .arg(format!("{url}/v2/tool-tls/app/blobs/{}", layer.digest));
    let mut slow = slow.spawn().expect("start curl");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let renewed = Authority::root("Slipway test renewed root");
    let renewed_pem = w("renewed.pem");
    std::fs::write(&renewed_pem, renewed.pem()).unwrap();
    let (leaf, key) = renewed.leaf(server_leaf(LOCALHOST));
    replace(&key_file, &key);
    replace(&cert_file, &leaf);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = curl
            .cmd(&renewed_pem)
            .args(["-o", "/dev/null", &format!("{url}/v2/")])
            .status()
            .await
            .unwrap()
            .success();
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections did not get the renewed certificate within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the slow pull ended before the renewal was seen: the test proves nothing"
    );
    let slow = slow.wait_with_output().await.unwrap();
    assert!(slow.status.success(), "the pull in flight failed: {slow:?}");
    let got = std::fs::read(&slow_file).unwrap();
    assert_eq!(
        (got.len() as u64, sha256(&got)),
        (layer.size, layer.digest.clone()),
        "the pull in flight during the renewal got other bytes"
    );
    let err = run_failing(curl.cmd(&root_pem).arg(format!("{url}/v2/"))).await;
    assert!(err.contains("SSL certificate problem"), "{err}");
    let loaded = reloads(&curl, &url, "loaded").await;

    // A broken pair (another key): refused, the renewed one stays.
    let (_, stray_key) = renewed.leaf(server_leaf(LOCALHOST));
    replace(&key_file, &stray_key);
    wait_reloads(&curl, &url, "refused", 1).await;
    run(curl
        .cmd(&renewed_pem)
        .args(["-o", "/dev/null", &format!("{url}/v2/")]))
    .await;

    // A certificate for another host: curl and skopeo refuse it.
    let (leaf, key) = renewed.leaf(server_leaf(&["registry.example"]));
    replace(&key_file, &key);
    replace(&cert_file, &leaf);
    wait_reloads(&curl, &url, "loaded", loaded + 1).await;
    let err = run_failing(curl.cmd(&renewed_pem).arg(format!("{url}/v2/"))).await;
    assert!(
        err.contains("does not match target host name")
            || err.contains("no alternative certificate subject name matches"),
        "curl should refuse a certificate for another host; it said:\n{err}"
    );
    let renewed_certs = cert_dir(&w("renewed-certs"), &renewed.pem());
    let err = run_failing(
        skopeo
            .cmd(["inspect", "--cert-dir"])
            .arg(&renewed_certs)
            .arg(format!("docker://{reference}")),
    )
    .await;
    assert!(
        err.contains("x509: certificate is valid for registry.example, not localhost"),
        "skopeo should refuse a certificate for another host; it said:\n{err}"
    );

    // An expired certificate: curl and podman refuse it.
    let (leaf, key) = renewed.leaf(Leaf {
        expired: true,
        ..server_leaf(LOCALHOST)
    });
    replace(&key_file, &key);
    replace(&cert_file, &leaf);
    wait_reloads(&curl, &url, "loaded", loaded + 2).await;
    let err = run_failing(curl.cmd(&renewed_pem).arg(format!("{url}/v2/"))).await;
    assert!(err.contains("expired"), "curl said:\n{err}");
    let err = run_failing(
        podman
            .cmd(["pull", "--cert-dir"])
            .arg(&renewed_certs)
            .arg(&reference),
    )
    .await;
    assert!(
        err.contains("certificate has expired"),
        "podman should refuse an expired certificate; it said:\n{err}"
    );
    eprintln!("tls: every client over HTTPS in {:?}", started.elapsed());
}
