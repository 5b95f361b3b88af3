#!/usr/bin/env bash
# Score and classifier metrics against training time, for the report's model, a sharper
# variant of it and experiment=score_max, each under every latent sampler (prior: the lab's
# protocol, z ~ N(0, I); gmm; flow): trains the three models on real MNIST, evaluates each
# best checkpoint with every sampler (cvae-eval --sampler, same seed), then writes
# table.md and table.png (scripts/sampler_table.py) in the study's directory.
#
#   scripts/reproduce_samplers.sh [extra overrides for every training...]
#   e.g. scripts/reproduce_samplers.sh data.root=/data trainer=gpu
#
# Writes outputs/samplers/<time>/{report,report_var0.05,score_max}/ and table.md, table.png there.
set -euo pipefail
study="${STUDY_DIR:-outputs/samplers/$(date +%Y-%m-%d_%H-%M-%S)}"
start=$(date +%s)
train() { cvae-train hydra.run.dir="$study/$1" callbacks.progress_bar.refresh_rate=0 "${@:2}"; }
train report experiment=report_genmodel "$@"
train report_var0.05 experiment=report_genmodel loss.var=0.05 trainer.max_epochs=30 "$@"
train score_max experiment=score_max "$@"
for run in report report_var0.05 score_max; do
    for sampler in prior gmm flow; do
        cvae-eval "$study/$run" --sampler "$sampler" --out "$study/$run/eval-$sampler.json" > /dev/null
    done
done
python "$(dirname "$0")/sampler_table.py" "$study"
elapsed=$(( $(date +%s) - start ))
echo "total wall time: $(( elapsed / 60 )) min $(( elapsed % 60 )) s; table in $study/table.md"
