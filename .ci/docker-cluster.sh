#!/usr/bin/env bash
# Builds the Dockerfile from local base images and proves the image: three
# lbd containers form a cluster and each serves a service.
#
# There is no image registry here, so the base images are made locally:
#   lbmesh-base:bookworm   debootstrap --variant=minbase (Debian's packages)
#   lbmesh-build:local     that rootfs + gcc, with this machine's Rust
#                          toolchain and cargo registry copied in, so the
#                          build stage runs cargo offline
# Both rootfs are cached under $CACHE (kept while the machine is).
#
# The containers run with host networking, as the Dockerfile documents for
# production, on 127.88.0.1-3: a bridge network's 172.x addresses are not
# loopback, and tests here send traffic to loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${LBMESH_ROOTFS_CACHE:-/var/cache/lbmesh-ci}
SUITE=bookworm
MIRROR=${LBMESH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
NET=127.88.0
# Fixed ports are deliberate: the containers use host networking on
# 127.88.0.0/24, a range nothing else here uses (fixed-port-ok).
PORT=18080
TAG=lbmesh:ci
names=(lbmesh-ci-1 lbmesh-ci-2 lbmesh-ci-3)

log() { echo "docker-cluster: $*"; }
cleanup() {
    docker rm -f "${names[@]}" >/dev/null 2>&1 || true
    [ -n "${backend_pid:-}" ] && kill "$backend_pid" 2>/dev/null || true
    # The build stage's untagged layers (the sources and the toolchain).
    docker image prune -f >/dev/null 2>&1 || true
}
trap cleanup EXIT

command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
mkdir -p "$CACHE"
if ! docker image inspect lbmesh-base:$SUITE >/dev/null 2>&1; then
    if [ ! -x "$CACHE/base/bin/sh" ]; then
        log "debootstrap $SUITE (minbase)"
        rm -rf "$CACHE/base"
        debootstrap --variant=minbase "$SUITE" "$CACHE/base" "$MIRROR" >"$CACHE/debootstrap.log"
    fi
    tar -C "$CACHE/base" -c . | docker import - lbmesh-base:$SUITE >/dev/null
fi
# The build image carries a copy of the cargo registry, so it is made again
# whenever Cargo.lock changes: an image kept from an older lock file lacks
# the crates added since, and the offline build fails to resolve them.
lock_digest=$(sha256sum Cargo.lock | cut -c1-16)
built_for=$(docker image inspect -f '{{ index .Config.Labels "lbmesh.cargo-lock" }}' \
    lbmesh-build:local 2>/dev/null || true)
if [ "$built_for" != "$lock_digest" ]; then
    if [ ! -x "$CACHE/build/usr/bin/cc" ]; then
        log "build rootfs: gcc in a copy of the base"
        rm -rf "$CACHE/build"
        cp -a "$CACHE/base" "$CACHE/build"
        cp /etc/resolv.conf "$CACHE/build/etc/resolv.conf"
        chroot "$CACHE/build" apt-get update -qq
        chroot "$CACHE/build" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
        chroot "$CACHE/build" apt-get clean
    fi
    # This machine's toolchain (the only one to be had) and its registry.
    sysroot=$(rustc --print sysroot)
    mkdir -p "$CACHE/build/usr/local" "$CACHE/build/root/.cargo"
    cp -a "$sysroot/bin" "$sysroot/lib" "$CACHE/build/usr/local/"
    cargo fetch --locked --quiet
    rm -rf "$CACHE/build/root/.cargo/registry"
    cp -a "${CARGO_HOME:-$HOME/.cargo}/registry" "$CACHE/build/root/.cargo/"
    tar -C "$CACHE/build" -c . |
        docker import --change "LABEL lbmesh.cargo-lock=$lock_digest" - lbmesh-build:local >/dev/null
fi

log "docker build"
started=$(date +%s)
docker build -q -t "$TAG" \
    --build-arg BUILD_IMAGE=lbmesh-build:local \
    --build-arg RUNTIME_IMAGE=lbmesh-base:$SUITE \
    --build-arg CARGO_NET_OFFLINE=true \
    --build-arg PROFILE="${LBMESH_DOCKER_PROFILE:-release}" \
    --build-arg LBMESH_COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" \
    . >/dev/null
log "built $TAG in $(( $(date +%s) - started )) s"

# A backend on the host for the service's static endpoint.
python3 -m http.server --bind $NET.100 $PORT --directory "$(mktemp -d)" >/dev/null 2>&1 &
backend_pid=$!

lbctl() { docker exec "${names[0]}" lbctl --host $NET.1:9900 --token "$control" "$@"; }
docker rm -f "${names[@]}" >/dev/null 2>&1 || true
docker run -d --name "${names[0]}" --network host "$TAG" \
    --advertise-addr $NET.1 --vip-range 127.88.250.0/24 >/dev/null
for _ in $(seq 1 100); do
    control=$(docker logs "${names[0]}" 2>/dev/null | sed -n 's/^lbctl control token.*: //p')
    [ -n "$control" ] && break
    sleep 0.2
done
manager=$(docker logs "${names[0]}" 2>/dev/null | sed -n 's/^Add a manager:.*--token //p')
[ -n "$control" ] && [ -n "$manager" ] || { docker logs "${names[0]}"; echo "docker-cluster: no tokens" >&2; exit 1; }
for n in 2 3; do
    docker run -d --name "${names[$((n - 1))]}" --network host "$TAG" \
        --advertise-addr $NET.$n --join $NET.1:9900 --token "$manager" >/dev/null
done
ready=0
for _ in $(seq 1 150); do
    ready=$(lbctl node ls 2>/dev/null | grep -c ready || true)
    [ "$ready" = 3 ] && break
    sleep 0.2
done
[ "$ready" = 3 ] || { lbctl node ls || true; docker logs "${names[2]}"; echo "docker-cluster: $ready of 3 nodes ready" >&2; exit 1; }
log "three containers formed a cluster"

lbctl service create web -p 18081:80 --endpoint $NET.100:$PORT >/dev/null
for n in 1 2 3; do
    ok=
    for _ in $(seq 1 100); do
        if python3 - "$NET.$n" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}:18081/", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
        then ok=1; break; fi
        sleep 0.2
    done
    [ -n "$ok" ] || { docker logs "${names[$((n - 1))]}"; echo "docker-cluster: node $n does not serve web" >&2; exit 1; }
done
log "web answers through each of the three containers"
