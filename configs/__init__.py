"""The YAML configs, shipped inside the wheel as the package `cvae_exp.configs` (Hydra's
pkg://cvae_exp.configs); in a checkout they stay at the top, in configs/."""
