"""`cvae-sample` on a real checkpoint: the grids it writes and the inputs it refuses.

Each subprocess pays for importing torch and Lightning (several seconds on 2 busy cores), so
one success and one refusal run as the user runs them; the other cases call `main` in-process.
"""

import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from PIL import Image

from cvae_exp.module import CVAEModule
from cvae_exp.sample import main
from cvae_exp.visualize import GRID_PADDING
from tests.helpers import run_cli

CONFIGS = Path(__file__).parents[1] / "configs"
SIDE = 28
LATENT_DIM = 4


def config(group: str, name: str, overrides=None) -> dict:
    """An option's own keys (a data config's `defaults: [schema]` fills the rest from the DataModule's defaults)."""
    loaded = OmegaConf.load(CONFIGS / group / f"{name}.yaml")
    loaded.pop("defaults", None)
    return OmegaConf.to_container(OmegaConf.merge(loaded, overrides or {}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with checkpoints/last.ckpt of a tiny CVAE trained one step on digits."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    data = config("data", "digits", {"root": str(run), "batch_size": 32})
    module = CVAEModule(
        model=config(
            "model",
            "mlp",
            {"latent_dim": LATENT_DIM, "encoder": {"hidden_dims": [16]}, "decoder": {"hidden_dims": [16]}},
        ),
        conditioning=config("conditioning", "concat"),
        data=data,
        loss={"likelihood": "gaussian", "var": 0.5, "beta": 1.0, "warmup_steps": 0},
        optim={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        eval={
            "val_ssim_images": 1000,
            "recon_z": "sample",
            "samples_per_class": 3,
            "save_images": False,
            "classifier_metrics": False,
        },
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run,
        callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", save_last=True)],
    )
    trainer.fit(module, datamodule=instantiate(data))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


@pytest.fixture(autouse=True)
def reported_not_raised(monkeypatch):
    """Errors end as one paragraph whatever the caller's environment says."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def image_size(path: Path) -> tuple[str, int, int]:
    with Image.open(path) as image:
        return image.mode, image.height, image.width


def grid_size(rows: int, columns: int) -> tuple[str, int, int]:
    """make_grid's layout: SIDE x SIDE cells with GRID_PADDING around each, in three channels."""
    return "RGB", rows * (SIDE + GRID_PADDING) + GRID_PADDING, columns * (SIDE + GRID_PADDING) + GRID_PADDING


def test_cli_writes_one_row_per_label(run_dir, tmp_path):
    out = tmp_path / "new" / "grid.png"
    result = run_cli(str(run_dir), "labels=[0,3,3,7]", "n=16", f"out={out}", cwd=tmp_path, tool="sample")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(out)
    assert image_size(out) == grid_size(4, 16)
    assert [path.name for path in out.parent.iterdir()] == ["grid.png"]  # no temporary file left


@pytest.mark.parametrize(
    ("arguments", "rows", "columns"),
    [
        (["mode=interpolate", "labels=[1,2]", "steps=5"], 2, 5),
        (["mode=interpolate"], 10, 11),  # every class, the default steps
        (["mode=traverse", "labels=[0]", f"dim={LATENT_DIM - 1}", "span=2", "steps=7"], 1, 7),
        (["labels=[9]", "n=3"], 1, 3),
    ],
)
def test_modes_write_their_grids_from_a_checkpoint_file(run_dir, tmp_path, capsys, arguments, rows, columns):
    out = tmp_path / "grid.png"
    main([str(run_dir / "checkpoints" / "last.ckpt"), *arguments, f"out={out}"])
    assert capsys.readouterr().out.strip() == str(out)
    assert image_size(out) == grid_size(rows, columns)


def test_same_seed_same_image_other_seed_other_image(run_dir, tmp_path, capsys):
    def sample(name: str, seed: int) -> bytes:
        main([str(run_dir), "labels=[5]", "n=4", f"seed={seed}", f"out={tmp_path / name}"])
        return (tmp_path / name).read_bytes()

    assert sample("a.png", seed=1) == sample("b.png", seed=1) != sample("c.png", seed=2)


def test_cli_refuses_a_bad_mode_in_one_paragraph(run_dir, tmp_path):
    command = shutil.which("cvae-sample")
    assert command, "the cvae-sample console script is not installed"
    out = tmp_path / "new" / "grid.png"
    result = subprocess.run(
        [command, str(run_dir), "mode=bogus", f"out={out}"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "mode='bogus'" in result.stderr and "grid, interpolate, traverse" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["labels=[12]"], ["labels=[12]", "0..9"]),
        (["mode=traverse", "dim=99"], ["dim=99", f"0..{LATENT_DIM - 1}"]),
        (["mode=interpolate", "steps=1"], ["steps=1", "at least 2"]),
        (["bogus=1"], ["bogus=1", "labels", "seed"]),
        (["n=abc"], ["n=abc", "Integer"]),
        (["labels=[0,3"], ["labels=[0,3", "YAML"]),
        (["labels"], ["'labels'", "key=value"]),
        (["out=grid"], ["out='grid'", ".png"]),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument_and_write_nothing(run_dir, tmp_path, capsys, arguments, named):
    out = tmp_path / "new" / "grid.png"
    with pytest.raises(SystemExit) as exited:
        main([str(run_dir), f"out={out}", *arguments])
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("cvae-sample: error: ") and all(part in message for part in named), message
    assert not out.parent.exists()


def test_missing_checkpoint_exits_2_naming_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "nowhere"), f"out={tmp_path / 'grid.png'}"])
    assert exited.value.code == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
