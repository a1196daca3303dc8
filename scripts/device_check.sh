#!/usr/bin/env bash
# Run the tests marked `device` (every method's tiny path on each accelerator, float32 and half
# precision) on a machine that has torch with CUDA but no network.
#
# The project's other dependencies travel as a folder of wheels. On a machine WITH network, in
# the repository's root (Python 3.12 x86_64 wheels; change --python-version to the target's):
#     scripts/device_check.sh --download .whl
# then copy the repository (with .whl/) to the accelerator machine and run there:
#     scripts/device_check.sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."

# What a CUDA image with torch, transformers, accelerate, peft, opencv, imageio, scipy,
# scikit-learn, typer, rich and pytest usually lacks (pinned to what the tests here use; 9 MB).
# imageio-ffmpeg (68 MB) is left out: the device tests write no video, and anima.io imports it
# only to encode or decode one.
WHEELS=(diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5)

if [[ "${1:-}" == "--download" ]]; then
    dest=${2:-.whl}
    for wheel in "${WHEELS[@]}"; do
        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux_2_28_x86_64 --platform any -d "$dest" "$wheel"
    done
    exit 0
fi

wheels=${1:-.whl}
site=${TMPDIR:-/tmp}/anima-device-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
export PYTHONPATH="$PWD/src:$site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -m device -p no:cacheprovider -q -rs tests/test_device.py "${@:2}"
