#!/usr/bin/env bash
# One GPU session, as one script: the GPU benchmark, then every training run of docs/RESULTS.md
# that needs more compute than a 2-core CPU has (training seeds, the ablation, the long recipe),
# side by side on one GPU, each followed by `reviewgan evaluate`. Results are packed into $OUT.
#
#   OUT=/tmp/out scripts/gpu_session.sh              # on a machine with a CUDA GPU
#   SMOKE=1 OUT=/tmp/out scripts/gpu_session.sh      # the same plumbing on the CPU with the tiny preset
#
# Needs: PyTorch with CUDA, and reviewgan's dependencies (wheels in .whl/ are installed first if
# present). Yardsticks cached in .evalcache/ (judge.json gzipped) are used when they match.
# FED needs the optional embedder extra: where it is missing, FED is null and is computed later from
# the saved samples with `reviewgan evaluate --model RUN --samples RUN.samples.jsonl`.
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-520}  # seconds after start at which unfinished runs are stopped and results packed
OUT=${OUT:?set OUT to the folder for the results}
elapsed() { echo $(( $(date +%s) - T0 )); }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
if [ -d .evalcache ]; then
  export REVIEWGAN_CACHE=$PWD/.evalcache
  for f in .evalcache/*/judge.json.gz; do [ -e "$f" ] && gunzip -kf "$f"; done
fi
R=runs/gpu
mkdir -p $R
RG="python3 -m reviewgan.cli"

if [ "${SMOKE:-0}" = 1 ]; then
  export REVIEWGAN_CACHE=/tmp/rg_smoke_cache
  DEV=cpu; BASE="--preset tiny"; printf 'base = "tiny"\nmodel = "lm"\n' > /tmp/tiny_lm.toml; LM="--preset /tmp/tiny_lm.toml"; LONG="--preset tiny --set ae.epochs=2"
  PAPER="--preset tiny --set gan.lipschitz=clip"
else
  DEV=cuda; BASE="--preset default"; LM="--preset lm"; LONG="--preset long"
  # The paper's configuration on the default's data and budget, then the fixes one at a time.
  PAPER="--preset paper --set data.unit=chunk --set ae.epochs=2 --set gan.steps=3000 --set train.eval_every=500"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $R/gpu.txt
  echo "== bench ($(elapsed) s)"
  timeout 100 $RG bench --device cuda --json > $OUT/bench_gpu.json 2> $R/bench.err; echo "bench rc=$?"
  tail -c 600 $OUT/bench_gpu.json; echo
  # MPS lets the runs' small kernels share the GPU at once instead of taking turns.
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p /tmp/mps /tmp/mpslog
  if nvidia-cuda-mps-control -d 2>/dev/null && timeout 40 python3 -c "import torch; print(torch.ones(4, device='cuda').sum().item())"; then
    echo "MPS on"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; echo "MPS off"
  fi
fi
GP="--set gan.lipschitz=gp"
OPT="--set gan.optimizer=adam --set gan.lr=0.0001 --set gan.n_critic=5 --set gan.cls_loss=ce --set gan.cls_on_fake=false --set gan.g_dropout=0"
COND="--set gan.condition=embed --set gan.critic_conditioned=true"
AEFIX="--set ae.enc_bidirectional=true --set ae.enc_hidden=256 --set ae.code_activation=l2 --set ae.code_noise=0.01 --set ae.code_to_input=true"
LABEL="--set ae.label_to_decoder=true"

job() {  # job NAME EVAL_ARGS TRAIN_ARGS...: train, then evaluate; times go to $R/times.txt
  local name=$1 ev=$2; shift 2
  (
    s=$(date +%s)
    $RG train --out $R/$name --device $DEV --quiet --set train.threads=1 "$@" > $R/$name.log 2>&1
    rc=$?; e=$(date +%s); echo "$name train rc=$rc seconds=$((e - s)) args: $*" >> $R/times.txt
    if [ $rc = 0 ]; then
      $RG evaluate --model $R/$name --json --save-samples $R/$name.samples.jsonl $ev > $R/$name.eval.json 2> $R/$name.eval.err
      echo "$name evaluate rc=$? seconds=$(( $(date +%s) - e ))" >> $R/times.txt
    fi
  ) &
}

echo "== runs ($(elapsed) s)"
T07="--temperature 0.7"
job long_s0 "$T07" $LONG --seed 0
job default_s0 "$T07" $BASE --seed 0
job default_s1 "$T07" $BASE --seed 1
job default_s2 "$T07" $BASE --seed 2
job lm_s0 "" $LM --seed 0
job lm_s1 "" $LM --seed 1
job lm_s2 "" $LM --seed 2
job long_s1 "$T07" $LONG --seed 1
job abl0_paper "$T07" $PAPER
job abl1_gp "$T07" $PAPER $GP
job abl2_opt "$T07" $PAPER $GP $OPT
job abl3_cond "$T07" $PAPER $GP $OPT $COND
job abl4_ae "$T07" $PAPER $GP $OPT $COND $AEFIX
job abl5_label "$T07" $PAPER $GP $OPT $COND $AEFIX $LABEL
job long64_s0 "$T07" $LONG --set data.max_len=64 --set ae.epochs=10 --seed 0

while [ -n "$(jobs -r)" ] && [ "$(elapsed)" -lt "$DEADLINE" ]; do sleep 5; done
echo "== stopping at $(elapsed) s; still running: $(jobs -r | wc -l)"
pkill -f "reviewgan.cli (train|evaluate)"; sleep 2
cat $R/times.txt

# Pack: configs, tokenizers, metrics, logs, evaluations, samples; the candidate models as export parts.
for name in long_s0 long64_s0; do
  if [ -f $R/$name/generator.safetensors ]; then
    $RG export --model $R/$name --out $R/export_$name > /dev/null && tar cf - -C $R export_$name | split -b 15000000 - $OUT/$name.tar.part-
  fi
done
tar czf $OUT/results.tgz --exclude='*.safetensors' --exclude='train_state' $R
ls -la $OUT
echo "done at $(elapsed) s"
