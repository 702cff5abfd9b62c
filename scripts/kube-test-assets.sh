#!/usr/bin/env bash
# Makes the Kubernetes control-plane binaries of the operator's tests (etcd 3.4,
# kube-apiserver and kube-controller-manager v1.20.2) available in DIR and prints DIR as
# the last line of its output.
#
# Usage: scripts/kube-test-assets.sh [--dry-run] [--rebuild] [DIR]
#   DIR        default: ${XDG_CACHE_HOME:-$HOME/.cache}/dbcollector/kube-test-assets
#   --dry-run  print the commands that would change anything instead of running them
#   --rebuild  build from Debian's packages even when prebuilt binaries are available
#
# Where the binaries come from, first match wins:
#   1. DIR already holds them, matching the sums of where they came from (DIR/SHA256SUMS);
#   2. prebuilt, xz-compressed binaries with their SHA256SUMS.unpacked, in
#      $DBCOLLECTOR_KUBE_ASSETS_SRC or else ../shared/kube-test-assets beside the repo;
#   3. a rebuild (about 5 minutes on 2 cores, as root, needs Debian bookworm): etcd from
#      the `etcd-server` package, the two Kubernetes binaries compiled from the
#      `kubernetes` source package (see rebuild() for the recipe and its one fix).
# Also makes sure that xz, openssl and kubectl, which the test harness uses, are
# installed (Debian's xz-utils, openssl and kubernetes-client).
set -euo pipefail

bins=(etcd kube-apiserver kube-controller-manager)
root=$(cd "$(dirname "$0")/.." && pwd)

dry_run=false
force_rebuild=false
dest=
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=true ;;
    --rebuild) force_rebuild=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "kube-test-assets: unknown option $arg" >&2
      exit 2
      ;;
    *) dest=$arg ;;
  esac
done
dest=${dest:-${XDG_CACHE_HOME:-$HOME/.cache}/dbcollector/kube-test-assets}
src=${DBCOLLECTOR_KUBE_ASSETS_SRC:-$root/../shared/kube-test-assets}
# Absolute paths: sums are checked from inside DIR.
if [ -d "$src" ]; then src=$(cd "$src" && pwd); fi

log() { echo "kube-test-assets: $*" >&2; }

# Runs a command, or only prints it (shell-quoted) in a dry run.
run() {
  if $dry_run; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Runs a shell snippet (for globs, cd and redirections), or only prints it in a dry run.
run_sh() {
  if $dry_run; then
    printf '+ %s\n' "$1"
  else
    sh -c "$1"
  fi
}

# Installs Debian packages that are missing; needs root.
apt_install() {
  if ((EUID != 0)) && ! $dry_run; then
    log "missing packages: $*; run this script as root"
    exit 1
  fi
  if ! $apt_updated; then
    run apt-get update -qq
    apt_updated=true
  fi
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
apt_updated=false

# Whether DIR holds every binary listed, with its sum, in the sums file $1.
verified() {
  local sums=$1 bin
  [ -f "$sums" ] || return 1
  for bin in "${bins[@]}"; do
    grep -Eq "^[0-9a-f]{64}  $bin\$" "$sums" || return 1
    [ -x "$dest/$bin" ] || return 1
  done
  (cd "$dest" && sha256sum --check --status "$sums")
}

# The tools the harness itself runs: xz to unpack, openssl for the service-account key
# pair, kubectl for the tests. Any kubectl on PATH will do; Debian's is v1.20.
ensure_tools() {
  local missing=()
  command -v xz >/dev/null || missing+=(xz-utils)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  command -v sha256sum >/dev/null || missing+=(coreutils)
  command -v flock >/dev/null || missing+=(util-linux)
  if ((${#missing[@]} > 0)); then
    apt_install "${missing[@]}"
  fi
}

# Unpacks the prebuilt binaries of $src into DIR and checks them against their sums.
unpack() {
  local bin tmp
  log "unpacking from $src"
  for bin in "${bins[@]}"; do
    # A temporary name in DIR, then a rename: a reader never sees half a binary.
    tmp="$dest/.$bin.$$"
    run_sh "xz -dc '$src/$bin.xz' > '$tmp'"
    run chmod 0755 "$tmp"
    run mv -f "$tmp" "$dest/$bin"
  done
  run install -m 0644 "$src/SHA256SUMS.unpacked" "$dest/SHA256SUMS"
  if ! $dry_run && ! verified "$dest/SHA256SUMS"; then
    log "the unpacked binaries do not match $src/SHA256SUMS.unpacked"
    exit 1
  fi
}

# Writes a deb-src twin of every Debian bookworm entry of the apt sources (both the
# one-line and the deb822 format) to $1, so that `apt-get source` can find `kubernetes`.
# Third-party repositories are left out: most publish no sources, and apt-get update
# would fail on them.
deb_src_entries() {
  local out=$1 suite_re='^bookworm(-updates|-security)?$'
  : >"$out"

  # One-line format: "deb [options] URI SUITE COMPONENT...".
  local file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    awk -v re="$suite_re" '
      $1 == "deb" {
        i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) ~ re) { $1 = "deb-src"; print }
      }' "$file" >>"$out"
  done

  # deb822 format: stanzas separated by blank lines; copy each enabled one of type deb
  # whose suites are bookworm's, with its suites narrowed to those and type deb-src.
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v re="$suite_re" '
      function flush(   n, i, s, kept, parts) {
        if (types ~ /(^| )deb( |$)/ && enabled !~ /^[Nn]o$/) {
          n = split(suites, parts, " ")
          kept = ""
          for (i = 1; i <= n; i++) if (parts[i] ~ re) kept = kept " " parts[i]
          if (kept != "") {
            print "Types: deb-src"
            print "Suites:" kept
            printf "%s", rest
            print ""
          }
        }
        types = ""; suites = ""; enabled = ""; rest = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^#/ { next }
      {
        key = tolower($1)
        value = $0
        sub(/^[^:]*:[ \t]*/, "", value)
        if (key == "types:") types = value
        else if (key == "suites:") suites = value
        else if (key == "enabled:") enabled = value
        else rest = rest $0 "\n"
      }
      END { flush() }' "$file" >>"$out.822"
  done
  if [ -s "$out.822" ]; then
    # Continuation lines (a multi-line Signed-By key) belong to the field before them,
    # which rest keeps in order, so the stanza stays valid.
    mv "$out.822" "${out%.list}.sources"
  else
    rm -f "$out.822"
  fi
}

# Adds deb-src entries for bookworm unless apt already knows the kubernetes source.
ensure_deb_src() {
  if apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes$'; then
    return
  fi
  local scratch
  scratch=$(mktemp -d)
  deb_src_entries "$scratch/dbcollector-deb-src.list"
  if [ ! -s "$scratch/dbcollector-deb-src.list" ] && [ ! -s "$scratch/dbcollector-deb-src.sources" ]; then
    rm -rf "$scratch"
    log "no Debian bookworm entry in the apt sources to derive deb-src entries from"
    exit 1
  fi
  local f
  for f in "$scratch"/*; do
    [ -s "$f" ] || continue
    if $dry_run; then
      echo "+ cat > /etc/apt/sources.list.d/$(basename "$f") <<'EOF'"
      cat "$f"
      echo "EOF"
    else
      install -m 0644 "$f" "/etc/apt/sources.list.d/$(basename "$f")"
    fi
  done
  rm -rf "$scratch"
  run apt-get update -qq
  apt_updated=true
}

# Builds the binaries from Debian bookworm's packages into DIR and records their sums.
rebuild() {
  if ((EUID != 0)) && ! $dry_run; then
    log "a rebuild installs packages: run this script as root"
    exit 1
  fi
  if ! grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release; then
    log "warning: the recipe is for Debian bookworm; trying anyway"
  fi
  log "rebuilding from Debian's packages (about 5 minutes)"

  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/kube-test-assets.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the variable is local
  trap "rm -rf '$work'" EXIT

  ensure_deb_src
  # Debian's Go 1.19 and the build's tools; dpkg-dev unpacks the source package.
  apt_install golang-go make rsync jq dpkg-dev golang-github-modern-go-reflect2-dev

  # etcd: the binary of the etcd-server package, extracted rather than installed so that
  # no system service is set up. (apt warns that it downloads as root, not as _apt, into
  # this private directory; that is expected.)
  run_sh "cd '$work' && apt-get download etcd-server"
  run_sh "dpkg-deb -x '$work'/etcd-server_*.deb '$work/etcd-root'"
  run install -m 0755 "$work/etcd-root/usr/bin/etcd" "$dest/.etcd.$$"

  # kube-apiserver and kube-controller-manager from the vendored source (34 MB).
  run_sh "cd '$work' && apt-get source -qq kubernetes"
  local tree="$work/kubernetes-1.20.5+really1.20.2"
  if ! $dry_run; then
    tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
    [ -n "$tree" ] || {
      log "apt-get source kubernetes unpacked nothing"
      exit 1
    }
  fi

  # The build expects the tree at $GOPATH/src/k8s.io/kubernetes (GOPATH mode).
  run mkdir -p "$tree/.go/src/k8s.io"
  run ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"

  # The vendored reflect2 1.0.1 crashes (SIGSEGV in map iteration) with Go >= 1.18, so
  # the API server dies on its first list: swap in Debian's reflect2 1.0.2, whose API is
  # the same.
  local vendored="$tree/vendor/github.com/modern-go/reflect2"
  local debian=/usr/share/gocode/src/github.com/modern-go/reflect2
  run_sh "rm -f '$vendored'/*.go '$vendored'/*.s"
  run_sh "cp '$debian'/*.go '$debian'/*.s '$vendored/'"
  run_sh "rm -f '$vendored'/*_test.go"

  # Debian's Go first on PATH, as its own package build does, whatever else is installed.
  run env PATH="/usr/lib/go/bin:$PATH" GOPATH="$tree/.go" CGO_ENABLED=0 \
    make -C "$tree" WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
  local bin
  for bin in kube-apiserver kube-controller-manager; do
    run install -m 0755 "$tree/_output/bin/$bin" "$dest/.$bin.$$"
  done

  # Only now replace what DIR had, all three together, and record the sums.
  for bin in "${bins[@]}"; do
    run mv -f "$dest/.$bin.$$" "$dest/$bin"
  done
  run_sh "cd '$dest' && sha256sum ${bins[*]} > SHA256SUMS"
  if ! $dry_run; then
    local version
    version=$("$dest/kube-apiserver" --version 2>&1 || true)
    case $version in
      *v1.20.*) ;;
      *) log "warning: kube-apiserver reports '$version', expected v1.20.x" ;;
    esac
  fi
}

ensure_tools
run mkdir -p "$dest"
if [ -d "$dest" ]; then dest=$(cd "$dest" && pwd); fi

# One run at a time per DIR: concurrent test processes share the cache.
if ! $dry_run; then
  exec 9>"$dest/.lock"
  flock 9
fi

if [ -d "$src" ] && ! $force_rebuild; then
  # Prebuilt binaries are the reference: re-unpack when DIR holds anything else, e.g. an
  # older set or a local rebuild.
  if ! verified "$src/SHA256SUMS.unpacked"; then
    unpack
  fi
elif $force_rebuild || ! verified "$dest/SHA256SUMS"; then
  rebuild
fi
echo "$dest"
