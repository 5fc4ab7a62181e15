#!/usr/bin/env bash
# Builds keysync's image with podman and no registry (`make image`): deploy/image/Containerfile
# on an empty base, from a context of the static binary (`make build`), the host's CA bundle
# and this directory's passwd and group. Usage: deploy/image/build.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=${1:-keysync:dev}
bin=bin/keysync
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
fail() { echo "image build: $*" >&2; exit 1; }

[ -x "$bin" ] || fail "$bin is missing: run make build"
[ -s "$ca" ] || fail "no CA bundle at $ca (Debian: the ca-certificates package; or set CA_BUNDLE)"
# An empty base has no C library, so a binary that needs one would not start.
go version -m "$bin" | grep -q 'CGO_ENABLED=0' || fail "$bin is not static (build it with make build)"

# The context holds exactly what the image gets.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
install -m 0755 "$bin" "$ctx/keysync"
install -m 0644 "$ca" "$ctx/ca-certificates.crt"
install -m 0644 deploy/image/passwd deploy/image/group "$ctx/"

# --pull=never: FROM scratch needs no registry, and a build must not try one.
podman build --pull=never --quiet -f deploy/image/Containerfile -t "$tag" "$ctx" >/dev/null
echo "built $tag"
