# Sourced by scripts/test and scripts/dev: make sure uv and the project's environment exist.
# Everything comes from PyPI through the lockfile (uv.lock); nothing is installed system-wide
# except uv itself when it is missing.

UV_VERSION=0.13.9

die() { echo "imagegate: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 (>= 3.11) is not on PATH: install it and run this again"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 is needed, found $(python3 --version 2>&1)"

if command -v uv >/dev/null; then
  UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  UV=(python3 -m uv)
else
  echo "imagegate: installing uv $UV_VERSION from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" \
    || die "could not install uv with pip: check that PyPI is reachable"
  UV=(python3 -m uv)
fi

"${UV[@]}" sync --frozen --quiet || die "could not install the locked dependencies (uv sync --frozen)"
command -v go >/dev/null \
  || die "no Go toolchain on PATH: install Go >= 1.26 (the test bed is built from Go modules)"

run() { "${UV[@]}" run --frozen --quiet "$@"; }
