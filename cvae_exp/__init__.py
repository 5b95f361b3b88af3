"""cvae-exp: config-driven experiments with conditional variational autoencoders."""
