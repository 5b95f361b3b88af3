"""Hydra plugins of cvae-exp, installed as the `hydra_plugins.cvae_exp` package: Hydra
instantiates launchers and sweepers only from the `hydra_plugins` namespace."""
