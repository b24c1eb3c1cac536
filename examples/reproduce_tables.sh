#!/usr/bin/env bash
# Rebuild the MSN paper's Tables 1-5 and Fig. 5/6 with msn: every comparison system and
# ablation is trained with msn's own commands, scored on the test split with `msn evaluate`,
# and printed side by side with `msn evaluate --compare`, in the paper's layout.
#
#   bash examples/reproduce_tables.sh               small settings, synthetic data (CPU)
#   bash examples/reproduce_tables.sh --paper       the paper's settings (for a GPU)
#   bash examples/reproduce_tables.sh --paper --store bach.zarr --isic-store isic.zarr
#   bash examples/reproduce_tables.sh --seeds 3     every cell: mean ± sd over seeds 0, 1, 2
#
# Options: --paper; --store S (WSI store, levels 16x 4x 1x, for Tables 1, 3, 4, 5; default:
# synthetic slides); --isic-store S (photo store, levels 4x 2x 1x, for Table 2 and Table 5's
# ISIC half; default: synthetic photographs when --store is not given, else skipped);
# --out DIR (default: ./tables, or $OUT); --jobs N (independent trainings run at once,
# default 1, or $JOBS); --seeds N (default 1, or $SEEDS: every training runs with --seed 0 ..
# N-1 and every cell is the mean ± sample sd over the seeds; one seed prints plain numbers);
# --tables LIST (default 1,2,3,4,5, or $TABLES: build only these tables and train only what
# they need; Fig. 5 comes with Table 3, Fig. 6 with Table 5). Each step's output goes to
# DIR/logs/STEP.log. Seed 0 keeps its checkpoints, scores and logs in DIR/ckpt, DIR/results
# and DIR/logs, seed S in DIR/seedS/. Every msn step resumes, so rerunning the script after a
# failure continues where it stopped, and rerunning with a larger --seeds (or other --tables)
# trains only what is new; other settings need another --out (seeds and tables are not
# settings). The variables below override the settings (the tests run the script with tiny
# values).
#
# What each row is (README, "The paper's tables"):
#   Table 1/2  baselines: train-meta --backbone B --input x1|x2|x3, on the training set.
#              AWMF-CNN: train-fusion --experts (the baselines after PRE_EPOCHS) --method awmf
#              --alternate, ALT_EPOCHS; "(fixed)": its fusion alone, FIXED_EPOCHS, on the
#              finished baselines; both on the training set, like the baselines.
#              MSN: the X3 baseline is the meta-branch; train-memrm + train-fusion on
#              sub-train; ∗MSN: the same on the training set (--split train).
#   Table 3    Meta-branch / Multi-branch: train-fusion --experts (the X3 baseline three
#              times / the three baselines) --method meta --holdout-from MSN†: fitted on
#              the sub-train patches MSN†'s own fusion fits on, for as many epochs. S2′ and
#              S3′ are also scored against Y1 (columns X2@Y1, X3@Y1).
#   Table 4    train-memrm --gap-layers nongap.
#   Table 5    train-fusion --method conv | awmf | meta on MSN†'s fixed branches, all from
#              the same start (--fusion-init average); "MSN (pseudo σ)": Meta-FM with
#              --sigma pseudo, its σ per patch from pseudo-labels at test time.
#   Fig. 5/6   sub-train mIoU per epoch (the paper's Fig. 6 is on its sub-training set): every
#              stage validates on sub-train, never on the test split.
set -euo pipefail
NAME=reproduce_tables.sh
die() { echo "$NAME: error: $*" >&2; exit 2; }

PAPER=0
STORE=""
ISIC_STORE=""
OUT=${OUT:-tables}
JOBS=${JOBS:-1}
SEEDS=${SEEDS:-1}
TABLES=${TABLES:-1,2,3,4,5}
TABLES_GIVEN=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --paper) PAPER=1 ;;
        --store) STORE=${2:?--store needs a path}; shift ;;
        --isic-store) ISIC_STORE=${2:?--isic-store needs a path}; shift ;;
        --out) OUT=${2:?--out needs a folder}; shift ;;
        --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
        --seeds) SEEDS=${2:?--seeds needs a number}; shift ;;
        --tables) TABLES=${2:?--tables needs a list}; TABLES_GIVEN=1; shift ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
command -v msn > /dev/null || die "msn is not on PATH"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs $JOBS: need a whole number >= 1"
[[ $SEEDS =~ ^[1-9][0-9]*$ ]] || die "--seeds $SEEDS: need a whole number >= 1"
[[ $TABLES =~ ^[1-5](,[1-5])*$ ]] || die "--tables $TABLES: need table numbers 1-5, e.g. 3,4"
want() {  # want T...: is one of these tables asked for?
    local t
    for t in "$@"; do [[ ,$TABLES, != *,$t,* ]] || return 0; done
    return 1
}

if [[ $PAPER == 1 ]]; then  # Section 3.2: patch 256, batch 32, Adam 1e-4, 30 / 10 / 10 epochs
    : "${SIZE:=8192}" "${SLIDES:=6}" "${ISIC_SIZE:=4096}" "${PATCH:=256}" "${WIDTH:=1.0}"
    : "${BATCH:=32}" "${LR:=1e-4}" "${META_EPOCHS:=30}" "${EPOCHS:=10}"
    : "${PRE_EPOCHS:=10}" "${ALT_EPOCHS:=20}" "${FIXED_EPOCHS:=30}"
else  # a CPU: small images, patches and network, lr 1e-3 for few steps, the paper's ratios
    : "${SIZE:=2048}" "${SLIDES:=4}" "${ISIC_SIZE:=1024}" "${PATCH:=128}" "${WIDTH:=0.25}"
    : "${BATCH:=16}" "${LR:=1e-3}" "${META_EPOCHS:=12}" "${EPOCHS:=5}"
    : "${PRE_EPOCHS:=4}" "${ALT_EPOCHS:=8}" "${FIXED_EPOCHS:=12}"
fi
BACKBONES=${BACKBONES:-unet pspnet deeplabv3plus bisenet}  # Table 1's rows
ISIC_BACKBONES=${ISIC_BACKBONES:-deeplabv3plus bisenet}     # Table 2's rows
has() { [[ " $1 " == *" $2 "* ]]; }
has "$BACKBONES" bisenet || BACKBONES="$BACKBONES bisenet"  # MSN†: Tables 1 and 3-5
has "$ISIC_BACKBONES" bisenet || ISIC_BACKBONES="$ISIC_BACKBONES bisenet"
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-}  # DataLoader processes per msn step (empty: msn's default)
(( PRE_EPOCHS <= META_EPOCHS )) || die "PRE_EPOCHS ($PRE_EPOCHS) > META_EPOCHS ($META_EPOCHS)"
if [[ -n $STORE && -z $ISIC_STORE && $TABLES_GIVEN == 1 ]] && want 2; then
    die "--tables $TABLES: Table 2 needs --isic-store when --store is given"
fi
# A rerun continues in the same --out only with the same settings (else copies of earlier
# checkpoints and scores would be mixed with new ones). Seeds and tables are not settings.
SETTINGS="size=$SIZE slides=$SLIDES isic_size=$ISIC_SIZE patch=$PATCH width=$WIDTH"
SETTINGS+=" batch=$BATCH lr=$LR epochs=$META_EPOCHS/$EPOCHS/$PRE_EPOCHS/$ALT_EPOCHS/$FIXED_EPOCHS"
SETTINGS+=" backbones=${BACKBONES// /+} isic_backbones=${ISIC_BACKBONES// /+}"
SETTINGS+=" store=$STORE isic_store=$ISIC_STORE val_split=sub-train"
if [[ -f "$OUT/settings.txt" ]] && [[ $(< "$OUT/settings.txt") != "$SETTINGS" ]]; then
    die "$OUT was made with other settings ($OUT/settings.txt); use another --out"
fi
mkdir -p "$OUT/ckpt" "$OUT/results" "$OUT/tables" "$OUT/logs"
echo "$SETTINGS" > "$OUT/settings.txt"
# Every stage validates on sub-train (Fig. 5/6's curves), never on the test split.
TRAIN0=(--batch-size "$BATCH" --lr "$LR" --device "$DEVICE" --val-split sub-train)
EVAL=(--device "$DEVICE")
if [[ -n $WORKERS ]]; then TRAIN0+=(--workers "$WORKERS"); EVAL+=(--workers "$WORKERS"); fi
if (( JOBS > 1 )); then  # share the cores between the trainings that run at once
    CORES=$(getconf _NPROCESSORS_ONLN 2> /dev/null || echo 1)
    TRAIN0+=(--threads "$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))")
fi
dir_of() { if (( $1 == 0 )); then echo "$OUT"; else echo "$OUT/seed$1"; fi; }
at_seed() {  # at_seed S: the steps launched next train with --seed S, in S's folders
    local d
    d=$(dir_of "$1")
    C="$d/ckpt"    # checkpoints
    R="$d/results" # evaluate --json scores
    L="$d/logs"    # each step's output
    TAG=""         # before a step's name in the progress lines
    if (( $1 > 0 )); then TAG="seed$1/"; fi
    mkdir -p "$C" "$R" "$L"
    TRAIN=("${TRAIN0[@]}" --seed "$1")
}

# -- running steps: each in the background, at most JOBS at once, its output in logs/ --------
PIDS=()
STEPS=()
LOGFILES=()
reap() {  # wait for the oldest running step; stop everything if it failed
    local pid=${PIDS[0]} step=${STEPS[0]} log=${LOGFILES[0]}
    PIDS=("${PIDS[@]:1}")
    STEPS=("${STEPS[@]:1}")
    LOGFILES=("${LOGFILES[@]:1}")
    if wait "$pid"; then
        echo "== $(date +%T) $step: done"
    else
        echo "$NAME: error: step $step failed; the end of $log:" >&2
        tail -n 15 "$log" >&2
        for pid in "${PIDS[@]}"; do  # the other running steps, and their msn processes
            pkill -P "$pid" 2> /dev/null || true
            kill "$pid" 2> /dev/null || true
        done
        exit 1
    fi
}
run() {  # run STEP FUNCTION ARGS...: at the current seed, its output in that seed's logs/
    local step=$TAG$1 log="$L/$1.log"
    shift
    echo "== $(date +%T) $step: started"
    ( "$@" ) > "$log" 2>&1 &
    PIDS+=("$!")
    STEPS+=("$step")
    LOGFILES+=("$log")
    (( ${#PIDS[@]} < JOBS )) || reap
}
join() { while (( ${#PIDS[@]} > 0 )); do reap; done; }

# -- what the steps do ----------------------------------------------------------------------
label_of() {
    case $1 in
        unet) echo "UNet" ;; pspnet) echo "PSPNet" ;; deeplabv3plus) echo "DeepLab-V3+" ;;
        bisenet) echo "BiSeNet" ;; *) echo "$1" ;;
    esac
}
mark_of() { case $1 in bisenet) echo "†" ;; unet) echo "‡" ;; *) echo "($1)" ;; esac; }
copy() {  # copy FROM TO [SUBFOLDER to leave out]: a checkpoint directory, once
    [[ -d $2 ]] && return
    rm -rf "$2.tmp"
    cp -r "$1" "$2.tmp"
    [[ -z ${3:-} ]] || rm -rf "$2.tmp/$3"
    mv "$2.tmp" "$2"
}

# evaluate NAME LABEL STORE [OPTIONS]: checkpoint NAME's test scores as results/NAME.json
# (skipped when the JSON is newer than every weight file of that checkpoint).
evaluate() {
    local json="$R/$1.json"
    if [[ -s $json ]] && [[ -z $(find "$C/$1" -name weights.pt -newer "$json") ]]; then
        return
    fi
    msn evaluate --store "$3" --checkpoints "$C/$1" --split test "${EVAL[@]}" --method "$2" \
        --json "$json" "${@:4}"
}

# baseline TAG STORE B X: train-meta of backbone B on input X, kept after PRE_EPOCHS as
# AWMF-CNN's pre-trained branch (NAME-pre), then trained on to META_EPOCHS.
baseline() {
    local name="$1-$3-$4"
    local args=(--store "$2" --checkpoints "$C/$name" --backbone "$3" --input "$4")
    args+=(--width "$WIDTH" "${TRAIN[@]}")
    msn train-meta "${args[@]}" --epochs "$PRE_EPOCHS"
    if [[ ! -d "$C/$name-pre" ]]; then
        if [[ $(wc -l < "$C/$name/meta/history.jsonl") -ne $PRE_EPOCHS ]]; then
            echo "$C/$name trained past $PRE_EPOCHS epochs before its AWMF-CNN copy was" \
                "taken; remove it and rerun" >&2
            exit 1
        fi
        copy "$C/$name" "$C/$name-pre"
    fi
    (( META_EPOCHS == PRE_EPOCHS )) || msn train-meta "${args[@]}" --epochs "$META_EPOCHS"
    evaluate "$name" "$(label_of "$3")" "$2" --outputs "$4"  # X3's would score all three
}

# msn_model STORE NAME LABEL FROM SPLIT [MEMRM OPTIONS]: MSN on FROM's meta-branch.
msn_model() {
    copy "$C/$4" "$C/$2"
    msn train-memrm --store "$1" --checkpoints "$C/$2" --split "$5" --epochs "$EPOCHS" \
        "${TRAIN[@]}" "${@:6}"
    msn train-fusion --store "$1" --checkpoints "$C/$2" --split "$5" --epochs "$EPOCHS" \
        "${TRAIN[@]}"
    evaluate "$2" "$3" "$1"
}

# fused STORE NAME LABEL EXPERTS SPLIT EPOCHS [FUSION OPTIONS]: experts and a fusion.
fused() {
    msn train-fusion --store "$1" --checkpoints "$C/$2" --experts "$4" --split "$5" \
        --epochs "$6" "${TRAIN[@]}" "${@:7}"
    evaluate "$2" "$3" "$1"
}

# refused STORE NAME LABEL FROM METHOD [FUSION OPTIONS]: another fusion on MSN FROM's fixed
# branches.
refused() {
    copy "$C/$4" "$C/$2" fusion
    msn train-fusion --store "$1" --checkpoints "$C/$2" --method "$5" --epochs "$EPOCHS" \
        "${TRAIN[@]}" "${@:6}"
    evaluate "$2" "$3" "$1"
}

experts_of() { echo "$C/$1-$2-x1$3,$C/$1-$2-x2$3,$C/$1-$2-x3$3"; }

# systems TAG STORE BACKBONES TABLE: Table 1/2's multi-branch rows (AWMF-CNN, MSN, ∗MSN),
# those the tables asked for need (MSN† also serves Tables 3-5, ∗MSN† Table 3).
systems() {
    local b m msn_also=() star_also=()
    if [[ $1 == bach ]]; then msn_also=(3 4 5); star_also=(3); else msn_also=(5); fi
    for b in bisenet unet; do
        has "$3" "$b" || continue
        m=$(mark_of "$b")
        if want "$4"; then
            run "$1-awmf-$b" fused "$2" "$1-awmf-$b" "AWMF-CNN$m" \
                "$(experts_of "$1" "$b" -pre)" train "$ALT_EPOCHS" --method awmf --alternate
            run "$1-awmf-fixed-$b" fused "$2" "$1-awmf-fixed-$b" "AWMF-CNN$m (fixed)" \
                "$(experts_of "$1" "$b" "")" train "$FIXED_EPOCHS" --method awmf
        fi
        if want "$4" || { [[ $b == bisenet ]] && want "${msn_also[@]}"; }; then
            run "$1-msn-$b" msn_model "$2" "$1-msn-$b" "MSN$m" "$1-$b-x3" sub-train
        fi
        if want "$4" || { [[ $b == bisenet ]] && want "${star_also[@]}"; }; then
            run "$1-msn-star-$b" msn_model "$2" "$1-msn-star-$b" "∗MSN$m" "$1-$b-x3" train
        fi
    done
}

# needs_baseline TAG B X: does an asked-for table use TAG's baseline of backbone B on X?
needs_baseline() {
    if [[ $1 == bach ]]; then
        want 1 && return 0
        [[ $2 == bisenet ]] || return 1
        want 3 && return 0  # Multi-branch's experts, the meta-branch, Fig. 5
        [[ $3 == x3 ]] && want 4 5  # MSN†'s meta-branch
    else
        want 2 && return 0
        [[ $2 == bisenet && $3 == x3 ]] && want 5
    fi
}

# The three rounds of independent steps (each round needs the one before), at the current seed.
round1() {  # the single-resolution baselines (and AWMF-CNN's pre-trained copies)
    local b x
    for b in $BACKBONES; do
        for x in x1 x2 x3; do
            if needs_baseline bach "$b" "$x"; then
                run "bach-$b-$x" baseline bach "$STORE" "$b" "$x"
            fi
        done
    done
    [[ -n $ISIC_STORE ]] || return 0
    for b in $ISIC_BACKBONES; do
        for x in x1 x2 x3; do
            if needs_baseline isic "$b" "$x"; then
                run "isic-$b-$x" baseline isic "$ISIC_STORE" "$b" "$x"
            fi
        done
    done
}
round2() {  # what is built on the baselines: Tables 1/2's systems, Table 4's row
    systems bach "$STORE" "$BACKBONES" 1
    if want 4; then
        run bach-nongap msn_model "$STORE" bach-nongap "on non-gap layers" bach-bisenet-x3 \
            sub-train --gap-layers nongap
    fi
    [[ -z $ISIC_STORE ]] || systems isic "$ISIC_STORE" "$ISIC_BACKBONES" 2
}
round3() {  # on MSN†'s finished branches: Table 3's expert rows (its fit set), Table 5
    local meta="$C/bach-bisenet-x3"  # MSN†'s meta-branch, serving all three inputs (Table 3)
    local tag s same=(--method meta --holdout-from "$C/bach-msn-bisenet")
    if want 3; then
        run bach-meta-branch fused "$STORE" bach-meta-branch "Meta-branch" \
            "$meta,$meta,$meta" sub-train "$EPOCHS" "${same[@]}"
        run bach-multi-branch fused "$STORE" bach-multi-branch "Multi-branch" \
            "$(experts_of bach bisenet "")" sub-train "$EPOCHS" "${same[@]}"
    fi
    want 5 || return 0
    for tag in bach isic; do
        s=$STORE
        if [[ $tag == isic ]]; then [[ -n $ISIC_STORE ]] || continue; s=$ISIC_STORE; fi
        run "$tag-t5-conv" refused "$s" "$tag-t5-conv" "w/o Meta" "$tag-msn-bisenet" conv
        run "$tag-t5-awmf" refused "$s" "$tag-t5-awmf" "AWMF-CNN" "$tag-msn-bisenet" awmf
        run "$tag-t5-pseudo" refused "$s" "$tag-t5-pseudo" "MSN (pseudo σ)" \
            "$tag-msn-bisenet" meta --sigma pseudo
    done
}

# -- data -----------------------------------------------------------------------------------
if [[ -z $STORE ]]; then
    STORE="$OUT/store.zarr"
    if want 1 3 4 5; then
        echo "== synthetic slides (BACH-like): $SLIDES x ${SIZE}px, levels 16x 4x 1x"
        [[ -s "$OUT/data/manifest.csv" ]] ||
            msn synth "$OUT/data" --slides "$SLIDES" --size "$SIZE"
        msn tile --manifest "$OUT/data/manifest.csv" --levels 16x 4x 1x --patch-size "$PATCH" \
            --store "$STORE" > "$OUT/logs/tile.log"
    fi
    if [[ -z $ISIC_STORE ]]; then
        ISIC_STORE="$OUT/isic.zarr"
        if want 2 5; then
            echo "== synthetic photographs (ISIC-like): $SLIDES x ${ISIC_SIZE}px, levels 4x 2x 1x"
            [[ -s "$OUT/isic-data/manifest.csv" ]] || msn synth "$OUT/isic-data" --kind photo \
                --slides "$SLIDES" --size "$ISIC_SIZE" --seed 1
            msn tile --manifest "$OUT/isic-data/manifest.csv" --levels 4x 2x 1x \
                --patch-size "$PATCH" --classes normal,lesion --mask-values 0:normal,255:lesion \
                --min-tissue 0 --store "$ISIC_STORE" > "$OUT/logs/tile-isic.log"
        fi
    fi
fi

# -- training: three rounds of independent steps, each for every seed -----------------------
for round in round1 round2 round3; do
    for ((seed = 0; seed < SEEDS; seed++)); do
        at_seed "$seed"
        "$round"
    done
    join
done

# -- tables ---------------------------------------------------------------------------------
MADE=()
repeated() {  # repeated LIST: the comma-separated LIST once per seed
    local out=$1 s
    for ((s = 1; s < SEEDS; s++)); do out+=",$1"; done
    echo "$out"
}
compare() {  # compare FILE TITLE [evaluate --compare options] -- NAME...: every seed's scores
    local file=$1 title=$2 opts=() runs=() s name
    shift 2
    while [[ $1 != -- ]]; do
        if [[ $1 == --labels ]]; then opts+=("$1" "$(repeated "$2")"); shift; else opts+=("$1"); fi
        shift
    done
    shift
    for ((s = 0; s < SEEDS; s++)); do
        for name in "$@"; do runs+=("$(dir_of "$s")/results/$name.json"); done
    done
    echo
    msn evaluate --compare "${runs[@]}" --title "$title" --markdown "$OUT/tables/$file.md" \
        "${opts[@]}"
    MADE+=("$file")
}
curves() {  # curves FILE TITLE OUTPUTS LABELS STAGE-FOLDER...: every seed's runs (ckpt/...)
    local runs=() s stage
    for ((s = 0; s < SEEDS; s++)); do
        for stage in "${@:5}"; do runs+=("$(dir_of "$s")/ckpt/$stage"); done
    done
    echo
    msn evaluate --compare --curve "$3" --labels "$(repeated "$4")" --title "$2" \
        --markdown "$OUT/tables/$1.md" --plot "$OUT/tables/$1.png" "${runs[@]}"
    MADE+=("$1")
}
table_rows() {  # table_rows TAG BACKBONES: Table 1/2's rows in the paper's order
    local b kind
    for b in $2; do echo "$1-$b-x1" "$1-$b-x2" "$1-$b-x3"; done
    for kind in awmf awmf-fixed msn msn-star; do
        for b in bisenet unet; do if has "$2" "$b"; then echo "$1-$kind-$b"; fi; done
    done
}

if want 1; then
    read -ra rows <<< "$(table_rows bach "$BACKBONES" | tr '\n' ' ')"
    compare table1 "Table 1: comparison on BACH-like slides, mIoU (%)" -- "${rows[@]}"
fi
if [[ -n $ISIC_STORE ]] && want 2; then
    read -ra rows <<< "$(table_rows isic "$ISIC_BACKBONES" | tr '\n' ' ')"
    compare table2 "Table 2: comparison on ISIC-like photographs, mIoU (%)" -- "${rows[@]}"
fi
if want 3; then
    compare table3 "Table 3: weight sharing (BiSeNet), mIoU (%)" \
        --columns x1,x2,x3,x2y1,x3y1,fusion -- \
        bach-meta-branch bach-multi-branch bach-msn-bisenet bach-msn-star-bisenet
fi
if want 4; then
    compare table4 "Table 4: gap layers, mIoU (%)" --columns x1,x2,x3,fusion -- \
        bach-nongap bach-msn-bisenet
fi
T5=(--columns x1,x2,x3,fusion,fusion-params --labels "w/o Meta,AWMF-CNN,MSN,MSN (pseudo σ)")
if want 5; then
    compare table5-bach "Table 5 (BACH-like): fusions on MSN†'s fixed branches" "${T5[@]}" -- \
        bach-t5-conv bach-t5-awmf bach-msn-bisenet bach-t5-pseudo
fi
if [[ -n $ISIC_STORE ]] && want 5; then
    compare table5-isic "Table 5 (ISIC-like): fusions on MSN†'s fixed branches" "${T5[@]}" -- \
        isic-t5-conv isic-t5-awmf isic-msn-bisenet isic-t5-pseudo
fi
if want 3; then
    curves fig5 "Fig. 5: sub-train mIoU (%) per epoch of the non-meta-branches" x1,x2 \
        "MSN†,∗MSN†,Multi-branch (X1 expert),Multi-branch (X2 expert)" \
        bach-msn-bisenet/memrm bach-msn-star-bisenet/memrm bach-bisenet-x1/meta \
        bach-bisenet-x2/meta
fi
for tag in bach isic; do
    want 5 || break
    [[ $tag == bach || -n $ISIC_STORE ]] || continue
    what=$([[ $tag == bach ]] && echo "BACH-like" || echo "ISIC-like")
    curves "fig6-$tag" "Fig. 6 ($what): sub-train mIoU (%) per epoch of the fusions" fusion \
        "MSN (meta-fusion),w/o Meta,AWMF-CNN,MSN (pseudo σ)" "$tag-msn-bisenet/fusion" \
        "$tag-t5-conv/fusion" "$tag-t5-awmf/fusion" "$tag-t5-pseudo/fusion"
done
for f in "${MADE[@]}"; do cat "$OUT/tables/$f.md"; echo; done > "$OUT/tables.md"
echo
echo "$NAME: finished; the tables are in $OUT/tables.md, the curves in $OUT/tables/*.png"
