#!/usr/bin/env bash
# One device-machine session: CUDA tests and the GPU benchmarks, logs and JSON under $OUT.
# Usage (repo root, wheels of packages the machine lacks in .whl/): bash benchmarks/gpu_suite.sh [part]
#   part: tests | stages | layers | compiled | eager | models (both) | graphs | graphs-others | spread | train |
#   loop-spread | loop-host | loop-graphs | front-ends | data | infer | all
#   (default: all). Each of tests, compiled, eager, graphs, graphs-others, spread, train and loop-spread fits one
#   device call (under 600 s).
# A call brings back at most 8 files: end it with `cd $OUT && tar czf logs.tgz *.log && rm *.log`.
# Wheels a torch + Lightning image may lack (versions as in requirements.lock): av, soundfile, cffi,
# pycparser (soundfile's), dcls==0.1.1 (the tests' reference).
# Eager steps vary by milliseconds between runs and hosts: the model and loop rows run three times
# in turn (--repeats 3) and the tables give medians.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
part=${1:-all}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if [[ $part == tests || $part == all ]]; then
  # the two packages' tests side by side (one GPU, 16 cores): about half the wall time of one run;
  # four groups side by side were no faster (298 s against 280, NOTES run 18: compile tests contend)
  for pkg in dcls_core dcls_audio; do
    (timeout 480 python3 -m pytest -q -m cuda -p no:cacheprovider --durations=8 "tests/$pkg" >"$OUT/cuda_tests_$pkg.log" 2>&1
     echo "pytest tests/$pkg exit status $? (124: timed out)" >>"$OUT/cuda_tests_$pkg.log") &
  done
  wait
  for pkg in dcls_core dcls_audio; do grep -E "^(FAILED|ERROR)|passed|failed|exit status" "$OUT/cuda_tests_$pkg.log"; done
fi
if [[ $part == stages || $part == all ]]; then
  # one layer step per ConvNeXt-T stage and path, in the model's layouts, with its kernels
  timeout 150 python3 benchmarks/bench_stage_paths.py --profile --top 6 --json "$OUT/bench_stage_paths.json" \
    >"$OUT/bench_stage_paths.log" 2>&1; grep -E "^(C=|ConvNeXt)" "$OUT/bench_stage_paths.log"
fi
if [[ $part == layers || $part == all ]]; then
  timeout 300 python3 benchmarks/bench_layers.py --out "$OUT/bench_layers.json" 2>&1 | grep -A6 "stage sums" | tee "$OUT/bench_layers.log"
  timeout 150 python3 benchmarks/profile_layers.py --json "$OUT/profile_layers.json" 2>&1 | grep "^sum" | tee "$OUT/profile_layers.log"
  timeout 90 python3 benchmarks/profile_host.py --json "$OUT/profile_host.json" 2>&1 | grep "ms/step" | tee "$OUT/profile_host.log"
fi
if [[ $part == compiled || $part == models || $part == all ]]; then
  # compiled calls keep the dispatcher's fixed order (nothing is measured while tracing): matrix at
  # the last two ConvNeXt-T stages, direct at the first two (NOTES run 13). Alone on the device,
  # three repeats (each compiles again, mostly from Inductor's cache), with a profile of one
  # CUDA-graph step and the graphs that ran without CUDA graphs; then the matrices T built by the
  # torch gather in place of the Triton program (the default since NOTES run 18)
  timeout 240 python3 benchmarks/bench_models.py --families convnext --modes reduce-overhead --convs rules \
    --repeats 3 --profile --json "$OUT/bench_models_compiled.json" >"$OUT/bench_models_compiled.log" 2>&1
  grep -A4 "^medians" "$OUT/bench_models_compiled.log"; grep -A3 "^==" "$OUT/bench_models_compiled.log"
  DCLS_MATRIX_BUILD=torch timeout 240 python3 benchmarks/bench_models.py --families convnext \
    --modes reduce-overhead --convs rules --repeats 3 --json "$OUT/bench_models_matrix_build.json" \
    >"$OUT/bench_models_matrix_build.log" 2>&1
  grep -A4 "^medians" "$OUT/bench_models_matrix_build.log"
fi
if [[ $part == eager || $part == models || $part == all ]]; then
  timeout 240 python3 benchmarks/bench_models.py --families convnext --convs auto --repeats 3 --infer \
    --json "$OUT/bench_models_convnext.json" >"$OUT/bench_models_convnext.log" 2>&1; grep -A4 "^medians" "$OUT/bench_models_convnext.log"
  timeout 330 python3 benchmarks/bench_models.py --convs auto rules --infer --profile \
    --json "$OUT/bench_models_eager.json" >"$OUT/bench_models_eager.log" 2>&1; grep -E "^(device|model|convnext|fastvit|convformer|==)" "$OUT/bench_models_eager.log"
fi
if [[ $part == graphs || $part == all ]]; then
  # the DCLS rows with their layers' eager training calls replayed as CUDA graphs (all of them, or only
  # the small calls: DCLS_LAYER_GRAPHS=small) and without: three repeats in turn (the eager step's
  # spread), then one short run per row for memory (--memory: one step's memory by phase, the graph
  # pools, what the graphs keep; --memory-trace: what is alive at each of a fresh model's first four
  # steps' peaks, the recording step's included)
  timeout 240 python3 benchmarks/bench_models.py --families convnext --layer-graphs 1 small 0 --infer --repeats 3 \
    --json "$OUT/bench_models_layer_graphs_convnext.json" >"$OUT/bench_models_layer_graphs_convnext.log" 2>&1
  grep -E "^(device|model|convnext)|Error" "$OUT/bench_models_layer_graphs_convnext.log"
  grep -A8 "^medians" "$OUT/bench_models_layer_graphs_convnext.log"
  timeout 150 python3 benchmarks/bench_models.py --families convnext --layer-graphs 1 small 0 --memory --memory-trace \
    --steps 5 --warmup 3 --json "$OUT/bench_models_layer_graphs_memory.json" >"$OUT/bench_models_layer_graphs_memory.log" 2>&1
  grep -E "^(convnext|==)|^   (recording|warmup)|^     [+-]|Error" "$OUT/bench_models_layer_graphs_memory.log"
fi
if [[ $part == spread || $part == all ]]; then
  # the eager ConvNeXt-T in four fresh processes, one after another (its step varies more between
  # processes than between the repeats of one: NOTES run 20), with only the small calls graphed and
  # without graphs; the table by process gives each process's ratio and the lowest
  timeout 420 python3 benchmarks/bench_models.py --families convnext --layer-graphs small 0 --infer --repeats 2 \
    --processes 4 --steps 15 --warmup 6 --json "$OUT/bench_models_spread.json" >"$OUT/bench_models_spread.log" 2>&1
  grep -E "^(device|==|error)|Error" "$OUT/bench_models_spread.log"; grep -A4 "^per process" "$OUT/bench_models_spread.log"
fi
if [[ $part == graphs-others || $part == all ]]; then
  timeout 300 python3 benchmarks/bench_models.py --families fastvit convformer --layer-graphs 1 small 0 --memory \
    --json "$OUT/bench_models_layer_graphs_others.json" >"$OUT/bench_models_layer_graphs_others.log" 2>&1
  grep -E "^(fastvit|convformer|==)|Error" "$OUT/bench_models_layer_graphs_others.log"
fi
if [[ $part == train || $part == all ]]; then
  # the timed steps (10-54) hold the loggers' write after step 49 (every 50 steps by default)
  timeout 500 python3 benchmarks/bench_train.py --modes eager reduce-overhead --repeats 3 --steps 45 --warmup 10 \
    --json "$OUT/bench_train.json" >"$OUT/bench_train.log" 2>&1
  grep -E "^(device|augment)" "$OUT/bench_train.log"; grep -A14 "^loop step timeline" "$OUT/bench_train.log"
fi
if [[ $part == loop-spread || $part == all ]]; then
  # the eager loop against the bare step, both ConvNeXt-T, in three fresh processes one after another
  # (the loop / bare ratio moved between processes on one host: NOTES run 20)
  timeout 480 python3 benchmarks/bench_train.py --modes eager --processes 3 --steps 45 --warmup 10 \
    --json "$OUT/bench_train_spread.json" >"$OUT/bench_train_spread.log" 2>&1
  grep -E "^(device|augment|error)|Error" "$OUT/bench_train_spread.log" | sort | uniq -c
  grep -A3 "^loop / bare per process" "$OUT/bench_train_spread.log"
fi
if [[ $part == loop-host || $part == all ]]; then
  # the eager 7x7 loop's time: device kernels per step (torch.profiler) with rows read by the
  # pin-memory thread (loader) or by the workers (main); the main thread's Python by own time.
  # The first run's samples/s are not comparable: after its profiled warm-up steps the whole
  # process ran slower (NOTES run 20); time loops without --profile-steps
  timeout 200 python3 benchmarks/bench_train.py --models convnext_audio_tiny --modes eager --pin loader main \
    --profile-steps 3 --steps 45 --warmup 10 --json "$OUT/bench_train_host.json" >"$OUT/bench_train_host.log" 2>&1
  grep -E "^(device|convnext|== loop: (device|host syncs))" "$OUT/bench_train_host.log"
  grep -A4 "^loop step timeline" "$OUT/bench_train_host.log"
  timeout 150 python3 benchmarks/bench_train.py --models convnext_audio_tiny --modes eager --profile-steps 3 \
    --profiler python --steps 20 --warmup 10 --json "$OUT/bench_train_host_python.json" \
    >"$OUT/bench_train_host_python.log" 2>&1
  grep -E "^ +[0-9.]+ own|^== loop" "$OUT/bench_train_host_python.log" | head -40
fi
if [[ $part == loop-graphs || $part == all ]]; then
  # the eager DCLS loop with its layers' training calls replayed as CUDA graphs: all of them, then the small ones
  for graphs in 1 small; do
    DCLS_LAYER_GRAPHS=$graphs timeout 240 python3 benchmarks/bench_train.py --models convnext_dcls_audio_tiny \
      --modes eager --steps 45 --warmup 10 --json "$OUT/bench_train_layer_graphs_$graphs.json" \
      >"$OUT/bench_train_layer_graphs_$graphs.log" 2>&1
    grep -E "^(device|convnext)|Error" "$OUT/bench_train_layer_graphs_$graphs.log"
    grep -A3 "^loop step timeline" "$OUT/bench_train_layer_graphs_$graphs.log"
  done
fi
if [[ $part == front-ends || $part == all ]]; then
  # the eager loop per front-end path (the fused passes are the default on CUDA)
  timeout 400 python3 benchmarks/bench_train.py --modes eager --front-ends reference fused --repeats 3 --steps 30 \
    --warmup 15 --json "$OUT/bench_train_front_ends.json" >"$OUT/bench_train_front_ends.log" 2>&1
  grep -E "^augment" "$OUT/bench_train_front_ends.log"; grep -A6 "^medians" "$OUT/bench_train_front_ends.log"
fi
if [[ $part == data || $part == all ]]; then
  # pcm twice: rows read by the workers and by the pin-memory thread (the default on a GPU)
  timeout 360 python3 benchmarks/bench_data.py --clips 2048 --seconds 6 --workers 8,12,16 --formats pcm,flac,opus \
    --pcm-reads worker,main --out "$OUT/bench_data_formats.json" >"$OUT/bench_data_formats.log" 2>&1
  tail -26 "$OUT/bench_data_formats.log"
fi
if [[ $part == infer || $part == all ]]; then
  timeout 120 python3 benchmarks/bench_infer.py --devices cuda --precisions bf16,fp32 --out "$OUT/bench_infer.json" 2>&1 | tail -12 | tee "$OUT/bench_infer.log"
fi
