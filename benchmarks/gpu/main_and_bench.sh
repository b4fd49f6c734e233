# On a GPU machine (after benchmarks/gpu/prepare_carry.sh, with .dev carried): the environment,
# a CUDA smoke run, the main job on CUDA, then minbert bench on CUDA; logs and JSON in $OUT.
# bash benchmarks/gpu/main_and_bench.sh [cuda|cpu] [--set KEY=VALUE...]   (cpu: a dry run)
set -u
DEV=${1:-cuda}; shift || true
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export PYTHONPATH=$PWD/src:$PWD/.dev/site PYTHONUNBUFFERED=1
PY=${PY:-python3}
L=$OUT/env.txt
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import sys,torch,tokenizers,transformers,safetensors;print(sys.version.split()[0],'torch',torch.__version__,'tokenizers',tokenizers.__version__,'transformers',transformers.__version__,'cuda',torch.cuda.is_available())"
  lscpu | grep -E "Model name|^CPU\(s\)"; } > $L 2>&1
COMMON="--set model.name=.dev/minilm16 --set data.dir=.dev/data --set train.device=$DEV --set train.progress=false"
step() { local name=$1 limit=$2; shift 2; local t0=$(date +%s)
  timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?
  echo "$name rc=$rc wall_s=$(( $(date +%s) - t0 ))" | tee -a $L; }
step smoke 90 $PY -m minbert train --config configs/smoke.toml $COMMON --out /tmp/gpu-smoke
step main 330 $PY -m minbert train --config configs/default.toml $COMMON "$@" --out /tmp/gpu-main
for f in final.json metrics.jsonl report/summary.md; do cp /tmp/gpu-main/$f $OUT/ 2>/dev/null; done
step bench 150 $PY -m minbert bench --device $DEV --model .dev/minilm16 --data-dir .dev/data --json $OUT/bench.json ${BENCH_EXTRA:-}
cat $L
