"""The built wheel, installed in a fresh environment, trains from an unrelated directory with a
user's own config directory: a dataset (a folder of PNGs, read by a loader in the user's own
module) and an experiment, as docs/extending.md shows."""

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).parents[1]

LOADER = '''
"""A folder with one subfolder of PNGs per class; every fifth image is held out for testing."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cvae_exp.data.sources import ImageSplits


def load_pngs(root):
    files = sorted(Path(root).glob("*/*.png"))
    classes = sorted({file.parent.name for file in files})
    images = torch.stack([torch.from_numpy(np.array(Image.open(file).convert("L")))[None] for file in files])
    labels = torch.tensor([classes.index(file.parent.name) for file in files])
    test = torch.arange(len(files)) % 5 == 0
    return ImageSplits(images[~test], labels[~test], images[test], labels[test])
'''

CONFIGS = {
    "data/pngs.yaml": """
        _target_: cvae_exp.data.TensorDataModule
        name: pngs
        root: ${paths.root_dir}/pngs
        source:
          _target_: my_data.load_pngs
          _partial_: true
        image_shape: [1, 28, 28]
        num_classes: 3
        batch_size: 32
        val_size: 10
    """,
    "experiment/mine.yaml": """
        # @package _global_
        defaults:
          - override /data: pngs
        model:
          latent_dim: 4
        trainer:
          max_epochs: 1
        eval:
          classifier_metrics: false
          samples_per_class: 10
        callbacks:
          progress_bar:
            refresh_rate: 0
    """,
    "mytrain.yaml": """
        defaults:
          - train
          - override experiment: mine
          - _self_
        seed: 7
    """,
}


def write_user_directory(home: Path) -> None:
    """my_data.py, conf/ and pngs/ (three classes of 20 striped 28x28 images)."""
    (home / "my_data.py").write_text(LOADER)
    for name, text in CONFIGS.items():
        (home / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "conf" / name).write_text(textwrap.dedent(text).lstrip())
    rng = np.random.default_rng(0)
    for label in range(3):
        folder = home / "pngs" / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(20):
            image = rng.integers(0, 50, (28, 28))
            image[:, label * 9 : (label + 1) * 9] += 200
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{index}.png")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ of a fresh virtual environment with the wheel built from a copy of the checkout
    (the checkout itself stays clean). The environment sees this interpreter's packages
    (torch and the rest, gigabytes); cvae-exp itself comes from the wheel alone."""
    root = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():
            (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "src" / name).write_bytes((REPO / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", root / "src"], check=True)
    (wheel,) = (root / "dist").glob("cvae_exp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cvae_exp/configs/train.yaml" in names and "cvae_exp/configs/experiment/report_genmodel.yaml" in names
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", root / "venv"], check=True)
    venv_pip = [root / "venv" / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*venv_pip, "install", "--no-deps", "--force-reinstall", wheel], check=True)
    return root / "venv" / "bin"


def run(bin_dir: Path, tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([bin_dir / tool, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # builds and installs the wheel, then three short runs: about a minute
def test_the_wheel_trains_a_user_dataset_from_a_user_config_directory(installed, tmp_path):
    where = run(installed, "python", "-c", "import cvae_exp, cvae_exp.configs; print(cvae_exp.__file__)", cwd=tmp_path)
    assert str(installed.parent) in where.stdout, f"cvae_exp is not the wheel's: {where.stdout}{where.stderr}"

    helped = run(installed, "cvae-train", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "experiment" in helped.stdout, helped.stderr

    write_user_directory(tmp_path)
    trained = run(installed, "cvae-train", "-cd", "conf", "experiment=mine", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    (metrics_file,) = (tmp_path / "outputs" / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed" and metrics["hparams"]["data"] == "pngs"
    assert metrics["hparams"]["latent_dim"] == 4

    # the user's own primary config (-cn), found through -cd, built on the package's train.yaml
    named = run(installed, "cvae-train", "-cd", "conf", "-cn", "mytrain", "hydra.run.dir=named", cwd=tmp_path)
    assert named.returncode == 0, named.stdout + named.stderr
    assert json.loads((tmp_path / "named" / "metrics.json").read_text())["hparams"]["seed"] == 7

    sampled = run(installed, "cvae-sample", str(metrics_file.parent), "labels=[0,2]", "out=grid.png", cwd=tmp_path)
    assert sampled.returncode == 0 and (tmp_path / "grid.png").is_file(), sampled.stderr


@pytest.mark.slow
def test_a_missing_config_directory_is_refused(installed, tmp_path):
    missing = run(installed, "cvae-train", "-cd", "no_such_conf", cwd=tmp_path)
    assert missing.returncode == 2
    assert "--config-dir 'no_such_conf': no such directory" in missing.stderr
    assert list(tmp_path.iterdir()) == []
