#!/usr/bin/env bash
# The install shapes other than the README's --no-build-isolation line, each in a fresh virtual
# environment that has only torch: (b) `pip wheel` of the checkout, then that wheel installed;
# (a) `pip install <checkout>` with pip's default build isolation. Neither builds the C++ kernels
# at install time (the isolated build has no torch), so the first import must build them once into
# the cache and report them active, an op must agree with the reference, and a second import must
# build nothing. The cache is shared by (b) and (a): (a)'s first import is a cache hit.
#
#   .ci/install_shapes.sh [TORCH_SPEC]      # default torch==2.13.0
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TORCH_SPEC="${1:-torch==2.13.0}"
WORK="$(mktemp -d /tmp/sparseticket-install-shapes.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export SPARSETICKET_CACHE="$WORK/cache"
# the checkout's files as git sees them (tracked and untracked, not ignored): no build/ leftovers
mkdir "$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard | (cd "$REPO" && xargs -0 tar -cf - --) \
  | tar -xf - -C "$WORK/src"
SRC="$WORK/src"

python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
source "$WORK/venv/bin/activate"
python -m pip install --quiet --upgrade pip
pip install --quiet "$TORCH_SPEC"

check() {  # $1: what was installed. Imports twice from a folder without the sources.
  local label="$1" first second
  cd "$WORK"
  first="$(python - <<'PY' 2>&1
import torch
import sparseticket
from sparseticket import reference
info = sparseticket.backends()
assert info["cpp"], f"C++ kernels inactive: {info['cpp_reason']}"
values = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
assert torch.equal(sparseticket.kth_value(values, 1234), reference.kth_value([values], 1234))
print("kernels active, kth_value equals the reference")
PY
)"
  echo "$first" | sed "s/^/[$label, first import] /"
  echo "$first" | grep -q "kernels active" || { echo "[$label] FAILED"; exit 1; }
  second="$(python -c "import sparseticket; assert sparseticket.backends()['cpp']; print('active')" 2>&1)"
  echo "$second" | sed "s/^/[$label, second import] /"
  if echo "$second" | grep -q "building"; then echo "[$label] the second import built again"; exit 1; fi
  sparseticket info | sed "s/^/[$label] /"
}

start=$SECONDS
pip wheel --quiet --no-deps -w "$WORK/dist" "$SRC"
ls "$WORK/dist"
pip install --quiet "$WORK"/dist/sparseticket-*.whl
check "wheel"
pip uninstall --quiet -y sparseticket
pip install --quiet "$SRC"
check "pip install <checkout>"
echo "install shapes: wheel and isolated install both run the C++ kernels ($((SECONDS - start)) s after torch)"
