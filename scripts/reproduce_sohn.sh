#!/usr/bin/env bash
# Reproduce Sohn et al.'s MNIST quadrant task under Pyro's CVAE-tutorial protocol: the
# deterministic NN baseline (prior=none) and the CVAE with a prior network
# (prior=conditional), each with 1, 2 and 3 observed quadrants, as one Hydra multirun on
# real MNIST; cvae-table then lists test/nll (-log p(y|x), 1000 importance samples) and
# test/neg_elbo per run, in nats over the unobserved pixels.
#
#   scripts/reproduce_sohn.sh [extra overrides...]
#   e.g. scripts/reproduce_sohn.sh data.root=/data trainer=gpu
#
# Writes outputs/sohn/<time>/quadrants/{0..5}/ and table.md, table.csv, table.png there.
set -euo pipefail
sweep_dir="${SWEEP_DIR:-outputs/sohn/$(date +%Y-%m-%d_%H-%M-%S)}/quadrants"
start=$(date +%s)
cvae-train -m experiment=sohn_quadrants task.observed=1,2,3 prior=none,conditional \
    hydra.sweep.dir="$sweep_dir" callbacks.progress_bar.refresh_rate=0 "$@"
cvae-table "$sweep_dir"
elapsed=$(( $(date +%s) - start ))
echo "total wall time: $(( elapsed / 60 )) min $(( elapsed % 60 )) s; table in $sweep_dir/table.md"
