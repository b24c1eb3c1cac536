#!/usr/bin/env bash
# The whole MSN pipeline on built-in synthetic data, small settings (about 9 minutes on 2 CPU
# cores). Run from the repository root: `make demo` (it sets up .venv first), or
# `bash examples/quickstart.sh` with `msn` on PATH. Everything goes to ./demo (or $DEMO).
#
# Small-data settings (README, "The demo"): width 0.25, batch 16, and a 10x learning rate for
# the Mem-RMs, which get only ~40 steps here (the paper's 1e-4 assumes thousands of patches).
# The tests run this script with tiny values of the variables below.
set -euo pipefail
DEMO=${DEMO:-demo}
SIZE=${SIZE:-4096}            # side of each synthetic slide
PATCH=${PATCH:-256}           # patch side
WIDTH=${WIDTH:-0.25}          # channel width of the BiSeNet backbone
BATCH=${BATCH:-16}
META_EPOCHS=${META_EPOCHS:-30}
EPOCHS=${EPOCHS:-10}          # train-memrm and train-fusion
S="--store $DEMO/store.zarr"
C="--checkpoints $DEMO/checkpoints"
mkdir -p "$DEMO"

msn synth "$DEMO/data" --slides 4 --size "$SIZE" --seed 0
msn tile --manifest "$DEMO/data/manifest.csv" --levels 16x 4x 1x --patch-size "$PATCH" $S
msn info "$DEMO/store.zarr"

msn train-meta $S $C --width "$WIDTH" --batch-size "$BATCH" --epochs "$META_EPOCHS"
# Table 3's "Meta-branch" row: the meta-branch alone, applied to X1, X2 and X3.
msn evaluate $S $C --split test --method "Meta-branch" --json "$DEMO/meta.json"

msn train-memrm $S $C --batch-size "$BATCH" --epochs "$EPOCHS" --lr 1e-3
msn train-fusion $S $C --batch-size "$BATCH" --epochs "$EPOCHS"
msn evaluate $S $C --split test --method "MSN" --json "$DEMO/msn.json" --figures "$DEMO/figures"
msn evaluate --compare "$DEMO/meta.json" "$DEMO/msn.json" --markdown "$DEMO/table.md"

# The test slide, end to end: mask, QuPath GeoJSON, overlay, and its slide-level score.
TEST=$(awk -F, '$3 == "test" { print $1; exit }' "$DEMO/data/manifest.csv")
STEM=${TEST%.*}
msn predict "$DEMO/data/$TEST" $C --out "$DEMO/mask.tif" --geojson "$DEMO/mask.geojson" \
    --overlay "$DEMO/overlay.png"
msn evaluate --pred "$DEMO/mask.tif" --truth "$DEMO/data/$STEM.geojson" \
    --slide "$DEMO/data/$TEST" --json "$DEMO/slide.json"
echo "demo finished: $DEMO/mask.tif $DEMO/mask.geojson $DEMO/overlay.png $DEMO/table.md"
