#!/usr/bin/env bash
# Stage 1 (the autoencoder) of the `long` recipe on a GPU, two batch sizes side by side; the run with
# the better validation token accuracy comes back in $OUT (weights split into <16 MB parts) and its
# stage 2 is trained anywhere, e.g. on a laptop CPU:
#   reviewgan train --preset long --stage gan --out runs/long
set -u
T0=$(date +%s)
OUT=${OUT:?set OUT}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
R=runs/s1; mkdir -p $R
LIMIT=${LIMIT:-170}
timeout $LIMIT python3 -m reviewgan.cli train --preset long --stage ae --device cuda --quiet --out $R/b64 \
  --set ae.epochs=${E64:-8} > $R/b64.log 2>&1 &
timeout $LIMIT python3 -m reviewgan.cli train --preset long --stage ae --device cuda --quiet --out $R/b256 \
  --set ae.epochs=${E256:-24} --set ae.batch_size=256 --set ae.lr=0.002 > $R/b256.log 2>&1 &
wait
echo "trained at $(( $(date +%s) - T0 )) s"
best=""; bestacc=0
for r in b64 b256; do
  tail -n 2 $R/$r/metrics.jsonl; grep -o '"done": [a-z]*' $R/$r/train_state/state.json | head -1
  acc=$(tail -n 1 $R/$r/metrics.jsonl | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['val_token_acc'])" 2>/dev/null || echo 0)
  if python3 -c "import sys; sys.exit(0 if $acc > $bestacc else 1)"; then best=$r; bestacc=$acc; fi
done
echo "best: $best ($bestacc)"
tar czf $OUT/logs.tgz $R/*.log $R/*/metrics.jsonl $R/*/config.json $R/*/train_state/state.json
tar cf - -C $R --exclude=ae_optim.safetensors $best | split -b 15000000 - $OUT/$best.tar.part-
ls -la $OUT; echo "done at $(( $(date +%s) - T0 )) s"
