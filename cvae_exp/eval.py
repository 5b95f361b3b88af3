"""`cvae-eval <checkpoint or run dir>`: recompute a trained run's test metrics.

The checkpoint carries the run's model, data and eval configs (CVAEModule's
hyperparameters), so this runs the same test stage as `cvae-train` and writes
eval.json next to the run's metrics.json. torch and Lightning are imported once the
arguments have passed their checks, so that a bad one is refused at once.
"""

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from cvae_exp.compose import import_from_working_directory
from cvae_exp.errors import UserInputError, report_and_exit
from cvae_exp.files import check_output_path, undone_on_failure, write_json
from cvae_exp.schema import RECON_Z_CHOICES, SAMPLERS


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or a run dir's best checkpoint (metrics.json names it
    relative to the run dir, so a moved or copied run finds its own), else last.ckpt."""
    if path.is_file():
        return path
    metrics = path / "metrics.json"
    try:
        best = json.loads(metrics.read_text()).get("best_checkpoint") if metrics.is_file() else None
    except ValueError:
        raise UserInputError(
            f"{str(metrics)!r} is not valid JSON (a damaged file); remove it to fall back on "
            "checkpoints/last.ckpt, or pass a .ckpt file."
        ) from None
    if best and (path / best).is_file():
        return path / best
    if (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    raise UserInputError(
        f"No checkpoint at {str(path)!r}: pass a .ckpt file or a run directory with checkpoints/ (its best "
        "checkpoint, else last.ckpt, is used)."
    )


def quiet_libraries() -> None:
    """Lightning's notices (devices found, tips) and library deprecation warnings are not
    the user's to act on; cvae-train sends them to train.log, these tools have none. Called
    once Lightning is imported: its import sets its loggers to INFO."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module="lightning"
    )  # torch's deprecations inside Lightning
    warnings.filterwarnings(
        "ignore", message="Be aware that when using `ckpt_path`"
    )  # training callbacks do not matter to a test
    warnings.filterwarnings(
        "ignore", message="The `srun` command is available"
    )  # a SLURM login node's notice: these tools run on one device, never as a SLURM job's tasks


def show_progress() -> None:
    """For the console scripts cvae-eval and cvae-sample: the progress of our long steps (fitting
    a sampler) on stderr, as cvae-train shows it on its console; stdout stays what these tools
    print for scripts (a result, a file's path). Not for the Python API, whose logging is the user's."""
    progress = logging.getLogger("cvae_exp.samplers")
    if not progress.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


def load_module(checkpoint: Path, **eval_overrides):
    """The CVAEModule a checkpoint holds, with eval settings overridden (torch and Lightning
    are imported here, and their notices quietened)."""
    import torch
    from hydra.utils import get_class

    from cvae_exp.module import CVAEModule

    import_from_working_directory()  # the run's own `_target_`s (a user's dataset loader) may live there
    quiet_libraries()
    try:
        target = torch.load(checkpoint, map_location="cpu", weights_only=False).get("module_target")
        module_class = get_class(target) if target else CVAEModule  # older checkpoints: the CVAEModule
        module = module_class.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated file, another model's checkpoint, ...
        raise UserInputError(
            f"Cannot load {str(checkpoint)!r} as a cvae-exp checkpoint ({type(error).__name__}: {error}); pass "
            "a .ckpt written by cvae-train. A run that used modules of your own (a dataset loader, an objective) "
            "needs them importable: run from their directory or put it on PYTHONPATH."
        ) from None
    module.hparams.eval.update({key: value for key, value in eval_overrides.items() if value is not None})
    return module


def main(argv: list[str] | None = None) -> None:
    show_progress()
    parser = argparse.ArgumentParser(prog="cvae-eval", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a .ckpt file or a run directory")
    parser.add_argument("--recon-z", choices=RECON_Z_CHOICES, help="reconstruct from a posterior sample or its mean")
    parser.add_argument("--samples-per-class", type=int, help="generated images per class for the FID")
    parser.add_argument("--save-images", action="store_true", default=None, help="write recon/ and gen/ PNGs")
    parser.add_argument("--nll-samples", type=int, help="importance samples per test image for test/nll (0: none)")
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help=(
            "where generated images draw z from (prior: the run's p(z|c); gmm, flow: fitted per class, saved in "
            "<run dir>/samplers/) [the run's eval.sampler]"
        ),
    )
    parser.add_argument("--data-root", help="where the dataset lives, if not where the run found it")
    parser.add_argument("--seed", type=int, default=42, help="seed of the sampling [42]")
    parser.add_argument(
        "--out", type=Path, help="the JSON file to write; a missing folder is made for it [<run dir>/eval.json]"
    )
    args = parser.parse_args(argv)
    try:
        if args.samples_per_class is not None and args.samples_per_class < 1:
            raise UserInputError(
                f"--samples-per-class {args.samples_per_class}: must be an integer >= 1 (generated images per "
                "class for the FID)."
            )
        if args.out is not None and args.out.is_dir():
            raise UserInputError(f"--out {str(args.out)!r} is a directory; pass the path of the JSON file to write.")
        if args.out is not None:
            check_output_path(args.out, f"--out {str(args.out)!r}")
        if args.nll_samples is not None and args.nll_samples < 0:
            raise UserInputError(
                f"--nll-samples {args.nll_samples}: must be an integer >= 0 (importance samples per test image "
                "for test/nll; 0: no estimate)."
            )
        checkpoint = find_checkpoint(args.path)
        module = load_module(
            checkpoint,
            recon_z=args.recon_z,
            samples_per_class=args.samples_per_class,
            save_images=args.save_images,
            nll_samples=args.nll_samples,
            sampler=args.sampler,
        )
        import lightning as L
        from hydra.utils import instantiate

        from cvae_exp.models.vqvae import NO_POSTERIOR_DENSITY
        from cvae_exp.samplers import require_applicable

        require_applicable(module.cvae, module.hparams.eval["sampler"])
        if args.nll_samples and getattr(module.cvae, "discrete_latent", False):
            raise UserInputError(f"--nll-samples {args.nll_samples}: {NO_POSTERIOR_DENSITY} (--nll-samples 0).")

        data = dict(module.hparams.data, **({"root": args.data_root} if args.data_root else {}))
        out = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        L.seed_everything(args.seed, verbose=False)
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            default_root_dir=out,
        )
        (metrics,) = trainer.test(
            module, datamodule=instantiate(data), ckpt_path=checkpoint, verbose=False
        )  # the path tells a fitted sampler where it belongs
    except UserInputError as error:
        report_and_exit(error, "cvae-eval")
    result = {
        "checkpoint": os.path.relpath(checkpoint, out),  # relative, as in metrics.json
        **trained(checkpoint),
        "recon_z": module.hparams.eval["recon_z"],
        "sampler": module.hparams.eval["sampler"],
        "classifier": module.classifier_record,
        "nll_samples": module.hparams.eval["nll_samples"],
        "seed": args.seed,
        "test": {key.removeprefix("test/"): float(value) for key, value in metrics.items()},
    }
    target = args.out or out / "eval.json"
    try:
        with undone_on_failure(target.parent):  # a missing folder is made for --out, and removed if the write fails
            target.parent.mkdir(parents=True, exist_ok=True)
            write_json(target, result)
    except OSError as error:
        report_and_exit(
            UserInputError(f"Cannot write {target}: {error.strerror or error}; nothing was written."), "cvae-eval"
        )
    print(json.dumps(result, indent=2))  # stdout is the result alone, for `cvae-eval ... | jq`
    print(f"cvae-eval: written to {target}", file=sys.stderr)


def trained(checkpoint: Path) -> dict:
    """The epochs and the training time (Lightning's Timer, summed over resumed segments)
    that the checkpoint holds: where on a training curve its metrics sit."""
    import torch

    from cvae_exp.checks import epochs_done

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    timer = state.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {})
    return {"epochs": epochs_done(state), "steps": state.get("global_step"), "train_time_s": timer.get("train")}


if __name__ == "__main__":
    main()
