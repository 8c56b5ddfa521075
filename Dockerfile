# lbmesh: lbd and lbctl in a small Debian image.
#
# Both base images are build arguments, so a machine without an image
# registry builds from local ones (.ci/docker-cluster.sh makes them with
# debootstrap and `docker import`):
#   BUILD_IMAGE   has cargo and rustc >= 1.85 and a C linker (cc)
#   RUNTIME_IMAGE a Debian-like root filesystem with glibc
# With a registry the defaults work as they are: `docker build .`
#
# Run with host networking and the Docker socket, so published ports bind
# on the host and the Docker runtime starts tasks beside lbd, and with
# NET_ADMIN, so lbd can make the VIP ranges local (`ip route add local`):
#   docker run -d --name lbd --network host --cap-add NET_ADMIN \
#     -v /var/run/docker.sock:/var/run/docker.sock -v lbmesh-data:/var/lib/lbmesh \
#     lbmesh --advertise-addr 192.0.2.10
# (see deploy/compose.yaml for one node with compose).
ARG BUILD_IMAGE=rust:1.85-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
# The commit for lbmesh_build_info (the context has no .git).
ARG LBMESH_COMMIT=unknown
# CARGO_NET_OFFLINE=true builds from a registry copied into the build
# image (CI); the default fetches from crates.io.
ARG CARGO_NET_OFFLINE=false
ARG PROFILE=release
RUN LBMESH_COMMIT=${LBMESH_COMMIT} CARGO_NET_OFFLINE=${CARGO_NET_OFFLINE} \
    cargo build --locked --profile ${PROFILE} -p lbmesh -p lbctl --bins \
 && mkdir -p /out \
 && cp target/$( [ "${PROFILE}" = dev ] && echo debug || echo "${PROFILE}" )/lbd \
       target/$( [ "${PROFILE}" = dev ] && echo debug || echo "${PROFILE}" )/lbctl /out/ \
 && rm -rf target

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/lbd /out/lbctl /usr/local/bin/
# Node identity and registry; mount a volume here to keep them.
WORKDIR /var/lib/lbmesh
ENV LBD_LOG_FORMAT=text
# 9900: admin API, /v1 and /metrics; 9901: Raft.
EXPOSE 9900 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/lbd", "--data-dir", "/var/lib/lbmesh"]
