#!/usr/bin/env bash
# Builds what a GPU session carries to a lent device machine (see benchmarks/device/README.md):
#   data/devray.tar.xz  Ray and omegaconf for the device's Python 3.12, as an unpacked
#                       site folder (the Ray wheel alone is over the 64 MiB carry limit;
#                       without its Java jars, dashboard front end, tests and libraries
#                       infer-run does not import it packs to about 29 MB)
#   data/devphotos/     datagen's 16 source photos, laid out as the two packages ship them
#                       (the device's scikit-image may not hold its sample images)
# Run from the repository root, with the dev venv built: bash benchmarks/device/bundle.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ray_version=$("$python" -c 'import ray; print(ray.__version__)')
omegaconf_version=$("$python" -c 'import omegaconf; print(omegaconf.__version__)')
# The device already has everything else infer-run needs (torch, torchvision, timm,
# pyarrow, pluggy, pandas, pillow, psutil, nvidia-ml-py, aiohttp, fsspec); these are
# Ray's and omegaconf's requirements that it lacks.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work/wheels" \
  "ray==$ray_version" "omegaconf==$omegaconf_version" antlr4-python3-runtime==4.13.2 \
  jsonschema jsonschema-specifications referencing rpds-py
"$python" -m pip install --quiet --no-deps --no-compile --target "$work/devsite" \
  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
  --only-binary=:all: "$work"/wheels/*.whl
rm -rf "$work"/devsite/ray/{jars,rllib,llm,serve,tune,train,dashboard/client/build}
find "$work/devsite" -name tests -type d -prune -exec rm -rf {} +
mkdir -p data
tar -cJf data/devray.tar.xz -C "$work" devsite

photos=data/devphotos
rm -rf "$photos"
"$python" - "$photos" <<'PY'
import shutil
import sys
from pathlib import Path

from framework.datagen_photos import source_paths

root = Path(sys.argv[1])
for path in source_paths().values():
    package = "skimage" if "skimage" in path.parts else "matplotlib"
    inside = path.parts[path.parts.index(package) + 1 :]
    target = root.joinpath(package, *inside)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
for package in ("skimage", "matplotlib"):
    (root / package / "__init__.py").touch()
PY
du -sh data/devray.tar.xz "$photos"
