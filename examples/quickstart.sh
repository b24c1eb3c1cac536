#!/usr/bin/env bash
# The whole MSN pipeline on built-in synthetic data, with small settings (minutes on 2 CPU
# cores). Run from the repository root: `make demo` (it sets up .venv first), or
# `bash examples/quickstart.sh` with `msn` on PATH. Everything goes to ./demo (or $DEMO).
set -euo pipefail
DEMO=${DEMO:-demo}
mkdir -p "$DEMO"

msn synth "$DEMO/data" --slides 4 --size 4096 --seed 0
msn tile --manifest "$DEMO/data/manifest.csv" --levels 16x 4x 1x --patch-size 256 \
    --store "$DEMO/store.zarr"
msn info "$DEMO/store.zarr"
