#!/usr/bin/env bash
# Reproduce the report's Table 3: its 13 (epochs, latent_dim, lr) rows of the CVAE
# (experiment=report_genmodel) as one Hydra multirun on real MNIST, then tabulate
# them beside the published Scores with cvae-table.
#
#   scripts/reproduce_report.sh [extra overrides...]
#   e.g. scripts/reproduce_report.sh data.root=/data trainer=gpu
#
# Writes outputs/report/<time>/table3/{0..12}/ and table.md, table.csv, table.png there.
set -euo pipefail
sweep_dir="${SWEEP_DIR:-outputs/report/$(date +%Y-%m-%d_%H-%M-%S)}/table3"
start=$(date +%s)
cvae-train -m experiment=report_genmodel 'table3=glob(*)' \
    hydra.sweep.dir="$sweep_dir" callbacks.progress_bar.refresh_rate=0 "$@"
cvae-table "$sweep_dir"
echo "total wall time: $(( ($(date +%s) - start) / 60 )) min; table in $sweep_dir/table.md"
