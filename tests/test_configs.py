"""Every option of every config group composes and validates; bad values fail clearly."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cvae_exp.checks import validate
from cvae_exp.errors import UserInputError

GROUPS = [
    "data",
    "model",
    "conditioning",
    "task",
    "prior",
    "loss",
    "module",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "table3",
    "hparams_search",
    "debug",
]
CONFIG_DIR = Path(__file__).parents[1] / "configs"
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted(Path(CONFIG_DIR, group).glob("*.yaml"))]


# Options that need another one beside them
COMPANIONS = {
    ("task", "attributes"): ["data=digit_attributes"],
    ("data", "digit_attributes"): ["task=attributes"],
    ("data", "image_folder"): ["data.source.path=pets", "data.num_classes=2", "data.val_size=10"],  # its ??? keys
    ("data", "arrays"): ["data.source.path=a.npz", "data.image_shape=[1,8,8]", "data.num_classes=2", "data.val_size=2"],
    ("data", "celeba"): ["task=attributes"],
    ("data", "coloured_mnist"): ["task=attributes"],
    ("data", "dsprites"): ["task=attributes"],
    ("experiment", "celeba64_cvae"): [],
    ("model", "vqvae"): ["loss=vqvae"],
    ("loss", "vqvae"): ["model=vqvae"],
}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(compose_train, group, option):
    cfg = compose_train([f"{group}={option}", *COMPANIONS.get((group, option), [])])
    validate(
        cfg, devices_here=False
    )  # trainer=gpu composes here too; whether a GPU exists is checked where the job runs
    OmegaConf.to_container(cfg, resolve=True)


def test_every_group_has_options():
    assert {group for group, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.latent_dim=16", "loss.beta=4", "optim.lr=2e-3", "data.batch_size=1024", "trainer.max_epochs=30"],
        ["seed=7", "data.root=/somewhere", "trainer.precision=bf16-mixed", "data.binarize=dynamic"],
        ["model=conv", "conditioning=film", "loss.likelihood=bernoulli", "loss.warmup_steps=100"],
        ["data=mnist", "model=conv", "conditioning=none"],
        ["logger=[tensorboard,csv]"],
        ["+trainer.gradient_clip_val=1.0"],
        ["optim._target_=torch.optim.SGD", "+optim.momentum=0.9"],
    ],
)
def test_user_overrides_validate(compose_train, overrides):
    validate(compose_train(overrides))


def test_report_experiments_match_the_protocol(compose_train):
    genmodel = compose_train(["experiment=report_genmodel"])
    assert genmodel.data.name == "mnist" and genmodel.data.batch_size == 1024 and genmodel.seed == 42
    assert genmodel.model.encoder.hidden_dims == [400, 400] and genmodel.loss.var == 0.5
    assert genmodel.conditioning._target_.endswith("Concat")
    vae = compose_train(["experiment=report_vae"])
    assert vae.conditioning._target_.endswith("conditioning.Conditioning")
    assert vae.data.batch_size == 1024 and vae.loss.var == 0.5


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["model.latent_dim=0"], "model.latent_dim=0"),
        (["model.latent_dim=abc"], "model.latent_dim"),
        (["loss.beta=-1"], "loss.beta=-1"),
        (["optim.lr=-0.1"], "optim.lr=-0.1"),
        (["optim.lr=0"], "optim.lr=0"),
        (["loss.var=0"], "loss.var=0"),
        (["loss.likelihood=poisson"], "loss.likelihood='poisson'"),
        (["data.binarize=maybe"], "data.binarize='maybe'"),
        (["data.batch_size=0"], "data.batch_size=0"),
        (["trainer.precision=8-bit"], "trainer.precision='8-bit'"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
        (["+trainer.max_epoch=3"], "trainer.max_epoch"),
        (["seed=-1"], "seed=-1"),
        (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt'"),
        (["model=conv", "model.encoder.channels=[8,16,32]"], "image shape [1, 28, 28]"),
        # a class Hydra cannot load: its three-line message joined into the paragraph
        (
            ["callbacks.lr_monitor._target_=lightning.pytorch.callbacks.Nope"],
            "callbacks.lr_monitor: Error loading 'lightning.pytorch.callbacks.Nope'",
        ),
        (
            ["task=superres", "task._target_=cvae_exp.tasks.Nope"],
            "Invalid task config: Error loading 'cvae_exp.tasks.Nope'",
        ),
        (["model.encoder._target_=cvae_exp.models.Nope"], "Error loading 'cvae_exp.models.Nope'"),
        (["optim._target_=torch.optim.Nadamm"], "optim: Error loading 'torch.optim.Nadamm'"),
    ],
)
def test_invalid_values_name_the_key_and_the_allowed_values(compose_train, overrides, named):
    with pytest.raises(UserInputError) as error:
        validate(compose_train(overrides))
    message = str(error.value)
    assert named in message
    assert "\n" not in message  # one paragraph


@pytest.mark.parametrize(
    "overrides,named",
    [
        (
            ["model=transformer"],
            "model=transformer: In 'train': Could not find 'model/transformer'; "
            "the options of 'model': conv, hierarchical, mlp, resnet, vqvae.",
        ),
        (["learning_rate=0.1"], "Could not override 'learning_rate': no such key in the config"),
        (["labels=[0,3"], "labels=[0,3: no viable alternative at input '[0,3'"),
    ],
)
def test_composition_errors_read_as_one_paragraph(compose_train, overrides, named):
    with pytest.raises(UserInputError) as error:
        compose_train(overrides)
    assert named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("row", [option for group, option in OPTIONS if group == "table3"])
def test_table3_rows_override_the_report_experiment(compose_train, row):
    cfg = compose_train(["experiment=report_genmodel", f"table3={row}"])
    epochs, latent, lr = row.split("_")[1:]
    assert f"e{cfg.trainer.max_epochs}" == epochs and f"z{cfg.model.latent_dim}" == latent
    assert cfg.optim.lr == float(lr.removeprefix("lr")) and cfg.reference.score > 0
    assert cfg.data.batch_size == 1024 and cfg.data.name == "mnist"


def test_the_table3_script_runs_every_row_once():
    """scripts/reproduce_report.sh names its rows in a chosen order; none may be missed."""
    script = (Path(CONFIG_DIR).parent / "scripts" / "reproduce_report.sh").read_text()
    named = re.findall(r"\brow\d\d_e\d+_z\d+_lr[0-9.e-]+\b", script)
    assert sorted(named) == [option for group, option in OPTIONS if group == "table3"]


def refused_in_a_fresh_process(override: str, tmp_path: Path, module: str) -> str:
    """What validating `override` prints in a new interpreter: the refusal, and whether
    `module` was imported by then."""
    code = (
        "import sys\n"
        "from cvae_exp.checks import validate\nfrom cvae_exp.compose import compose_train\n"
        "from cvae_exp.errors import UserInputError\n"
        f"cfg = compose_train([{override!r}], {str(tmp_path)!r})\n"
        "try:\n    validate(cfg)\nexcept UserInputError as error:\n    print('refused:', error)\n"
        f"print('loaded:', {module!r} in sys.modules)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epochs=-1",
        "+trainer.max_time=1h",
        "trainer.precision=64",
        "model.latent_dim=0",
        "optim.lr=-1",
        "callbacks.model_checkpoint.monitor=val/los",
    ],
)
def test_config_ranges_are_refused_before_torch_loads(tmp_path, override):
    """A value the config alone can refuse costs no torch or Lightning import (seconds)."""
    output = refused_in_a_fresh_process(override, tmp_path, "torch")
    key = override.split("=")[0].lstrip("+")
    assert f"refused: Invalid config value {key}=" in output and "loaded: False" in output, output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the device")
def test_a_missing_device_is_refused_before_lightning_loads(tmp_path):
    """Whether a device exists needs torch, not Lightning's import (seconds more)."""
    output = refused_in_a_fresh_process("trainer.accelerator=cuda", tmp_path, "lightning")
    assert (
        "refused: Invalid config value trainer.accelerator='cuda': no such device" in output
        and "loaded: False" in output
    ), output


def test_a_bad_value_in_a_later_job_of_a_multirun_is_refused_before_torch_loads(tmp_path):
    """Every job's values are checked before the first job's network is built."""
    code = (
        "import sys\n"
        "from cvae_exp import train\n"
        "sys.argv = ['cvae-train', '-m', 'model.latent_dim=2,0', 'hydra.sweep.dir=sweep']\n"
        "try:\n    train.main()\nexcept SystemExit as exit:\n    print('exit:', exit.code)\n"
        "print('loaded:', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "In job 1 (model.latent_dim=0): Invalid config value model.latent_dim=0" in result.stderr, result.stderr
    assert "exit: 2" in result.stdout and "loaded: False" in result.stdout and not (tmp_path / "sweep").exists(), (
        result.stdout
    )


def test_a_key_left_without_a_value_is_named_in_one_paragraph(compose_train):
    from cvae_exp.checks import check_values

    with pytest.raises(
        UserInputError, match=r"leaves data.num_classes, data.source.path, data.val_size without a value"
    ):
        check_values(compose_train(["data=image_folder"]))


def test_a_users_objective_config_extends_the_elbos_with_keys_of_its_own(tmp_path):
    """configs/loss/elbo.yaml's base (ELBOConfig in the ConfigStore) stays open to new keys."""
    from cvae_exp.compose import compose_train, config_source

    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "elbo_tv.yaml").write_text(
        "defaults:\n  - elbo\n  - _self_\n_target_: mine.ELBOWithTV\nweight: 0.05\n"
    )
    cfg = compose_train(["loss=elbo_tv", "loss.beta=2"], tmp_path / "run", config_source(config_dir=str(tmp_path)))
    assert cfg.loss.weight == 0.05 and cfg.loss.beta == 2 and cfg.loss.var == 0.5


@pytest.mark.parametrize(("size", "shape"), [("24", [1, 24, 24]), ("[24,40]", [1, 24, 40])])
def test_a_folders_image_shape_follows_its_image_size_square_or_not(compose_train, size, shape):
    overrides = ["data=image_folder", "data.source.path=pngs", "data.num_classes=2", "data.val_size=1"]
    cfg = compose_train([*overrides, "data.source.channels=1", f"data.source.image_size={size}"])
    assert list(cfg.data.image_shape) == shape
