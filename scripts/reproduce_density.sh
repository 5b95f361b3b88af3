#!/usr/bin/env bash
# Density estimation on dynamically binarised MNIST (experiment=binarized_mnist): train for
# trainer.max_time, then estimate the test NLL (-log p(x), importance sampled, float32) at
# every periodic checkpoint (CURVE_NLL_SAMPLES samples per image) for the curve of NLL
# against training time, and print them beside cvae-train's own test of the best checkpoint
# (chosen on validation, with the run's eval.nll_samples).
#
#   scripts/reproduce_density.sh [extra overrides...]
#   e.g. scripts/reproduce_density.sh data.root=/data trainer.max_time=00:00:30:00 eval.nll_samples=5000
set -euo pipefail
shopt -s nullglob  # a run shorter than the checkpoint interval has no periodic checkpoints
run_dir="${RUN_DIR:-outputs/density/$(date +%Y-%m-%d_%H-%M-%S)}"
curve_samples="${CURVE_NLL_SAMPLES:-1000}"
cvae-train experiment=binarized_mnist hydra.run.dir="$run_dir" callbacks.progress_bar.refresh_rate=0 "$@"
for checkpoint in "$run_dir"/checkpoints/periodic/*.ckpt; do
    cvae-eval "$checkpoint" --nll-samples "$curve_samples" --out "${checkpoint%.ckpt}.json" > /dev/null
done
python - "$run_dir" <<'PY'
import json, sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvae_exp.eval import trained

run = Path(sys.argv[1])
points = sorted((run / "checkpoints" / "periodic").glob("*.json"))
if points:
    print("| train_min | steps | test nll | test neg_elbo |\n|---|---|---|---|")
else:
    interval = instantiate(OmegaConf.load(run / ".hydra" / "config.yaml").callbacks.periodic_checkpoint.train_time_interval)
    print(f"no curve: the run trained for less than one checkpoint interval ({interval} h:mm:ss), so it wrote no periodic checkpoints")
for path in points:
    point = json.loads(path.read_text())
    print(f"| {point['train_time_s'] / 60:.1f} | {point['steps']} | {point['test']['nll']:.2f} | {point['test']['neg_elbo']:.2f} |")
final = json.loads((run / "metrics.json").read_text())  # cvae-train's test of the best checkpoint, with the run's eval.nll_samples
best = trained(run / final["best_checkpoint"])
print(f"best checkpoint ({final['best_checkpoint']}, after {best['train_time_s'] / 60:.1f} min of training, {best['steps']} steps): "
      f"test nll {final['test']['nll']:.2f} nats with K={OmegaConf.load(run / '.hydra' / 'config.yaml').eval.nll_samples}, neg_elbo {final['test']['neg_elbo']:.2f}")
PY
