# Shared set-up for scripts/test and scripts/demo: sourced, not run.
# Installs what is missing (Debian/Ubuntu packages, a virtual environment with tifffs)
# and does nothing when everything is already there.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TIFFFS_VENV:-$REPO/.venv}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "tifffs: need root (or sudo) to run: $*" >&2; return 1
  fi
}

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

# ensure_packages PACKAGE... : apt-get install those that are not installed yet.
ensure_packages() {
  local missing=()
  for package in "$@"; do
    is_installed "$package" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "tifffs: please install: ${missing[*]} (no apt-get on this system)" >&2
    return 1
  fi
  echo "tifffs: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# ensure_base PACKAGE... : FUSE (fusermount and libfuse 2, which fusepy loads), venv, more.
ensure_base() {
  local libfuse=libfuse2
  if is_installed libfuse2t64 || apt-cache show libfuse2t64 >/dev/null 2>&1; then
    libfuse=libfuse2t64  # the name on newer Ubuntu
  fi
  ensure_packages fuse3 "$libfuse" python3-venv "$@"
}

# ensure_venv EXTRAS : a venv with tifffs installed (editable) with EXTRAS, e.g. "[test]".
ensure_venv() {
  local extras=${1:-}
  local stamp="$VENV/.tifffs-installed$extras-$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  if [ ! -x "$VENV/bin/python" ]; then
    echo "tifffs: creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  echo "tifffs: installing tifffs$extras into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO$extras"
  touch "$stamp"
}
