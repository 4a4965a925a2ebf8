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

# apt_update_once : refresh the package lists, at most once per script (a bare machine
# may have none, and then apt-cache knows no package).
APT_UPDATED=
apt_update_once() {
  [ -n "$APT_UPDATED" ] && return 0
  as_root apt-get update -qq
  APT_UPDATED=1
}

# apt_has PACKAGE : the package can be installed (the lists are refreshed once if needed).
apt_has() {
  apt-cache show "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null || return 1
  apt_update_once && apt-cache show "$1" >/dev/null 2>&1
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
  apt_update_once
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# ensure_base PACKAGE... : FUSE (fuse3: fusermount, and libfuse 3, which mfusepy loads for
# --libfuse 3; libfuse 2, which fusepy loads), venv, more.
ensure_base() {
  local libfuse=libfuse2
  if is_installed libfuse2t64 || { ! is_installed libfuse2 && apt_has libfuse2t64; }; then
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
