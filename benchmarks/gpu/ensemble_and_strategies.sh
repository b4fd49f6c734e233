# On a GPU machine (after benchmarks/gpu/prepare_carry.sh, with .dev carried): the main job over
# 3 seeds in parallel, their ensemble and soup (issue 21), and the
# strategies claim (9 one-epoch runs) beside them; everything packed into $OUT/all.tgz.
# EXTRA: more --set overrides (a CPU dry run); DEADLINE: seconds before the sweep is stopped.
set -u
OUT=${OUT:-/tmp/out2}; mkdir -p $OUT
export PYTHONPATH=$PWD/src:$PWD/.dev/site PYTHONUNBUFFERED=1
PY=${PY:-python3}; EXTRA=${EXTRA:-}; DEADLINE=${DEADLINE:-290}; JOBS=${JOBS:-9}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
W=/tmp/gpu2; rm -rf $W; mkdir -p $W
C="--set model.name=.dev/minilm16 --set data.dir=.dev/data --set train.progress=false --set train.threads=2"
# the strategies claim with this machine's model and data paths (and EXTRA) in [sweep].set
extra_toml=""; for kv in $EXTRA; do extra_toml="$extra_toml, \"$(echo $kv | sed 's/"/\\"/g')\""; done
sed "s#^set = \[\"train.epochs=1\", \"train.task_weights={}\"\]#set = [\"train.epochs=1\", \"train.task_weights={}\", \"model.name=\\\\\".dev/minilm16\\\\\"\", \"data.dir=\\\\\".dev/data\\\\\"\", \"train.progress=false\"$extra_toml]#" configs/claims/strategies.toml > $W/strategies.toml
grep "^set = \[\"train.epochs" $W/strategies.toml > $W/spec-set.txt
$PY -m minbert sweep $W/strategies.toml --out $W/strat --jobs $JOBS > $W/sweep.log 2>&1 &
SWEEP=$!
sets=""; for kv in $EXTRA; do sets="$sets --set $kv"; done
for s in 11711 1 2; do $PY -m minbert train --config configs/default.toml $C $sets --set train.seed=$s --out $W/main-s$s > $W/main-s$s.log 2>&1 & done
for j in $(jobs -p); do [ $j != $SWEEP ] && wait $j; done
echo "main jobs done at $(el) s" | tee -a $W/times.txt
timeout 150 $PY -m minbert ensemble $W/main-s11711 $W/main-s1 $W/main-s2 --out $W/ens --soup > $W/ensemble.log 2>&1
echo "ensemble rc=$? done at $(el) s" | tee -a $W/times.txt
while kill -0 $SWEEP 2>/dev/null && [ $(el) -lt $DEADLINE ]; do sleep 2; done
if kill -0 $SWEEP 2>/dev/null; then kill -TERM $SWEEP; sleep 8; echo "sweep stopped at $(el) s" | tee -a $W/times.txt; else echo "sweep done at $(el) s" | tee -a $W/times.txt; fi
nvidia-smi --query-gpu=memory.used --format=csv >> $W/times.txt 2>&1
cd $W && tar czf $OUT/all.tgz times.txt spec-set.txt strategies.toml sweep.log ensemble.log main-s*.log main-s*/final.json main-s*/metrics.jsonl ens/*.json strat/results strat/*.out strat/sweep.md strat/*/final.json 2>/dev/null
ls -la $OUT; cat $W/times.txt; tail -3 $W/sweep.log
