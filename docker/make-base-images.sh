#!/usr/bin/env bash
# Creates LOCAL stand-ins for the base images docker/Dockerfile and bench/image_latency.sh name,
# for machines that run a Docker engine but reach no image registry (our development and CI
# machines). With them the real, unchanged Dockerfile builds offline; anywhere else Docker pulls
# the real images and this script is not needed.
#
#   rust:1.95-bookworm                  Debian bookworm (debootstrap, minbase) + gcc, libc6-dev,
#                                       file, ca-certificates + this machine's Rust 1.95.0
#                                       toolchain, laid out as in the official image
#                                       (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo),
#                                       and this machine's CA bundle (for crates.io via a proxy)
#   debian:bookworm-slim                Debian bookworm, minbase
#   gcr.io/distroless/static-debian12   passwd/group (root, nobody, nonroot 65532), CA roots,
#                                       tzdata, /tmp: what distroless "static" holds
#
# Idempotent: an image that already exists is skipped (FORCE=1 rebuilds). The downloaded .debs
# are cached as debootstrap tarballs in $REGIONPROBE_DOCKER_CACHE (default
# /var/cache/regionprobe-docker), so a second run on the same machine needs no download.
# Needs root, docker, and Debian's mirror (taken from apt's sources; DEBIAN_MIRROR overrides).
set -euo pipefail

RUST_VERSION=1.95.0
SUITE=bookworm
RUST_IMAGE=rust:1.95-bookworm
SLIM_IMAGE=debian:bookworm-slim
DISTROLESS_IMAGE=gcr.io/distroless/static-debian12
CACHE=${REGIONPROBE_DOCKER_CACHE:-/var/cache/regionprobe-docker}
BUILDER_PACKAGES=gcc,libc6-dev,file,ca-certificates,tzdata
STANDIN_LABEL=org.regionprobe.standin

t0=$(date +%s)
log() { printf '[make-base-images %3ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
die() { log "error: $*" >&2; exit 1; }
have_image() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
command -v docker >/dev/null || die "docker not found"

if have_image "$RUST_IMAGE" && have_image "$SLIM_IMAGE" && have_image "$DISTROLESS_IMAGE"; then
  log "all stand-ins exist: $RUST_IMAGE $SLIM_IMAGE $DISTROLESS_IMAGE (FORCE=1 rebuilds)"
  exit 0
fi

# The Debian mirror apt already uses: deb822 "URIs:" or one-line "deb URI suite ...".
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  local uri
  uri=$(cat "${files[@]}" 2>/dev/null |
    awk '/^URIs:/ {print $2} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; break}}' |
    grep -E '/debian/?$' | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

MIRROR=$(mirror)
mkdir -p "$CACHE"
work=$(mktemp -d /var/tmp/regionprobe-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# debootstrap NAME ROOT [extra packages]: a minbase root, cleaned like an image. Its .debs are
# downloaded once into $CACHE/$SUITE-NAME-debs.tgz (debootstrap installs every .deb of a tarball,
# so each package set has its own).
bootstrap() {
  local name=$1 root=$2 include=${3:-}
  local debs="$CACHE/$SUITE-$name-debs.tgz"
  if [ ! -s "$debs" ]; then
    log "downloading the $SUITE $name .debs from $MIRROR into $debs"
    debootstrap --variant=minbase ${include:+--include="$include"} --make-tarball="$debs.part" \
      "$SUITE" "$work/download" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
      { tail -n 30 "$work/debootstrap.log"; die "debootstrap --make-tarball failed"; }
    mv "$debs.part" "$debs"
    rm -rf "$work/download"
  else
    log "using the cached $debs"
  fi
  log "debootstrap $SUITE ($name) into $root"
  debootstrap --variant=minbase ${include:+--include="$include"} --unpack-tarball="$debs" \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log"; die "debootstrap failed"; }
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$root/etc/apt/sources.list"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/debootstrap
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
}

# import ROOT TAG [docker import --change ...]: the root as one layer, tagged.
import() {
  local root=$1 tag=$2
  shift 2
  log "docker import $tag ($(du -sh "$root" | cut -f1))"
  tar --numeric-owner --xattrs -C "$root" -cf - . |
    docker import --change "LABEL $STANDIN_LABEL=\"local stand-in made by docker/make-base-images.sh\"" "$@" - "$tag" >/dev/null
}

builder_root=""
need_builder_root() {
  if [ -z "$builder_root" ]; then
    builder_root="$work/builder"
    bootstrap builder "$builder_root" "$BUILDER_PACKAGES"
  fi
}

if have_image "$SLIM_IMAGE"; then
  log "$SLIM_IMAGE exists; skipped"
else
  bootstrap minbase "$work/slim"
  # As the real slim image, which keeps no documentation, manual pages or translations.
  rm -rf "$work/slim"/usr/share/{doc,man,info,locale}/*
  import "$work/slim" "$SLIM_IMAGE" --change 'CMD ["bash"]'
  rm -rf "$work/slim"
fi

if have_image "$DISTROLESS_IMAGE"; then
  log "$DISTROLESS_IMAGE exists; skipped"
else
  need_builder_root
  d="$work/distroless"
  mkdir -p "$d"/{etc/ssl/certs,usr/share,tmp,root,home/nonroot}
  cat >"$d/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$d/etc/group" <<'EOF'
root:x:0:
tty:x:5:
staff:x:50:
nobody:x:65534:
nonroot:x:65532:
EOF
  printf 'hosts: files dns\n' >"$d/etc/nsswitch.conf"
  printf 'PRETTY_NAME="Distroless (local stand-in)"\nNAME="Debian GNU/Linux"\nID="debian"\nVERSION_ID="12"\nHOME_URL="https://github.com/GoogleContainerTools/distroless"\n' >"$d/etc/os-release"
  cp "$builder_root/etc/ssl/certs/ca-certificates.crt" "$d/etc/ssl/certs/"
  cp -a "$builder_root/usr/share/zoneinfo" "$d/usr/share/"
  chmod 1777 "$d/tmp"
  chmod 700 "$d/root" "$d/home/nonroot"
  chown 65532:65532 "$d/home/nonroot"
  import "$d" "$DISTROLESS_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
fi

if have_image "$RUST_IMAGE"; then
  log "$RUST_IMAGE exists; skipped"
else
  need_builder_root
  toolchain_name="$RUST_VERSION-x86_64-unknown-linux-gnu"
  rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  # The host names its toolchains stable/1.95.0 (a symlink); resolve whichever exists.
  toolchain=""
  for name in "$toolchain_name" stable-x86_64-unknown-linux-gnu; do
    candidate="$rustup_home/toolchains/$name"
    if [ -x "$candidate/bin/rustc" ] &&
       "$candidate/bin/rustc" -V | grep -q "^rustc $RUST_VERSION "; then
      toolchain=$(readlink -f "$candidate")
      break
    fi
  done
  [ -n "$toolchain" ] || die "no rustc $RUST_VERSION toolchain under $rustup_home/toolchains"
  [ -x "$cargo_home/bin/rustup" ] || die "no rustup in $cargo_home/bin"
  log "copying the Rust toolchain $toolchain (without docs)"
  r="$builder_root"
  mkdir -p "$r/usr/local/rustup/toolchains/$toolchain_name" "$r/usr/local/cargo/bin"
  tar -C "$toolchain" --exclude=./share/doc -cf - . | tar -C "$r/usr/local/rustup/toolchains/$toolchain_name" -xf -
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain_name" \
    >"$r/usr/local/rustup/settings.toml"
  # As rustup-init lays it out: every tool is a hard link to the rustup proxy.
  cp "$cargo_home/bin/rustup" "$r/usr/local/cargo/bin/rustup"
  for tool in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-gdbgui rust-lldb; do
    ln "$r/usr/local/cargo/bin/rustup" "$r/usr/local/cargo/bin/$tool"
  done
  chmod -R a+w "$r/usr/local/rustup" "$r/usr/local/cargo"
  # The builder downloads crates over TLS: trust what this machine trusts (an egress proxy that
  # re-signs TLS, as on our CI machines, has its CA in the host's bundle, not in Debian's).
  if ! cmp -s /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"; then
    log "installing this machine's CA bundle ($(grep -c BEGIN /etc/ssl/certs/ca-certificates.crt) certificates) in $RUST_IMAGE"
    cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
  fi
  import "$r" "$RUST_IMAGE" \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=$RUST_VERSION" \
    --change 'WORKDIR /' \
    --change 'CMD ["bash"]'
  docker run --rm --network none "$RUST_IMAGE" sh -c 'cargo -V && rustc -V && gcc --version | head -n 1' ||
    { docker rmi "$RUST_IMAGE" >/dev/null; die "the toolchain does not run in $RUST_IMAGE"; }
fi

log "done"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
  grep -E "^($RUST_IMAGE|$SLIM_IMAGE|$DISTROLESS_IMAGE)(:latest)? " | sed 's/^/  /' || true
