#!/usr/bin/env bash
# Reproduce the report's Table 3: its 13 (epochs, latent_dim, lr) rows of the CVAE
# (experiment=report_genmodel) as one Hydra multirun on real MNIST, then tabulate
# them beside the published Scores with cvae-table.
#
#   scripts/reproduce_report.sh [extra overrides...]
#   e.g. scripts/reproduce_report.sh data.root=/data trainer=gpu
#        scripts/reproduce_report.sh hydra/launcher=joblib hydra.launcher.n_jobs=2
#
# The rows run longest first (job 0 is row 13, 50 epochs), so that parallel jobs end
# together instead of the longest one running last, alone.
# Writes outputs/report/<time>/table3/{0..12}/ and table.md, table.csv, table.png there.
set -euo pipefail
sweep_dir="${SWEEP_DIR:-outputs/report/$(date +%Y-%m-%d_%H-%M-%S)}/table3"
# configs/table3/rowNN_eEPOCHS_...yaml, by epochs (descending), then by row
rows=$(ls "$(dirname "$0")/../configs/table3" | sed 's/\.yaml$//' | sort -t_ -k2.2,2nr -k1,1 | paste -sd, -)
start=$(date +%s)
cvae-train -m experiment=report_genmodel "table3=$rows" \
    hydra.sweep.dir="$sweep_dir" callbacks.progress_bar.refresh_rate=0 "$@"
cvae-table "$sweep_dir"
elapsed=$(( $(date +%s) - start ))
echo "total wall time: $(( elapsed / 60 )) min $(( elapsed % 60 )) s; table in $sweep_dir/table.md"
