#!/usr/bin/env bash
# Prepares a Debian host to build, test and run fraudgraph. Idempotent: a re-run on a ready
# host changes nothing and takes a few seconds. It never builds the Rust workspace itself.
# Run with --help for what it does.
set -euo pipefail

TORCH_VERSION=2.11.0
LIGHTGBM_VERSION=4.7.0
CMAKE_MIN=3.28
PYTHON_VERSION=3.11
TANSU_VERSION=0.6.0
# fonts-dejavu-core: the TrueType font models/src/plots.rs draws text with.
APT_PACKAGES=(libclang-dev clang pkg-config zlib1g-dev build-essential fonts-dejavu-core)
PIP_REQUIREMENTS=("torch==${TORCH_VERSION}" "cmake>=${CMAKE_MIN}" numpy "lightgbm==${LIGHTGBM_VERSION}")
# deploy/check.sh's tools (--deploy-tools-only): Debian packages whose binaries are extracted
# into the cache (not installed: no services, no clash with another kubectl), and a small venv.
DEPLOY_DEBS=(kubernetes-client prometheus)
DEPLOY_PIP_REQUIREMENTS=("kubernetes-validate==1.37.0" "PyYAML==6.0.3")

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FRAUDGRAPH_CACHE:-$HOME/.cache/fraudgraph}
CACHED_VENV=$CACHE/venv-torch-$TORCH_VERSION
TANSU_ROOT=$CACHE/tansu-$TANSU_VERSION
DEPLOY_TOOLS=$CACHE/deploy-tools
MARKER_NAME=.fraudgraph-requirements

usage() {
    cat <<EOF
Usage: deploy/setup.sh [--with-tansu] [--deploy-tools-only] [--help]

Prepares this host for 'cargo build' / 'cargo test' of fraudgraph (run it from anywhere):
  1. Debian packages: ${APT_PACKAGES[*]}
     (apt-get update && apt-get install only when one is missing; sudo when not root).
  2. A Python ${PYTHON_VERSION} venv at \$FRAUDGRAPH_CACHE/venv-torch-${TORCH_VERSION}
     (FRAUDGRAPH_CACHE defaults to ~/.cache/fraudgraph; now: ${CACHE})
     with: ${PIP_REQUIREMENTS[*]}
     torch's libtorch is what tch/torch-sys link against, its cmake (>= ${CMAKE_MIN}) is what
     lightgbm3-sys needs. A marker file in the venv records the installed requirement set, so
     a re-run installs nothing when it is satisfied.
  3. <repo>/.venv: a symlink to that venv (created or repaired). If .venv is a real
     directory it is left in place and used instead. .cargo/config.toml points LIBTORCH
     and CMAKE into .venv.
  4. With --with-tansu: the tansu ${TANSU_VERSION} Kafka-protocol broker used by tests, at
     ${TANSU_ROOT}/bin/tansu (built with 'cargo install' when missing: about 10 minutes
     on 2 cores).
  5. Checks that .venv's torch is ${TORCH_VERSION} and its cmake is >= ${CMAKE_MIN}.

With --deploy-tools-only it does only this instead (what deploy/check.sh needs; no torch):
  6. \$FRAUDGRAPH_CACHE/deploy-tools (now: ${DEPLOY_TOOLS}):
     bin/kubectl and bin/promtool, extracted with 'apt-get download' + 'dpkg-deb -x' from
     Debian's ${DEPLOY_DEBS[*]} packages (nothing is installed, no service starts),
     and venv/ (Python ${PYTHON_VERSION}) with: ${DEPLOY_PIP_REQUIREMENTS[*]}
     Both are kept once present (a marker records the pip requirement set).

Options:
  --with-tansu         also ensure the tansu broker binary (step 4)
  --deploy-tools-only  only ensure deploy/check.sh's tools (step 6)
  -h, --help           show this help

Environment:
  FRAUDGRAPH_CACHE   cache directory (default: ~/.cache/fraudgraph)
EOF
}

log() { printf '[setup] %s\n' "$*" >&2; }
die() {
    printf '[setup] ERROR: %s\n' "$*" >&2
    exit 1
}

WITH_TANSU=0
DEPLOY_TOOLS_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --with-tansu) WITH_TANSU=1 ;;
        --deploy-tools-only) DEPLOY_TOOLS_ONLY=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $arg"
            ;;
    esac
done

START=$SECONDS
CHANGED=()

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (not root and no sudo)"
    fi
}

# --- 1. Debian packages -------------------------------------------------------------------
ensure_apt_packages() {
    if ! command -v dpkg >/dev/null 2>&1; then
        log "no dpkg (not Debian-like): make sure these are installed: ${APT_PACKAGES[*]}"
        return
    fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt packages: all present (${APT_PACKAGES[*]})"
        return
    fi
    log "apt packages: installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2
    CHANGED+=("apt: ${missing[*]}")
}

# --- 2. Python venv -----------------------------------------------------------------------
# Prints the path of a working Python $PYTHON_VERSION interpreter, or nothing.
find_python() {
    local candidate
    for candidate in "python${PYTHON_VERSION}" python3; do
        # pyenv shims exist even when the version behind them is not installed: run it.
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '${PYTHON_VERSION}' else 1)" \
                >/dev/null 2>&1; then
            command -v "$candidate"
            return
        fi
    done
}

venv_python_ok() {
    local venv=$1
    [[ -x $venv/bin/python ]] &&
        "$venv/bin/python" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '${PYTHON_VERSION}' else 1)" \
            >/dev/null 2>&1
}

requirements_stamp() {
    printf 'python=%s\n' "$PYTHON_VERSION"
    printf '%s\n' "${PIP_REQUIREMENTS[@]}"
}

# Ensures the venv at $1 exists (unless $2 = existing) and holds PIP_REQUIREMENTS.
ensure_venv() {
    local venv=$1 mode=$2
    if ! venv_python_ok "$venv"; then
        if [[ $mode == existing ]]; then
            die "$venv is a real directory but not a working Python ${PYTHON_VERSION} venv; fix or remove it"
        fi
        if [[ -e $venv ]]; then
            [[ -f $venv/pyvenv.cfg ]] || die "$venv exists and is not a venv; move it away"
            log "venv: $venv is broken or not Python ${PYTHON_VERSION}; recreating it"
            rm -rf -- "$venv"
        fi
        local python
        python=$(find_python)
        [[ -n $python ]] || die "Python ${PYTHON_VERSION} not found: neither python${PYTHON_VERSION} nor python3 is ${PYTHON_VERSION} (with pyenv: pyenv install ${PYTHON_VERSION})"
        log "venv: creating $venv with $python"
        mkdir -p "$(dirname "$venv")"
        "$python" -m venv "$venv"
        CHANGED+=("venv created: $venv")
    fi

    local marker=$venv/$MARKER_NAME
    if [[ -f $marker ]] && [[ $(cat "$marker") == "$(requirements_stamp)" ]]; then
        log "venv: requirements satisfied ($venv, marker $MARKER_NAME)"
        return
    fi
    log "venv: installing ${PIP_REQUIREMENTS[*]} into $venv (torch with its CUDA libraries is several GB; this takes a while)"
    rm -f -- "$marker"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "${PIP_REQUIREMENTS[@]}" >&2
    requirements_stamp >"$marker"
    CHANGED+=("pip: ${PIP_REQUIREMENTS[*]}")
}

# --- 3. <repo>/.venv ----------------------------------------------------------------------
# Sets VENV to the venv the repo uses.
ensure_repo_venv() {
    local link=$REPO_ROOT/.venv
    if [[ -d $link && ! -L $link ]]; then
        log ".venv: real directory, leaving it in place and using it"
        VENV=$link
        ensure_venv "$VENV" existing
        return
    fi
    VENV=$CACHED_VENV
    ensure_venv "$VENV" cached
    if [[ -L $link ]]; then
        if [[ $(readlink -- "$link") == "$VENV" ]]; then
            log ".venv: symlink to $VENV"
            return
        fi
        log ".venv: repointing symlink from $(readlink -- "$link") to $VENV"
        ln -sfn -- "$VENV" "$link"
        CHANGED+=(".venv symlink repointed")
    elif [[ -e $link ]]; then
        die "$link exists and is neither a directory nor a symlink; move it away"
    else
        log ".venv: creating symlink to $VENV"
        ln -s -- "$VENV" "$link"
        CHANGED+=(".venv symlink created")
    fi
}

# --- 4. tansu -----------------------------------------------------------------------------
ensure_tansu() {
    local bin=$TANSU_ROOT/bin/tansu
    if [[ -x $bin ]]; then
        log "tansu: present ($bin)"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "tansu: cargo not found (install Rust first)"
    log "tansu: building tansu ${TANSU_VERSION} into $TANSU_ROOT (about 10 minutes on 2 cores)"
    # Run outside the repo so its .cargo/config.toml does not apply; give aws-lc-sys and
    # friends the venv's cmake in case they want one.
    (cd "$CACHE" && CMAKE=$VENV/bin/cmake cargo install tansu --version "$TANSU_VERSION" \
        --locked --features dynostore --root "$TANSU_ROOT") >&2
    [[ -x $bin ]] || die "tansu: cargo install finished but $bin is missing"
    CHANGED+=("tansu ${TANSU_VERSION} built")
}

# --- 6. deploy/check.sh's tools -------------------------------------------------------------
# Downloads the Debian packages named in $@ into the current directory, updating the package
# lists once when they are missing or stale.
apt_download() {
    if apt-get download "$@" >apt-download.log 2>&1; then
        return
    fi
    log "deploy tools: 'apt-get download $*' failed; updating the package lists and retrying"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    apt-get download "$@" >apt-download.log 2>&1 || {
        cat apt-download.log >&2
        die "deploy tools: 'apt-get download $*' failed"
    }
}

ensure_deploy_tools() {
    local bin=$DEPLOY_TOOLS/bin venv=$DEPLOY_TOOLS/venv
    if [[ -x $bin/kubectl && -x $bin/promtool ]]; then
        log "deploy tools: kubectl and promtool present ($bin; from $(tr '\n' ' ' <"$DEPLOY_TOOLS/debs.txt" 2>/dev/null))"
    else
        command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
            die "deploy tools: need apt-get and dpkg-deb (Debian) to fetch ${DEPLOY_DEBS[*]}; elsewhere set FRAUDGRAPH_KUBECTL and FRAUDGRAPH_PROMTOOL for deploy/check.sh"
        local tmp
        tmp=$(mktemp -d)
        log "deploy tools: fetching ${DEPLOY_DEBS[*]} (Debian packages, extracted into $bin)"
        (
            cd "$tmp"
            apt_download "${DEPLOY_DEBS[@]}"
            mkdir root
            for deb in ./*.deb; do dpkg-deb -x "$deb" root; done
        )
        mkdir -p "$bin"
        install -m 0755 "$tmp/root/usr/bin/kubectl" "$bin/kubectl.new"
        install -m 0755 "$tmp/root/usr/bin/promtool" "$bin/promtool.new"
        mv -f "$bin/kubectl.new" "$bin/kubectl"
        mv -f "$bin/promtool.new" "$bin/promtool"
        (cd "$tmp" && ls ./*.deb | sed 's|^\./||') >"$DEPLOY_TOOLS/debs.txt"
        rm -rf -- "$tmp"
        CHANGED+=("deploy tools: $(tr '\n' ' ' <"$DEPLOY_TOOLS/debs.txt")")
    fi

    local marker=$venv/$MARKER_NAME stamp
    stamp=$(printf 'python=%s\n' "$PYTHON_VERSION"; printf '%s\n' "${DEPLOY_PIP_REQUIREMENTS[@]}")
    if venv_python_ok "$venv" && [[ -f $marker ]] && [[ $(cat "$marker") == "$stamp" ]]; then
        log "deploy tools: venv requirements satisfied ($venv)"
    else
        if ! venv_python_ok "$venv"; then
            local python
            python=$(find_python)
            [[ -n $python ]] || die "Python ${PYTHON_VERSION} not found (needed for $venv)"
            rm -rf -- "$venv"
            "$python" -m venv "$venv"
        fi
        log "deploy tools: installing ${DEPLOY_PIP_REQUIREMENTS[*]} into $venv"
        rm -f -- "$marker"
        "$venv/bin/python" -m pip install --disable-pip-version-check -q "${DEPLOY_PIP_REQUIREMENTS[@]}" >&2
        printf '%s\n' "$stamp" >"$marker"
        CHANGED+=("deploy tools venv: ${DEPLOY_PIP_REQUIREMENTS[*]}")
    fi

    local kubectl_version promtool_version
    kubectl_version=$("$bin/kubectl" version --client 2>/dev/null | sed -n 's/.*GitVersion:"\([^"]*\)".*/\1/p')
    promtool_version=$("$bin/promtool" --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p')
    [[ -n $kubectl_version ]] || die "deploy tools: $bin/kubectl does not run"
    [[ -n $promtool_version ]] || die "deploy tools: $bin/promtool does not run"
    "$venv/bin/python" -c 'import kubernetes_validate, yaml' ||
        die "deploy tools: $venv lacks kubernetes_validate or yaml"
    log "check: kubectl $kubectl_version, promtool $promtool_version, kubernetes-validate $("$venv/bin/python" -c 'import kubernetes_validate.version as v; print(v.__version__)')"
}

# --- 5. checks ----------------------------------------------------------------------------
verify() {
    local py=$REPO_ROOT/.venv/bin/python cmake=$REPO_ROOT/.venv/bin/cmake
    local torch_version cmake_version
    torch_version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) ||
        die "check: '$py -c \"import torch\"' failed"
    [[ $torch_version == "$TORCH_VERSION" || $torch_version == "$TORCH_VERSION"+* ]] ||
        die "check: .venv has torch $torch_version, need ${TORCH_VERSION}"
    local torch_lib=$REPO_ROOT/.venv/lib/python${PYTHON_VERSION}/site-packages/torch/lib
    [[ -f $torch_lib/libtorch_cpu.so ]] ||
        die "check: $torch_lib/libtorch_cpu.so missing (.cargo/config.toml points LIBTORCH there)"
    local flavour=cpu-only
    [[ -f $torch_lib/libtorch_cuda.so ]] && flavour="with libtorch_cuda.so"
    log "check: torch $torch_version ($flavour)"

    cmake_version=$("$cmake" --version 2>/dev/null | sed -n '1s/^cmake version \([0-9][0-9.]*\).*/\1/p') ||
        die "check: '$cmake --version' failed"
    [[ -n $cmake_version ]] || die "check: could not read the version of $cmake"
    if [[ $(printf '%s\n%s\n' "$CMAKE_MIN" "$cmake_version" | sort -V | head -n1) != "$CMAKE_MIN" ]]; then
        die "check: .venv cmake is $cmake_version, need >= ${CMAKE_MIN}"
    fi
    log "check: cmake $cmake_version"
    if [[ $WITH_TANSU -eq 1 ]]; then
        log "check: $("$TANSU_ROOT/bin/tansu" --version 2>/dev/null | head -n1 || echo 'tansu (version unknown)')"
    fi
}

mkdir -p "$CACHE"
# One setup at a time per cache (two concurrent pip installs into one venv break it).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.setup.lock"
    if ! flock -n 9; then
        log "waiting for another deploy/setup.sh using $CACHE"
        flock 9
    fi
fi

log "repo $REPO_ROOT, cache $CACHE"
if [[ $DEPLOY_TOOLS_ONLY -eq 1 ]]; then
    ensure_deploy_tools
    if [[ ${#CHANGED[@]} -eq 0 ]]; then
        log "done in $((SECONDS - START))s: nothing to change"
    else
        log "done in $((SECONDS - START))s; changed:"
        for item in "${CHANGED[@]}"; do log "  - $item"; done
    fi
    exit 0
fi
ensure_apt_packages
VENV=
ensure_repo_venv
if [[ $WITH_TANSU -eq 1 ]]; then
    ensure_tansu
fi
verify

if [[ ${#CHANGED[@]} -eq 0 ]]; then
    log "done in $((SECONDS - START))s: nothing to change"
else
    log "done in $((SECONDS - START))s; changed:"
    for item in "${CHANGED[@]}"; do log "  - $item"; done
fi
if [[ $WITH_TANSU -eq 1 ]]; then
    log "tansu: $TANSU_ROOT/bin/tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/"
fi
