#!/usr/bin/env bash
# The conditional VAE family on MNIST (experiment=mnist_family): a Gaussian CVAE on the MLP and
# on the conv networks, the two-layer hierarchical CVAE (MLP) and the VQ-VAE with its
# class-conditional prior over codes (conv), each trained with the same data, likelihood and
# schedule; then one table of their likelihoods and classifier metrics (cvae-table).
#
#   scripts/reproduce_family.sh [extra overrides for every training...]
#   e.g. scripts/reproduce_family.sh data.root=/data seed=1
#
# Writes outputs/family/<time>/{cvae_mlp,hierarchical,cvae_conv,vqvae}/ and table.md, table.csv there.
set -euo pipefail
study="${STUDY_DIR:-outputs/family/$(date +%Y-%m-%d_%H-%M-%S)}"
start=$(date +%s)
train() { cvae-train experiment=mnist_family hydra.run.dir="$study/$1" callbacks.progress_bar.refresh_rate=0 "${@:2}"; }
train cvae_mlp model=mlp "$@"
train hierarchical model=hierarchical "$@"
train cvae_conv model=conv "$@"
train vqvae model=vqvae loss=vqvae "$@" eval.nll_samples=0  # a point-mass posterior: its bound is test/neg_elbo
cvae-table "$study"
elapsed=$(( $(date +%s) - start ))
echo "total wall time: $(( elapsed / 60 )) min $(( elapsed % 60 )) s; table in $study/table.md"
