#!/usr/bin/env bash
# Compare beta-VAE, beta-TCVAE and FactorVAE on dSprites (experiment=dsprites_beta_vae,
# dsprites_beta_tcvae, dsprites_factorvae), three seeds each: one Hydra multirun per objective
# (a swept experiment would not take overrides of the keys it brings, such as data.source.*),
# then one cvae-table of all nine runs: MIG, FactorVAE score, DCI disentanglement, SAP and the
# reconstruction term (test/recon, nats per image), with their mean and standard deviation
# over the seeds.
#
#   scripts/reproduce_disentanglement.sh [extra overrides...]
#   e.g. scripts/reproduce_disentanglement.sh trainer=gpu trainer.max_epochs=30
#
# Writes outputs/disentanglement/<time>/{beta_vae,beta_tcvae,factorvae}/{0,1,2}/ and table.md,
# table_seeds.md (and .csv, .png) in outputs/disentanglement/<time> (SWEEP_DIR=<dir> picks
# another place). A smoke test in minutes: add trainer.max_epochs=1 ++trainer.limit_train_batches=5
# data.source.orientations=4 data.source.positions=8 data.source.test_size=200 data.val_size=200.
set -euo pipefail
out="${SWEEP_DIR:-outputs/disentanglement/$(date +%Y-%m-%d_%H-%M-%S)}"
start=$(date +%s)
for objective in beta_vae beta_tcvae factorvae; do
    cvae-train -m experiment=dsprites_$objective seed=0,1,2 \
        hydra.sweep.dir="$out/$objective" callbacks.progress_bar.refresh_rate=0 "$@"
done
cvae-table "$out/beta_vae" "$out/beta_tcvae" "$out/factorvae" --out "$out"
elapsed=$(( $(date +%s) - start ))
echo "total wall time: $(( elapsed / 60 )) min $(( elapsed % 60 )) s; tables in $out"
