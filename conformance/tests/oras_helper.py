#!/usr/bin/env python3
"""Drives the oras Python SDK (PyPI `oras`) for the interop tests.

The Rust test `interop::oras_*` runs this script with python3 and reads the
last line of its standard output: one JSON object. Errors go to standard
error and end the script with a non-zero status.

    oras_helper.py push HOST REPO:TAG FILE --artifact-type T
                   --subject-digest D --subject-size N --subject-media-type M
                   [--username U]   (password in $ORAS_HELPER_PASSWORD)
    oras_helper.py pull HOST REF OUTDIR
    oras_helper.py referrers HOST REPO DIGEST [--artifact-type T]

HOST is `127.0.0.1:PORT`; the registry speaks plain HTTP (`insecure=True`).
"""

import argparse
import hashlib
import json
import os
import sys
import urllib.parse

try:
    import oras.client
    import oras.oci
except ImportError as e:
    sys.exit(
        f"The oras Python SDK is not importable by {sys.executable} ({e}); "
        "install it with `python3 -m pip install oras` or run ./conformance/test.sh."
    )


def client(host, username=None):
    c = oras.client.OrasClient(hostname=host, insecure=True)
    if username:
        # What `login` does first; `login` itself would also write the
        # credentials into ~/.docker/config.json.
        c.auth.set_basic_auth(username, os.environ["ORAS_HELPER_PASSWORD"])
    return c


def push(args):
    c = client(args.host, args.username)
    subject = oras.oci.Subject(
        mediaType=args.subject_media_type,
        digest=args.subject_digest,
        size=args.subject_size,
    )
    # A config path that does not exist gives the empty config `{}` with
    # this media type, which the referrers API reports as the artifact type.
    response = c.push(
        target=f"{args.host}/{args.ref}",
        files=[args.file],
        disable_path_validation=True,
        manifest_config=f"/nonexistent:{args.artifact_type}",
        manifest_annotations={"org.slipway.test": "referrer"},
        subject=subject,
        quiet=True,
    )
    body = response.request.body
    if isinstance(body, str):
        body = body.encode()
    return {
        "status": response.status_code,
        "docker_content_digest": response.headers.get("Docker-Content-Digest"),
        "oci_subject": response.headers.get("OCI-Subject"),
        "location": response.headers.get("Location"),
        "manifest_digest": "sha256:" + hashlib.sha256(body).hexdigest(),
        "manifest_size": len(body),
        "manifest": json.loads(body),
    }


def pull(args):
    c = client(args.host)
    os.makedirs(args.outdir, exist_ok=True)
    files = c.pull(target=f"{args.host}/{args.ref}", outdir=args.outdir)
    manifest = c.get_manifest(f"{args.host}/{args.ref}")
    return {"files": sorted(files), "manifest": manifest}


def referrers(args):
    # oras-py has no referrers call; its own HTTP path (do_request) is used.
    c = client(args.host)
    url = f"http://{args.host}/v2/{args.repo}/referrers/{args.digest}"
    if args.artifact_type:
        # Percent-encoded: a bare `+` (as in `...+json`) would read as a space.
        url += "?" + urllib.parse.urlencode({"artifactType": args.artifact_type})
    response = c.do_request(url, "GET")
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return {
        "status": response.status_code,
        "content_type": response.headers.get("Content-Type"),
        "filters_applied": response.headers.get("OCI-Filters-Applied"),
        "body": body,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("push")
    s.add_argument("host")
    s.add_argument("ref")
    s.add_argument("file")
    s.add_argument("--artifact-type", required=True)
    s.add_argument("--subject-digest", required=True)
    s.add_argument("--subject-size", type=int, required=True)
    s.add_argument("--subject-media-type", required=True)
    s.add_argument("--username")
    s.set_defaults(run=push)

    s = sub.add_parser("pull")
    s.add_argument("host")
    s.add_argument("ref")
    s.add_argument("outdir")
    s.set_defaults(run=pull)

    s = sub.add_parser("referrers")
    s.add_argument("host")
    s.add_argument("repo")
    s.add_argument("digest")
    s.add_argument("--artifact-type")
    s.set_defaults(run=referrers)

    args = p.parse_args()
    try:
        result = args.run(args)
    except Exception as e:  # noqa: BLE001 — any failure is reported the same way
        sys.exit(f"oras {args.command} failed: {type(e).__name__}: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
