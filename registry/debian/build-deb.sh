#!/usr/bin/env bash
# Makes slipway_<version>_<arch>.deb from this checkout:
#
#     registry/debian/build-deb.sh [--binary PATH] [--out DIR] [--fast]
#
# Without --binary it builds the release binary first (cargo build
# --release --locked). The package holds /usr/bin/slipway (debug symbols
# stripped), the systemd unit /lib/systemd/system/slipway.service, the
# conffile /etc/slipway/slipway.toml, and the README; its maintainer
# scripts add the `slipway` system user and /var/lib/slipway, and keep the
# data on remove and purge. --fast skips compression (for tests).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=""
out="$root/target/debian"
compress=(-Zxz)
while [ $# -gt 0 ]; do
	case "$1" in
	--binary) binary=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--fast) compress=(-Znone); shift ;;
	*) echo "build-deb.sh: unknown argument $1 (use --binary PATH, --out DIR, --fast)" >&2; exit 2 ;;
	esac
done
command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb is missing (Debian's dpkg)" >&2; exit 1; }
if [ -z "$binary" ]; then
	(cd "$root" && cargo build --release --locked --bin slipway)
	binary=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/slipway
fi
[ -x "$binary" ] || { echo "build-deb.sh: $binary is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc/slipway" \
	"$stage/lib/systemd/system" "$stage/usr/share/doc/slipway"
strip --strip-debug -o "$stage/usr/bin/slipway" "$binary"
chmod 0755 "$stage/usr/bin/slipway"
install -m 0644 "$here/slipway.toml" "$stage/etc/slipway/slipway.toml"
install -m 0644 "$here/slipway.service" "$stage/lib/systemd/system/slipway.service"
install -m 0644 "$root/README.md" "$stage/usr/share/doc/slipway/README.md"
cat >"$stage/usr/share/doc/slipway/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: slipway

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
for s in postinst prerm postrm; do
	install -m 0755 "$here/$s" "$stage/DEBIAN/$s"
done
echo /etc/slipway/slipway.toml >"$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: slipway
Version: $version
Architecture: $arch
Maintainer: Slipway developers <slipway@localhost>
Installed-Size: $size
Depends: adduser, bubblewrap, ca-certificates
Recommends: git
Section: net
Priority: optional
Description: OCI container registry with a quota-aware build front end
 Slipway serves the OCI distribution API with per-tool projects, exact
 storage quotas with layer deduplication, robot accounts and Docker token
 authentication, and builds images from git repositories with Cloud Native
 Buildpacks in an unprivileged sandbox. One binary; SQLite and files by
 default, PostgreSQL and S3 for several replicas.
CONTROL
mkdir -p "$out"
deb="$out/slipway_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$stage" "$deb" >/dev/null
echo "$deb"
