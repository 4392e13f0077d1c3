//! Every language the bookworm builder builds, end to end on one server
//! (the stack pushed and the builder unpacked once, two builds at a time):
//! each app built through the API, built again unchanged (and asserted to
//! upload no layer bytes), pulled and run by podman, answering HTTP on
//! $PORT. Dependencies come vendored in the app (Packagist, rubygems and
//! the Go module proxy are not reachable from these machines) or, for
//! Rust, from crates.io through the egress proxy; Debian packages from
//! Debian's mirror.
//!
//! Prints, for the README, each app's cold and warm build times, its
//! image's size and what of it is its own (above the run image).

use std::process::Command;
use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::builds::git_repo;
use crate::builds_e2e::{answer, build, env_with_stack, free_port, log_of, pull_and_start};
use crate::security::Env;

struct App {
    name: &'static str,
    files: Vec<(&'static str, String)>,
    /// The answer to `GET /` starts with this.
    answer: &'static str,
    /// A line the cold build's log must hold.
    cold_log: &'static str,
}

fn apps() -> Vec<App> {
    let s = |x: &str| x.to_owned();
    vec![
        App {
            name: "php",
            files: vec![(
                "index.php",
                s("<?php echo 'php says ' . PHP_VERSION . ' via ' . PHP_SAPI;\n"),
            )],
            answer: "php says 8.2",
            cold_log: "process web: lighttpd and php-cgi",
        },
        App {
            name: "php-composer",
            files: vec![
                (
                    "composer.json",
                    s(r#"{
  "require": {"php": ">=8.1", "acme/greeting": "*"},
  "repositories": [
    {"type": "path", "url": "packages/greeting", "options": {"symlink": false}},
    {"packagist.org": false}
  ],
  "minimum-stability": "dev"
}
"#),
                ),
                (
                    "packages/greeting/composer.json",
                    s(
                        r#"{"name": "acme/greeting", "version": "1.0.0", "autoload": {"psr-4": {"Acme\\Greeting\\": "src/"}}}
"#,
                    ),
                ),
                (
                    "packages/greeting/src/Hello.php",
                    s(
                        "<?php\nnamespace Acme\\Greeting;\nclass Hello { public static function say(string $who): string { return \"hello, $who, from a composer package\"; } }\n",
                    ),
                ),
                (
                    "public/index.php",
                    s(
                        "<?php\nrequire __DIR__ . '/../vendor/autoload.php';\necho \\Acme\\Greeting\\Hello::say('toolforge');\n",
                    ),
                ),
            ],
            answer: "hello, toolforge, from a composer package",
            cold_log: "composer install --no-dev",
        },
        App {
            name: "go",
            files: vec![
                ("go.mod", s("module example.org/hello\n\ngo 1.19\n")),
                (
                    "main.go",
                    s(r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "go says hello") })
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.ListenAndServe("127.0.0.1:"+port, nil)
}
"#),
                ),
            ],
            answer: "go says hello",
            cold_log: "go build (go1.",
        },
        App {
            name: "go-vendored",
            files: vec![
                (
                    "go.mod",
                    s(
                        "module example.org/vendored\n\ngo 1.19\n\nrequire example.org/greet v1.0.0\n",
                    ),
                ),
                (
                    "vendor/modules.txt",
                    s("# example.org/greet v1.0.0\n## explicit\nexample.org/greet\n"),
                ),
                (
                    "vendor/example.org/greet/greet.go",
                    s(
                        "package greet\n\nfunc Hello(who string) string { return \"hello, \" + who + \", from a vendored module\" }\n",
                    ),
                ),
                (
                    "cmd/server/main.go",
                    s(r#"package main

import (
	"fmt"
	"net/http"
	"os"

	"example.org/greet"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, greet.Hello("toolforge")) })
	http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil)
}
"#),
                ),
            ],
            answer: "hello, toolforge, from a vendored module",
            cold_log: "building with the app's vendor/ (offline)",
        },
        App {
            name: "ruby",
            files: vec![
                (
                    "Gemfile",
                    s(
                        "gem \"rack\"\ngem \"webrick\"\ngem \"greeting\", path: \"vendor/greeting\"\n",
                    ),
                ),
                ("vendor/cache/.keep", s("")),
                (
                    "vendor/greeting/greeting.gemspec",
                    s(
                        "Gem::Specification.new do |s|\n  s.name = \"greeting\"\n  s.version = \"1.0.0\"\n  s.summary = \"a greeting\"\n  s.authors = [\"t\"]\n  s.files = [\"lib/greeting.rb\"]\nend\n",
                    ),
                ),
                (
                    "vendor/greeting/lib/greeting.rb",
                    s(
                        "module Greeting\n  def self.hello(who) = \"hello, #{who}, from a vendored gem\"\nend\n",
                    ),
                ),
                (
                    "config.ru",
                    s(
                        "require \"greeting\"\nrun ->(env) { [200, {\"content-type\" => \"text/plain\"}, [Greeting.hello(\"rack\")]] }\n",
                    ),
                ),
            ],
            answer: "hello, rack, from a vendored gem",
            cold_log: "bundle install --local",
        },
        App {
            name: "java",
            files: vec![(
                "src/main/java/org/toolforge/Main.java",
                s(r#"package org.toolforge;

import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;

public class Main {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 0);
        server.createContext("/", exchange -> {
            byte[] body = ("java says hello, Java " + Runtime.version().feature()).getBytes();
            exchange.sendResponseHeaders(200, body.length);
            exchange.getResponseBody().write(body);
            exchange.close();
        });
        server.start();
    }
}
"#),
            )],
            answer: "java says hello, Java 17",
            cold_log: "javac: 1 source files",
        },
        App {
            name: "rust",
            files: vec![
                (
                    "Cargo.toml",
                    s(
                        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nitoa = \"1\"\n",
                    ),
                ),
                (
                    "src/main.rs",
                    s(r#"use std::io::{Read, Write};

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    for stream in listener.incoming() {
        let mut s = stream.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let body = format!("rust says {} with itoa", itoa::Buffer::new().format(42));
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
}
"#),
                ),
            ],
            answer: "rust says 42 with itoa",
            cold_log: "cargo build --release",
        },
        App {
            name: "aptfile",
            files: vec![
                ("Aptfile", s("# what the app needs at run time\njq\n")),
                ("Procfile", s("web: python3 server.py\n")),
                (
                    "server.py",
                    s(r#"import os, subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        out = subprocess.run(["jq", "-n", "-r", '"jq says hello"'], capture_output=True, text=True).stdout.strip()
        body = out.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), H).serve_forever()
"#),
                ),
            ],
            answer: "jq says hello",
            cold_log: "Debian packages: jq",
        },
        App {
            name: "python-node",
            files: vec![
                (
                    "package.json",
                    s(
                        r#"{"name": "mixed", "version": "1.0.0", "private": true, "scripts": {"postinstall": "node build.js"}}"#,
                    ),
                ),
                (
                    "package-lock.json",
                    s(
                        r#"{"name": "mixed", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": {"": {"name": "mixed", "version": "1.0.0"}}}"#,
                    ),
                ),
                (
                    "build.js",
                    s(
                        "require('fs').writeFileSync('asset.txt', 'built by node ' + process.version.split('.')[0]);\n",
                    ),
                ),
                ("requirements.txt", s("")),
                (
                    "app.py",
                    s(r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("python serves what was " + open("asset.txt").read()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), H).serve_forever()
"#),
                ),
            ],
            answer: "python serves what was built by node v",
            cold_log: "detected group 1: slipway/nodejs@0.1.0, slipway/python@0.1.0",
        },
        App {
            name: "project-toml",
            files: vec![
                (
                    "project.toml",
                    s(r#"[_]
schema-version = "0.2"

[io.buildpacks]
exclude = ["secrets/", "buildpacks/"]

[[io.buildpacks.group]]
uri = "buildpacks/greeter"

[[io.buildpacks.group]]
id = "slipway/procfile"

[[io.buildpacks.build.env]]
name = "GREETING"
value = "hello from an app-local buildpack"
"#),
                ),
                (
                    "buildpacks/greeter/buildpack.toml",
                    s("api = \"0.10\"\n[buildpack]\nid = \"tool/greeter\"\nversion = \"1.0.0\"\n"),
                ),
                ("buildpacks/greeter/bin/detect", s("#!/bin/sh\nexit 0\n")),
                (
                    "buildpacks/greeter/bin/build",
                    s("#!/bin/sh\nset -e\necho \"$GREETING\" > greeting.txt\n"),
                ),
                ("secrets/token", s("not for the image\n")),
                ("Procfile", s("web: python3 server.py\n")),
                (
                    "server.py",
                    s(r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        parts = [open("greeting.txt").read().strip()]
        for d in ("secrets", "buildpacks"):
            parts.append(d + (": there" if os.path.exists(d) else ": absent"))
        body = "; ".join(parts).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), H).serve_forever()
"#),
                ),
            ],
            answer: "hello from an app-local buildpack; secrets: absent; buildpacks: absent",
            cold_log: "project.toml names the buildpacks: tool/greeter@1.0.0, slipway/procfile@0.1.0",
        },
    ]
}

/// What one app's run measured, for the README's table.
struct Measured {
    name: &'static str,
    cold_secs: f64,
    warm_secs: f64,
    image_bytes: u64,
    own_bytes: u64,
}

/// Compressed bytes of an image's layers, and of those above `base`'s.
async fn sizes(env: &Env, repo: &str, base: &[String]) -> (u64, u64) {
    let (s, _, b) = env
        .send(
            reqwest::Method::GET,
            &format!("/v2/{repo}/manifests/latest"),
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let m: Value = serde_json::from_slice(&b).unwrap();
    let mut all = 0;
    let mut own = 0;
    for l in m["layers"].as_array().unwrap() {
        let size = l["size"].as_u64().unwrap();
        all += size;
        if !base.iter().any(|d| l["digest"] == *d) {
            own += size;
        }
    }
    (all, own)
}

async fn one(env: &Env, app: App, base: &[String]) -> Result<Measured, String> {
    let project = format!("tool-{}", app.name);
    env.server.create_project(&project, true).await;
    let token = env.build_token(&project, "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    let files: Vec<(&str, &str)> = app.files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    git_repo(&repo, &files);
    let request = json!({"source_url": format!("file://{}", repo.display()), "ref": "main", "image_name": "web"});
    let started = Instant::now();
    let cold = build(env, &project, &token, request.clone()).await;
    let cold_log = log_of(env, &project, cold["id"].as_str().unwrap(), &token).await;
    if cold["state"] != "succeeded" {
        return Err(format!(
            "{}: the cold build {}: {}\n{cold_log}",
            app.name, cold["state"], cold["reason"]
        ));
    }
    if !cold_log.contains(app.cold_log) {
        return Err(format!(
            "{}: the cold build's log lacks {:?}:\n{cold_log}",
            app.name, app.cold_log
        ));
    }
    // Forced: the same commit again would be reused, not built.
    let mut request = request;
    request["force"] = serde_json::json!(true);
    let warm = build(env, &project, &token, request).await;
    let warm_log = log_of(env, &project, warm["id"].as_str().unwrap(), &token).await;
    if warm["state"] != "succeeded" || !warm_log.contains(": 0 layers uploaded (0 bytes)") {
        return Err(format!(
            "{}: the warm build should upload no layer bytes ({}: {}):\n{warm_log}",
            app.name, warm["state"], warm["reason"]
        ));
    }
    let image = format!("{}/{project}/web:latest", env.server.addr);
    let port = free_port();
    let container = pull_and_start(&image, &["-e", &format!("PORT={port}")]);
    let (s, body) = answer(port, "/", &container).await;
    let _ = Command::new("podman")
        .args(["rm", "-f", &container])
        .output();
    if s != StatusCode::OK || !body.starts_with(app.answer) {
        return Err(format!(
            "{}: GET / answered {s} {body:?}, not {:?}",
            app.name, app.answer
        ));
    }
    let (image_bytes, own_bytes) = sizes(env, &format!("{project}/web"), base).await;
    eprintln!("language {}: passed in {:?}", app.name, started.elapsed());
    Ok(Measured {
        name: app.name,
        cold_secs: cold["duration_secs"].as_f64().unwrap_or(0.0),
        warm_secs: warm["duration_secs"].as_f64().unwrap_or(0.0),
        image_bytes,
        own_bytes,
    })
}

/// Apps asking for what the stack does not have — a runtime version, a
/// Debian package that does not exist, a repository the admin did not
/// configure — and what their builds must say.
/// (name, files, what the failed build's log must say)
type Refusal = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

fn wrong_versions() -> Vec<Refusal> {
    vec![
        (
            "php-version",
            vec![
                ("composer.json", r#"{"require": {"php": "^7.4"}}"#),
                ("index.php", "<?php echo 1;"),
            ],
            "composer.json requires PHP ^7.4, and this stack has PHP 8.2",
        ),
        (
            "node-version",
            vec![(
                "package.json",
                r#"{"name": "x", "version": "1.0.0", "engines": {"node": "20.x"}}"#,
            )],
            "package.json's engines.node asks for 20.x; this stack has Node.js v18",
        ),
        (
            "python-version",
            vec![(".python-version", "3.12\n"), ("requirements.txt", "")],
            ".python-version asks for Python 3.12; this stack has Python 3.11",
        ),
        (
            "go-version",
            vec![
                ("go.mod", "module example.org/x\n\ngo 1.22\n"),
                ("main.go", "package main\nfunc main() {}\n"),
            ],
            "go.mod asks for Go 1.22; this stack has Go 1.19",
        ),
        (
            "apt-missing",
            vec![
                ("Aptfile", "jq\nno-such-package-slipway\n"),
                ("Procfile", "web: true\n"),
            ],
            "these packages are not in debian 12: no-such-package-slipway",
        ),
        (
            "apt-repository",
            vec![
                (
                    "Aptfile",
                    ":repo:deb http://example.org/debian bookworm main\njq\n",
                ),
                ("Procfile", "web: true\n"),
            ],
            "only packages from the repositories the admin configured are installed",
        ),
    ]
}

async fn refused(
    env: &Env,
    name: &str,
    files: Vec<(&str, &str)>,
    sentence: &str,
) -> Result<(), String> {
    let project = format!("tool-{name}");
    env.server.create_project(&project, true).await;
    let token = env.build_token(&project, "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    git_repo(&repo, &files);
    let b = build(
        env,
        &project,
        &token,
        json!({"source_url": format!("file://{}", repo.display()), "ref": "main"}),
    )
    .await;
    let log = log_of(env, &project, b["id"].as_str().unwrap(), &token).await;
    if b["state"] != "failed" || !log.contains(sentence) {
        return Err(format!(
            "{name}: expected a failure saying {sentence:?}, got {}:\n{log}",
            b["state"]
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_language_builds_answers_and_rebuilds_from_its_cache() {
    let env = env_with_stack("bookworm", |c| {
        c.builds.workers = 2;
        c.builds.timeout_secs = 900;
    })
    .await;
    let (s, _, b) = env
        .send(
            reqwest::Method::GET,
            "/v2/platform/run/manifests/bookworm",
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let run: Value = serde_json::from_slice(&b).unwrap();
    let base: Vec<String> = run["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let base_bytes: u64 = run["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let results = futures::future::join_all(apps().into_iter().map(|a| one(&env, a, &base))).await;
    let refusals = futures::future::join_all(
        wrong_versions()
            .into_iter()
            .map(|(name, files, sentence)| refused(&env, name, files, sentence)),
    )
    .await;
    let mut failures: Vec<String> = refusals.into_iter().filter_map(Result::err).collect();
    eprintln!(
        "\n| App | cold build | warm build | image (compressed) | its own layers |\n|---|--:|--:|--:|--:|"
    );
    for r in results {
        match r {
            Ok(m) => eprintln!(
                "| {} | {:.1} s | {:.1} s | {:.0} MB | {:.1} MB |",
                m.name,
                m.cold_secs,
                m.warm_secs,
                m.image_bytes as f64 / 1e6,
                m.own_bytes as f64 / 1e6
            ),
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "(the run image: {:.0} MB compressed)",
        base_bytes as f64 / 1e6
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
