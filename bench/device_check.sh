#!/usr/bin/env bash
# The performance checks that need the 16-core GPU host (the `device` tool), in one call, most
# important first; each stage's output goes to $OUT/<stage>.log as it runs, so a call cut short
# still returns what finished. Binaries are built here, not there (the host has no Rust):
#
#   bash bench/device_check.sh --stage   # here: copies stripped release binaries into .dev/
#   bash bench/device_check.sh           # there, with `.dev` carried
#
# Stages (GRADTEL_DEVICE_STAGES, default all, in this order): agent (step_cost, issue 5),
# ddp (within-run DDP overhead, issue 7), collector (64 simulated agents, 5 kB reports,
# tcmalloc and glibc, issue 5), collector_large (the same with the bench's default 20 kB
# reports, glibc: their paced p99, issue 5), probe (DDP against plain DDP; GRADTEL_DEVICE_ROUNDS rounds, default 3), gpu (ResNet-50
# on the GPU, issue 7).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "${1:-}" = "--stage" ]; then
    set -e
    cargo build --release --bins
    step_cost=$(cargo bench -p gradtel-agent --bench step_cost --no-run --message-format=json \
        | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and "step_cost" in m["executable"]][0])')
    load=$(cargo bench --bench collector_load --no-run --message-format=json \
        | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and "collector_load" in m["executable"]][0])')
    rm -rf .dev && mkdir -p .dev/bin .dev/lib
    cp target/release/gradtel-agent target/release/gradtel-collector .dev/bin/
    cp "$step_cost" .dev/bin/step_cost
    cp "$load" .dev/bin/collector_load
    # The bench spawns the collector by the absolute path cargo baked in.
    strings .dev/bin/collector_load | grep -o '/[^ ]*target/release/gradtel-collector' | head -1 \
        > .dev/collector_path
    cargo build --release --bin gradtel-collector --features tcmalloc
    cp target/release/gradtel-collector .dev/bin/gradtel-collector-tcmalloc
    cargo build --release --bin gradtel-collector
    cp -L /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 .dev/lib/
    strip .dev/bin/*
    gzip -9 .dev/bin/gradtel-agent .dev/bin/gradtel-collector .dev/bin/gradtel-collector-tcmalloc
    grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
    du -sh .dev
    exit 0
fi

OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GRADTEL_LOG=error
export GRADTEL_BIN_DIR=$here/.dev/bin LD_LIBRARY_PATH=$here/.dev/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
gunzip -kf .dev/bin/*.gz
chmod +x .dev/bin/*
stages=${GRADTEL_DEVICE_STAGES:-agent ddp collector collector_large probe gpu}
# GRADTEL_DEVICE_SMALL=1: a quick dry run of every stage, for trying this script anywhere.
if [ -n "${GRADTEL_DEVICE_SMALL:-}" ]; then
    pairs=1 rounds=1 ddp_steps=60 load_steps=60 gpu_steps="--steps 5"
else
    pairs=${GRADTEL_DEVICE_PAIRS:-8} rounds=${GRADTEL_DEVICE_ROUNDS:-3} ddp_steps=400 load_steps=600 gpu_steps=""
fi

{ nproc; lscpu | grep -E 'Model name|Thread|Core|Socket|NUMA node\(s\)'; nvidia-smi -L; \
  python3 -c 'import torch; print("torch", torch.__version__)'; } 2>&1 | tee "$OUT/host.log"

for stage in $stages; do
    echo "=== $stage $(date +%T)"
    case $stage in
    agent)
        for i in 1 2 3; do timeout 60 .dev/bin/step_cost; done
        # One chunk per thread on 16 threads (625,000 values = 2.5 MB each): no round where
        # some threads wait for others.
        GRADTEL_BENCH_CHUNK=625000 timeout 60 .dev/bin/step_cost ;;
    ddp)
        timeout 200 python3 bench/python_client.py --values 1 --steps 1 --transport \
            --ddp-python python3 --pairs $pairs \
            --ddp-steps $ddp_steps --toggle 10 ;;
    collector)
        path=$(cat .dev/collector_path)
        mkdir -p "$(dirname "$path")"
        for build in gradtel-collector-tcmalloc gradtel-collector; do
            cp .dev/bin/$build "$path"
            echo "--- $build"
            GRADTEL_BENCH_STEPS=$load_steps GRADTEL_BENCH_TENSORS=1 \
                GRADTEL_BENCH_VALUES=1000 timeout 120 .dev/bin/collector_load --bench
        done ;;
    collector_large)
        # The bench's default reports (≈ 20 kB: 6 tensors × 10k values), default build: the
        # paced p99 of large reports, last measured on the host in session 11.
        path=$(cat .dev/collector_path)
        mkdir -p "$(dirname "$path")"
        cp .dev/bin/gradtel-collector "$path"
        GRADTEL_BENCH_STEPS=$load_steps timeout 150 .dev/bin/collector_load --bench ;;
    probe)
        # A round is four runs of ≈ 10 s each on the host.
        timeout $((rounds * 50 + 20)) python3 bench/ddp_hook_probe.py --ddp-python python3 \
            --rounds $rounds --steps $ddp_steps ;;
    gpu)
        # GRADTEL_DEVICE_GPU_ARGS: other gpu_overhead.py arguments (e.g. `--every 10 --variant
        # hooks copy full`).
        timeout 150 python3 bench/gpu_overhead.py ${GRADTEL_DEVICE_GPU_ARGS:---every 1 10} \
            --blocks 2 --transport shared $gpu_steps ;;
    esac 2>&1 | tee "$OUT/$stage.log"
done
echo "=== done $(date +%T)"
