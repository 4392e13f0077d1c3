//! People signing in from a directory: a real OpenLDAP `slapd` (Debian's
//! package; `conformance/test.sh` installs it) started by the test on
//! loopback, shaped like Toolforge's: people under `ou=people`, each tool a
//! `groupOfNames` `cn=tools.<tool>,ou=servicegroups` with `member` DNs, the
//! admins `cn=tools.admin`, and a posixGroup-only group (`memberUid`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slipway_registry::config::{LdapConfig, Secret};
use slipway_registry::identity::ldap::{Directory, LdapError};
use slipway_storage::meta::Role;

pub const BASE: &str = "dc=wikimedia,dc=org";
const ROOT_DN: &str = "cn=admin,dc=wikimedia,dc=org";
const ROOT_PW: &str = "root-secret";

/// A `slapd` of the test's own, on a free loopback port.
pub struct Slapd {
    child: Child,
    /// `ldap://127.0.0.1:<port>`.
    pub url: String,
    /// `ldaps://127.0.0.1:<port>`, when started with a certificate.
    pub ldaps_url: Option<String>,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (conformance/test.sh installs slapd and ldap-utils): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const PEOPLE: &str = "\
dn: dc=wikimedia,dc=org
objectClass: dcObject
objectClass: organization
dc: wikimedia
o: Wikimedia

dn: ou=people,dc=wikimedia,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=servicegroups,dc=wikimedia,dc=org
objectClass: organizationalUnit
ou: servicegroups

dn: cn=slipway,dc=wikimedia,dc=org
objectClass: person
cn: slipway
sn: service account
userPassword: service-secret

dn: uid=alice,ou=people,dc=wikimedia,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
userPassword: alice-secret

dn: uid=bob,ou=people,dc=wikimedia,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
userPassword: bob-secret

dn: uid=carol,ou=people,dc=wikimedia,dc=org
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: C
userPassword: carol-secret

dn: uid=dave,ou=people,dc=wikimedia,dc=org
objectClass: inetOrgPerson
uid: dave
cn: Dave
sn: D
userPassword: dave-secret

dn: cn=tools.x,ou=servicegroups,dc=wikimedia,dc=org
objectClass: groupOfNames
cn: tools.x
member: uid=alice,ou=people,dc=wikimedia,dc=org
member: uid=dave,ou=people,dc=wikimedia,dc=org

dn: cn=tools.admin,ou=servicegroups,dc=wikimedia,dc=org
objectClass: groupOfNames
cn: tools.admin
member: uid=bob,ou=people,dc=wikimedia,dc=org

dn: cn=tools.y,ou=servicegroups,dc=wikimedia,dc=org
objectClass: posixGroup
cn: tools.y
gidNumber: 5001
memberUid: carol
";

use crate::builds_e2e::free_port;

impl Slapd {
    pub fn start() -> Slapd {
        Slapd::start_with(None)
    }

    /// With `tls` (certificate and key, PEM): StartTLS on the `ldap://`
    /// port, and an `ldaps://` port.
    pub fn start_with(tls: Option<(&str, &str)>) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("db")).unwrap();
        let conf = d.join("slapd.conf");
        let tls_conf = match tls {
            Some((cert, key)) => {
                std::fs::write(d.join("cert.pem"), cert).unwrap();
                std::fs::write(d.join("key.pem"), key).unwrap();
                format!(
                    "TLSCertificateFile {d}/cert.pem\nTLSCertificateKeyFile {d}/key.pem\n",
                    d = d.display()
                )
            }
            None => String::new(),
        };
        std::fs::write(
            &conf,
            format!(
                "{tls_conf}\
                 include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/nis.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 pidfile {d}/slapd.pid\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 database mdb\n\
                 maxsize 10485760\n\
                 suffix \"{BASE}\"\n\
                 rootdn \"{ROOT_DN}\"\n\
                 rootpw {ROOT_PW}\n\
                 directory {d}/db\n\
                 access to attrs=userPassword by anonymous auth by self read by * none\n\
                 access to * by * read\n",
                d = d.display()
            ),
        )
        .unwrap();
        let ldif = d.join("people.ldif");
        std::fs::write(&ldif, PEOPLE).unwrap();
        run(Command::new("slapadd")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&ldif));
        let port = free_port();
        let url = format!("ldap://127.0.0.1:{port}");
        let ldaps_url = tls.map(|_| format!("ldaps://127.0.0.1:{}", free_port()));
        let listen = match &ldaps_url {
            Some(s) => format!("{url}/ {s}/"),
            None => format!("{url}/"),
        };
        let log = std::fs::File::create(d.join("slapd.log")).unwrap();
        let child = Command::new("slapd")
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(&listen)
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("slapd (Debian package slapd) starts");
        let mut s = Slapd {
            child,
            url,
            ldaps_url,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!(
                    "slapd exited ({status}): {}",
                    std::fs::read_to_string(s.log()).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "slapd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log(&self) -> PathBuf {
        self._dir.path().join("slapd.log")
    }

    /// Applies an LDIF change as the directory's root.
    pub fn modify(&self, ldif: &str) {
        let file = self._dir.path().join("change.ldif");
        std::fs::write(&file, ldif).unwrap();
        run(Command::new("ldapmodify")
            .args(["-x", "-H", &self.url, "-D", ROOT_DN, "-w", ROOT_PW, "-f"])
            .arg(&file));
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Toolforge-shaped settings for this directory.
pub fn toolforge(url: &str) -> LdapConfig {
    LdapConfig {
        url: url.to_owned(),
        allow_plain: true,
        bind_dn: format!("cn=slipway,{BASE}"),
        bind_password: Secret::new("service-secret"),
        user_base: format!("ou=people,{BASE}"),
        group_base: format!("ou=servicegroups,{BASE}"),
        group_pattern: format!("cn=tools.{{tool}},ou=servicegroups,{BASE}"),
        project_pattern: "tool-{tool}".into(),
        admin_group: format!("cn=tools.admin,ou=servicegroups,{BASE}"),
        ..LdapConfig::default()
    }
}

fn refused(r: Result<slipway_registry::identity::Answer, LdapError>) -> String {
    match r {
        Err(e @ (LdapError::Refused | LdapError::InvalidName(_))) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_sign_in_maps_groups_to_projects_and_refuses_what_it_must() {
    let slapd = Slapd::start();
    let dir = Directory::new(&toolforge(&slapd.url)).unwrap().unwrap();

    // A maintainer of tool-x, found through `member`.
    let alice = dir.sign_in("alice", "alice-secret").await.unwrap();
    assert_eq!(alice.dn, format!("uid=alice,ou=people,{BASE}"));
    assert_eq!(alice.grants, vec![("tool-x".to_string(), Role::Maintainer)]);
    assert!(!alice.is_admin);
    // An admin, through the admin group; no tool.
    let bob = dir.sign_in("bob", "bob-secret").await.unwrap();
    assert!(bob.is_admin);
    assert!(bob.grants.is_empty(), "{:?}", bob.grants);
    // A posixGroup-only group, through `memberUid`.
    let carol = dir.sign_in("carol", "carol-secret").await.unwrap();
    assert_eq!(carol.grants, vec![("tool-y".to_string(), Role::Maintainer)]);

    // Refused, each with a sentence: a wrong password, no password (an
    // unauthenticated bind would succeed), an unknown person, and filter
    // injection in the username (never sent).
    let wrong = refused(dir.sign_in("alice", "not-her-password").await);
    assert_eq!(wrong, "the username or the password is wrong");
    assert_eq!(refused(dir.sign_in("alice", "").await), wrong);
    assert_eq!(refused(dir.sign_in("mallory", "x").await), wrong);
    let injected = refused(dir.sign_in("*)(uid=*", "alice-secret").await);
    assert!(injected.contains("is not a username"), "{injected}");
    assert!(refused(dir.sign_in("alice)(|(uid=*", "x").await).contains("is not a username"));

    // Removed from the group in the directory: the next look loses tool-x
    // (no one touched Slipway).
    slapd.modify(&format!(
        "dn: cn=tools.x,ou=servicegroups,{BASE}\nchangetype: modify\ndelete: member\nmember: uid=alice,ou=people,{BASE}\n"
    ));
    let now = dir.look_up("alice").await.unwrap().unwrap();
    assert!(now.grants.is_empty(), "{:?}", now.grants);
    // And an admin removed from the admin group is no longer one.
    slapd.modify(&format!(
        "dn: cn=tools.admin,ou=servicegroups,{BASE}\nchangetype: modify\nreplace: member\nmember: uid=dave,ou=people,{BASE}\n"
    ));
    assert!(!dir.look_up("bob").await.unwrap().unwrap().is_admin);
    assert!(dir.look_up("mallory").await.unwrap().is_none());

    // Without a service account: the DN from the template, groups read as
    // the person.
    let mut own = toolforge(&slapd.url);
    own.bind_dn = String::new();
    own.bind_password = Secret::default();
    own.user_dn_template = format!("uid={{user}},ou=people,{BASE}");
    let own = Directory::new(&own).unwrap().unwrap();
    let dave = own.sign_in("dave", "dave-secret").await.unwrap();
    assert!(dave.is_admin);
    assert_eq!(dave.grants, vec![("tool-x".to_string(), Role::Maintainer)]);
    assert_eq!(refused(own.sign_in("dave", "wrong").await), wrong);
}

/// Passwords never cross the network in the clear unless the admin says
/// so, and the settings are checked.
#[test]
fn ldap_settings_are_checked() {
    let check = |adjust: &dyn Fn(&mut LdapConfig)| {
        let mut ldap = toolforge("ldap://127.0.0.1:1");
        adjust(&mut ldap);
        ldap.validate().err().map(|e| e.sentence())
    };
    assert_eq!(check(&|_| {}), None);
    let plain = check(&|c| c.allow_plain = false).expect("plain ldap:// refused");
    assert!(plain.contains("in the clear"), "{plain}");
    assert_eq!(
        check(&|c| {
            c.allow_plain = false;
            c.starttls = true
        }),
        None
    );
    assert_eq!(
        check(&|c| {
            c.allow_plain = false;
            c.url = "ldaps://ldap.example.org".into()
        }),
        None
    );
    let scheme = check(&|c| c.url = "http://ldap".into()).unwrap();
    assert!(scheme.contains("ldaps:// or ldap://"), "{scheme}");
    let role = check(&|c| c.group_role = "owner".into()).unwrap();
    assert!(role.contains("maintainer, developer or guest"), "{role}");
    let pattern = check(&|c| c.group_pattern = "cn=tools,ou=x".into()).unwrap();
    assert!(pattern.contains("{tool}"), "{pattern}");
    let base = check(&|c| c.group_base = String::new()).unwrap();
    assert!(base.contains("group_base"), "{base}");
}

/// Over TLS: StartTLS on `ldap://` and `ldaps://`, with the authority the
/// test made in `ca_file`; without it (the system's authorities only) the
/// connection is refused — the directory's certificate is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_over_tls_verifies_the_directory() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "slipway test directory CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let slapd = Slapd::start_with(Some((&cert.pem(), &key.serialize_pem())));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let mut starttls = toolforge(&slapd.url);
    starttls.allow_plain = false;
    starttls.starttls = true;
    starttls.ca_file = ca_file.clone();
    assert_eq!(starttls.validate().err().map(|e| e.sentence()), None);
    let alice = Directory::new(&starttls)
        .unwrap()
        .unwrap()
        .sign_in("alice", "alice-secret")
        .await
        .unwrap();
    assert_eq!(alice.grants, vec![("tool-x".to_string(), Role::Maintainer)]);

    let mut ldaps = toolforge(slapd.ldaps_url.as_deref().unwrap());
    ldaps.allow_plain = false;
    ldaps.ca_file = ca_file;
    let bob = Directory::new(&ldaps)
        .unwrap()
        .unwrap()
        .sign_in("bob", "bob-secret")
        .await
        .unwrap();
    assert!(bob.is_admin);

    // The same directory, trusting only the system's authorities.
    ldaps.ca_file = PathBuf::new();
    match Directory::new(&ldaps)
        .unwrap()
        .unwrap()
        .sign_in("bob", "bob-secret")
        .await
    {
        Err(LdapError::Unavailable(why)) => {
            assert!(why.to_lowercase().contains("certificate"), "{why}")
        }
        other => panic!("an unverified directory was trusted: {other:?}"),
    }
}

/// The admin names people and their roles before they ever sign in;
/// only the admin may; every grant and revocation is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_names_members_before_they_sign_in() {
    use crate::security::{Env, basic};
    use reqwest::Method;
    use reqwest::StatusCode;
    use serde_json::json;
    let env = Env::new().await;
    env.server.create_project("tool-x", false).await;
    let admin = env.admin();
    let (s, v) = env
        .api(
            Method::PUT,
            "/api/v1/projects/tool-x/members/alice",
            Some(&admin),
            Some(json!({"role": "maintainer"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["person"], &v["role"], &v["source"]),
        (&json!("alice"), &json!("maintainer"), &json!("admin"))
    );
    // A second grant replaces the first.
    let (s, v) = env
        .api(
            Method::PUT,
            "/api/v1/projects/tool-x/members/alice",
            Some(&admin),
            Some(json!({"role": "developer"})),
        )
        .await;
    assert_eq!(
        (s, &v["role"]),
        (StatusCode::OK, &json!("developer")),
        "{v}"
    );
    let (s, v) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-x/members",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (s, v) = env
        .api(Method::GET, "/api/v1/people/alice", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["created_by"], "admin");
    assert_eq!(
        v["last_sign_in"],
        serde_json::Value::Null,
        "never signed in"
    );
    assert_eq!(v["memberships"][0]["project"], "tool-x");

    // Refused, with a sentence.
    for (path, body, status, words) in [
        (
            "/api/v1/projects/tool-x/members/alice",
            json!({"role": "owner"}),
            StatusCode::BAD_REQUEST,
            "is not a role",
        ),
        (
            "/api/v1/projects/tool-x/members/*)(uid=*",
            json!({"role": "guest"}),
            StatusCode::BAD_REQUEST,
            "is not a username",
        ),
        (
            "/api/v1/projects/tool-none/members/alice",
            json!({"role": "guest"}),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
    ] {
        let (s, v) = env.api(Method::PUT, path, Some(&admin), Some(body)).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(v.to_string().contains(words), "{path}: {v}");
    }
    // Only the admin: anonymous and a robot of the project are refused.
    let robot = env.robot("tool-x", "ci", &["pull"]).await;
    for auth in [None, Some(basic("robot$tool-x+ci", &robot))] {
        let (s, _) = env
            .api(
                Method::PUT,
                "/api/v1/projects/tool-x/members/mallory",
                auth.as_deref(),
                Some(json!({"role": "maintainer"})),
            )
            .await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
            "{s}"
        );
        let (s, _) = env
            .api(Method::GET, "/api/v1/people", auth.as_deref(), None)
            .await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
            "{s}"
        );
    }
    let (_, people) = env
        .api(Method::GET, "/api/v1/people", Some(&admin), None)
        .await;
    assert_eq!(
        people.as_array().unwrap().len(),
        1,
        "mallory was never named: {people}"
    );

    // Revoked; a second time there is nothing to revoke.
    let (s, _) = env
        .api(
            Method::DELETE,
            "/api/v1/projects/tool-x/members/alice",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = env
        .api(
            Method::DELETE,
            "/api/v1/projects/tool-x/members/alice",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?project=tool-x",
            Some(&admin),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("member."))
        .collect();
    assert_eq!(
        actions,
        ["member.revoke", "member.grant", "member.grant"],
        "{audit}"
    );
}

/// `skopeo copy` of `image` into a directory with `creds`: whether it
/// succeeded, and what it said.
pub(crate) fn skopeo_pull(image: &str, creds: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--retry-times",
            "0",
            "--src-tls-verify=false",
            "--src-creds",
        ])
        .arg(creds)
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", dir.path().join("img").display()))
        .output()
        .expect("run skopeo (conformance/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// People from the directory through the real clients: a maintainer signs
/// in with LDAP, makes a personal token and pulls their private tool's
/// image with skopeo; removed from the tool's group in slapd, the same
/// token is refused once the membership TTL has passed. A person in no
/// group sees only public projects; an admin-group member administers; a
/// wrong password and a filter injection are refused with a sentence and
/// audited; a pull-only token cannot use the API; the admin lists and
/// revokes a person's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_sign_in_and_pull_with_personal_tokens() {
    use crate::security::{Env, basic};
    use reqwest::Method;
    use reqwest::StatusCode;
    use serde_json::{Value, json};
    let slapd = Slapd::start();
    let ldap = toolforge(&slapd.url);
    let env = Env::with(move |c| {
        c.identity.ldap = ldap;
        c.identity.membership_ttl_secs = 2;
        c.builds.workers = 0;
    })
    .await;
    env.server.create_project("tool-x", false).await;
    env.push_image("tool-x/web", "v1", b"tool-x").await;
    let host = env.server.addr.to_string();
    let bearer = |t: &Value| format!("Bearer {}", t.as_str().unwrap());
    let sign_in = |user: &'static str, password: &'static str| {
        let env = &env;
        async move {
            env.api(
                Method::POST,
                "/api/v1/sign-in",
                None,
                Some(json!({"username": user, "password": password})),
            )
            .await
        }
    };

    // Refusals, each with a sentence, each audited.
    let (s, v) = sign_in("alice", "wrong").await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (
            StatusCode::UNAUTHORIZED,
            "the username or the password is wrong"
        )
    );
    let (s, v) = sign_in("*)(uid=*", "x").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("is not a username"),
        "{v}"
    );
    let (s, _) = sign_in("admin", "x").await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the built-in accounts never sign in here"
    );
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?action=person.sign_in_refused",
            Some(&env.admin()),
            None,
        )
        .await;
    let refused = audit.to_string();
    assert!(
        refused.contains("the username or the password is wrong") && refused.contains("*)(uid=*"),
        "{audit}"
    );

    // Alice, a maintainer of tool-x in the directory.
    let (s, alice) = sign_in("alice", "alice-secret").await;
    assert_eq!(s, StatusCode::OK, "{alice}");
    assert_eq!(alice["me"]["admin"], false);
    assert_eq!(alice["me"]["memberships"][0]["project"], "tool-x");
    assert_eq!(alice["me"]["memberships"][0]["role"], "maintainer");
    let session = bearer(&alice["token"]);
    let (s, v) = env
        .api(Method::GET, "/api/v1/people", Some(&session), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not an admin: {v}");
    let (s, made) = env
        .api(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&session),
            Some(json!({"name": "laptop", "expires": "90d"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("slp_"));
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&session),
            Some(json!({"name": "laptop"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "one name per person: {v}");
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&session),
            Some(json!({"name": "other", "project": "tool-a"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not alice's project: {v}");

    // A maintainer manages their own tool — a build token, a robot, a
    // trigger — but not another tool, and not the quota; refusals audited.
    env.server.create_project("platform", true).await;
    env.push_image("platform/builder", "bookworm", b"a builder")
        .await;
    env.approve("platform/builder:bookworm").await;
    let source = "https://gitlab.example.org/toolforge/x.git";
    for (what, body) in [
        ("build-tokens", json!({"name": "ci"})),
        ("robots", json!({"name": "puller"})),
        ("triggers", json!({"source_url": source, "ref": "main"})),
    ] {
        let (s, v) = env
            .api(
                Method::POST,
                &format!("/api/v1/projects/tool-x/{what}"),
                Some(&session),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{what}: {v}");
        let (s, v) = env
            .api(
                Method::POST,
                &format!("/api/v1/projects/tool-a/{what}"),
                Some(&session),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{what} in tool-a: {v}");
        assert_eq!(v["error"], "alice may not manage project tool-a", "{v}");
    }
    let (s, v) = env
        .api(
            Method::PATCH,
            "/api/v1/projects/tool-x",
            Some(&session),
            Some(json!({"quota_bytes": 1u64 << 40})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the quota is the admin's: {v}");
    let (_, denied) = env
        .api(
            Method::GET,
            "/api/v1/audit?action=denied",
            Some(&env.admin()),
            None,
        )
        .await;
    assert!(
        denied.to_string().contains("\"alice\"") && denied.to_string().contains("tool-a"),
        "{denied}"
    );

    // The CLI: `slipway login` keeps the session (mode 0600), `slipway
    // token` makes a token with it, `slipway admin` acts as alice with
    // her rights, `slipway logout` forgets it.
    let config = tempfile::tempdir().unwrap();
    let url = env.server.url.clone();
    let slipway = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .args(["--url", &url])
            .env("SLIPWAY_CONFIG_DIR", config.path())
            .env_remove("SLIPWAY_PASSWORD")
            .current_dir(config.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = slipway(
        &["login", "--username", "alice", "--password-stdin"],
        "wrong\n",
    );
    assert!(
        !ok && err.contains("the username or the password is wrong"),
        "{out}{err}"
    );
    let (ok, out, err) = slipway(
        &["login", "--username", "alice", "--password-stdin"],
        "alice-secret\n",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("as alice") && out.contains("tool-x (maintainer)"),
        "{out}"
    );
    let sessions = config.path().join("sessions.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sessions).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (ok, out, err) = slipway(&["token", "create", "--name", "cli", "--json"], "");
    assert!(ok, "{err}");
    let cli_token: Value = serde_json::from_str(&out).unwrap();
    assert!(cli_token["secret"].as_str().unwrap().starts_with("slp_"));
    let (ok, out, err) = slipway(&["admin", "robot", "list", "tool-x"], "");
    assert!(ok && out.contains("puller"), "{out}{err}");
    let (ok, _, err) = slipway(&["admin", "robot", "list", "tool-a"], "");
    assert!(
        !ok && err.contains("alice may not manage project tool-a"),
        "{err}"
    );
    let (ok, out, _) = slipway(&["logout"], "");
    assert!(ok && out.contains("Signed out"), "{out}");
    let (ok, _, err) = slipway(&["token", "list"], "");
    assert!(!ok && err.contains("run `slipway login` first"), "{err}");

    // What a token must not become: a token's token, a dashboard session,
    // an anonymous token's API access; and the name's case does not make
    // another person.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&basic("alice", &secret)),
            Some(json!({"name": "child"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a token makes no tokens: {v}");
    let page = crate::ui::Browser::new(&env)
        .sign_in("alice", &secret)
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNAUTHORIZED,
        "a token is no dashboard password"
    );
    let (_, _, anon) = env.get("/auth/token?service=slipway", None).await;
    let anon: Value = serde_json::from_slice(&anon).unwrap();
    let (s, v) = env
        .api(
            Method::GET,
            "/api/v1/me",
            Some(&bearer(&anon["token"])),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, upper) = sign_in("ALICE", "alice-secret").await;
    assert_eq!(
        (s, &upper["me"]["name"]),
        (StatusCode::OK, &json!("alice")),
        "{upper}"
    );

    // skopeo pulls tool-x with the token; not tool-a (private, not hers);
    // the public project, yes.
    let creds = format!("alice:{secret}");
    let (ok, err) = skopeo_pull(&format!("{host}/tool-x/web:v1"), &creds);
    assert!(ok, "{err}");
    // podman, too: `podman login` with the token, then a pull of a real
    // (one-file) image of the tool.
    let image = push_real_image(&env, "tool-x/real", "v1").await;
    let auth = tempfile::tempdir().unwrap();
    let authfile = auth.path().join("auth.json");
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .args(args)
            .arg("--authfile")
            .arg(&authfile)
            .output()
            .expect("run podman (conformance/test.sh installs it)");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    podman(&[
        "login",
        "--tls-verify=false",
        "-u",
        "alice",
        "-p",
        &secret,
        &host,
    ]);
    podman(&[
        "pull",
        "-q",
        "--tls-verify=false",
        &format!("{host}/{image}"),
    ]);
    let _ = Command::new("podman")
        .args(["rmi", "-f", &format!("{host}/{image}")])
        .output();
    let (ok, _) = skopeo_pull(&format!("{host}/tool-a/web:v1"), &creds);
    assert!(!ok, "alice has no role in tool-a");
    let (ok, err) = skopeo_pull(&format!("{host}/tool-pub/web:v1"), &creds);
    assert!(ok, "{err}");
    let (ok, _) = skopeo_pull(&format!("{host}/tool-x/web:v1"), &format!("bob:{secret}"));
    assert!(!ok, "the token is alice's only");
    // People never push, not even a maintainer.
    let (s, _, _) = env
        .send(
            Method::POST,
            "/v2/tool-x/web/blobs/uploads/",
            Some(&basic("alice", &secret)),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, listed) = env
        .api(Method::GET, "/api/v1/me/tokens", Some(&session), None)
        .await;
    let laptop = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "laptop")
        .unwrap();
    assert!(
        laptop["last_used_at"].is_string(),
        "used by skopeo: {listed}"
    );
    let cli = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cli")
        .unwrap();
    assert!(cli["last_used_at"].is_null(), "never used: {listed}");

    // The dashboard: alice signs in with the directory's password and sees
    // her private tool (its builds' pages too), not another's; a wrong
    // password is refused.
    let mut browser = crate::ui::Browser::new(&env);
    let page = browser.sign_in("alice", "wrong").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    let page = browser.sign_in("alice", "alice-secret").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = browser.get("/ui/projects").await;
    assert!(
        page.body.contains("tool-x") && !page.body.contains("tool-a"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("alice"),
        "the page names who is signed in"
    );
    assert_eq!(
        browser.get("/ui/projects/tool-x").await.status,
        StatusCode::OK
    );
    assert_eq!(
        browser.get("/ui/projects/tool-a").await.status,
        StatusCode::NOT_FOUND,
        "a private project not hers is as absent as one that does not exist"
    );
    assert_ne!(
        browser.get("/ui/fleet").await.status,
        StatusCode::OK,
        "not an admin"
    );

    // Removed from tools.x in the directory: within the TTL the token
    // stops working, without anyone touching Slipway.
    slapd.modify(&format!(
        "dn: cn=tools.x,ou=servicegroups,{BASE}\nchangetype: modify\ndelete: member\nmember: uid=alice,ou=people,{BASE}\n"
    ));
    // A token issued now asks the directory now, TTL or not.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&session),
            Some(json!({"name": "after-removal", "project": "tool-x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "issued on stale memberships: {v}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ok, err) = skopeo_pull(&format!("{host}/tool-x/web:v1"), &creds);
    assert!(!ok, "a removed member's token still pulls");
    assert!(
        err.contains("unauthorized") || err.contains("denied") || err.contains("401"),
        "{err}"
    );
    let (_, me) = env
        .api(Method::GET, "/api/v1/me", Some(&session), None)
        .await;
    assert_eq!(me["memberships"], json!([]), "{me}");

    // Carol: only a posixGroup for a tool with no project — no projects;
    // she sees only the public one.
    let (s, carol) = sign_in("carol", "carol-secret").await;
    assert_eq!(s, StatusCode::OK, "{carol}");
    assert_eq!(carol["me"]["memberships"], json!([]));
    let (_, made) = env
        .api(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&bearer(&carol["token"])),
            Some(json!({"name": "ci", "pull_only": true, "expires": "1d"})),
        )
        .await;
    let carol_token = made["secret"].as_str().unwrap().to_owned();
    let carol_basic = basic("carol", &carol_token);
    let (s, _, b) = env.get("/v2/_catalog", Some(&carol_basic)).await;
    assert_eq!(s, StatusCode::OK);
    let catalog: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        catalog["repositories"],
        json!(["platform/builder", "tool-pub/web"]),
        "only the public projects: {catalog}"
    );
    let (ok, err) = skopeo_pull(
        &format!("{host}/tool-pub/web:v1"),
        &format!("carol:{carol_token}"),
    );
    assert!(ok, "{err}");
    // A pull-only token is for the registry only.
    let (s, v) = env
        .api(Method::GET, "/api/v1/me", Some(&carol_basic), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // Bob, in the admin group, administers.
    let (s, bob) = sign_in("bob", "bob-secret").await;
    assert_eq!(s, StatusCode::OK, "{bob}");
    assert_eq!(bob["me"]["admin"], true);
    let bob_session = bearer(&bob["token"]);
    let (s, people) = env
        .api(Method::GET, "/api/v1/people", Some(&bob_session), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{people}");
    let (s, tokens) = env
        .api(
            Method::GET,
            "/api/v1/people/carol/tokens",
            Some(&bob_session),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{tokens}");
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    let (s, v) = env
        .api(
            Method::DELETE,
            &format!("/api/v1/people/carol/tokens/{id}"),
            Some(&bob_session),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (ok, _) = skopeo_pull(
        &format!("{host}/tool-pub/web:v1"),
        &format!("carol:{carol_token}"),
    );
    assert!(
        !ok,
        "a revoked token is refused (even for public images: wrong credentials)"
    );
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?action=token.revoke",
            Some(&env.admin()),
            None,
        )
        .await;
    assert!(
        audit.to_string().contains("\"bob\""),
        "audited with the person's name: {audit}"
    );

    // Removed from the admin group: no longer admin, at the next look.
    slapd.modify(&format!(
        "dn: cn=tools.admin,ou=servicegroups,{BASE}\nchangetype: modify\nreplace: member\nmember: uid=dave,ou=people,{BASE}\n"
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, v) = env
        .api(Method::GET, "/api/v1/people", Some(&bob_session), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

/// Pushes (as the admin) an image podman can unpack: one layer, an
/// uncompressed tar holding `hello.txt`, and a config naming its diff id.
async fn push_real_image(env: &crate::security::Env, repo: &str, tag: &str) -> String {
    use crate::security::digest;
    let mut layer = tar::Builder::new(Vec::new());
    let body = b"hello from a tool\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    layer
        .append_data(&mut header, "hello.txt", &body[..])
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    });
    crate::ui::push(env, repo, tag, &[&layer], config).await;
    format!("{repo}:{tag}")
}
