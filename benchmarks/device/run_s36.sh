#!/bin/bash
# Session 36's device run (benchmarks/results/gpu_replication.md): PBC 3% (vit_cs, movit_cs at 1x and 3x the steps,
# seeds 0-2) and brain MRI 3% at 3x (seeds 0-1), 16 processes on one H200, ending within about 8 minutes.
# Before the call, here: python benchmarks/device/payload.py pbc_blood_cells_96:3 brain_tumor_mri_training:3, the wheels
# the device image lacks in .gpu/whl (monai, pytorch-ignite, fire, termcolor, nibabel, pydicom; see the device README),
# and this script copied to .gpu/run.sh; the call: run "bash .gpu/run.sh" with carry [".gpu"].
# usage: bash .gpu/run.sh [local]   ("local": this machine's .venv, no wheels, short deadlines: a smoke check here)
set -u
ROOT=$(pwd); PY=python3; STOP=200; KILL=470; W=/tmp/gpu36
if [ "${1:-}" = local ]; then PY=.venv/bin/python; STOP=5; KILL=45; W=/tmp/gpu36_local; OUT=${OUT:-/tmp/gpu36_out}; mkdir -p $OUT
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} MEDMEM_DATA_ROOT=$ROOT/.gpu/data PYTHONUNBUFFERED=1
rm -rf $W; mkdir -p $W
{ date -u; nvidia-smi 2>&1 | head -15; $PY -c "import sys, torch, monai, numpy, ignite; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else ''); print('monai', monai.__version__, 'numpy', numpy.__version__, 'ignite', ignite.__version__)"; nproc; } > $OUT/machine.txt 2>&1
$PY -c "import medmem.engine, medmem.networks" || { cat $OUT/machine.txt; echo "medmem import failed"; exit 4; }
$PY benchmarks/regimes/run_many.py --datasets pbc_blood_cells_96 --models vit_cs_steps3x movit_cs_steps3x vit_cs movit_cs \
  --regimes 3 --seeds 0 1 2 --per_model --workers 12 --out $W/pbc.csv --runs $W/runs --stop_after_s $STOP --kill_after_s $KILL > $W/pbc_driver.log 2>&1 &
A=$!
$PY benchmarks/regimes/run_many.py --datasets brain_tumor_mri_training --models vit_cs_steps3x movit_cs_steps3x \
  --regimes 3 --seeds 0 1 --per_model --workers 4 --out $W/brain.csv --runs $W/runs --stop_after_s $STOP --kill_after_s $KILL > $W/brain_driver.log 2>&1 &
B=$!
collect() {
  cp $W/*.csv $W/*_driver.log $OUT/ 2>/dev/null
  for f in $W/runs/*/*.log; do echo "$(basename $f): $(grep -E 'Epoch\[[0-9]+\] Complete' $f | tail -1)"; done > $OUT/progress.txt 2>/dev/null
}
t=0
while kill -0 $A 2>/dev/null || kill -0 $B 2>/dev/null; do
  sleep 10; t=$((t+10)); collect
  [ $t = 120 ] && nvidia-smi > $OUT/smi_120s.txt 2>&1
  if grep -q "rc=[1-9]" $W/*_driver.log 2>/dev/null; then  # a cell failed: stop at once, bring back its log
    for f in $(grep -l "Traceback" $W/*.csv.parts/*.log $W/runs/*/*.log 2>/dev/null | head -3); do echo "== $f"; tail -40 $f; done > $OUT/failure.txt
    cat $OUT/failure.txt | tail -60; pkill -f run_many.py; pkill -f run_regimes.py; pkill -f monai.bundle; sleep 2; collect; exit 5
  fi
done
collect; cat $W/*_driver.log | tail -40
