"""The pages whose examples a user copies into a directory of their own (docs/extending.md,
docs/api.md) run as written: each block that starts with `# file: PATH` is written to PATH
in a fresh directory, then the page's other blocks run there in order (```bash lines
as shell commands, plain ```python blocks as one script, as in a notebook)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
FILE = re.compile(r"^(?:# @package \S+\n)?# file: (\S+)\n")  # a YAML's package header comes first


def run_page(page: str, workspace: Path) -> list[subprocess.CompletedProcess]:
    """Write the page's files into `workspace`, then run its commands and its script there."""
    script, results = [], []
    for language, body in BLOCK.findall((DOCS / page).read_text()):
        named = FILE.match(body)
        if named:
            (workspace / named.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (workspace / named.group(1)).write_text(body)
        elif language == "bash":
            for command in [line for line in body.splitlines() if line.strip() and not line.startswith("#")]:
                results.append(run(["bash", "-c", command], workspace))
        elif language == "python":
            script.append(body)
    if script:
        results.append(run([sys.executable, "-c", "\n".join(script)], workspace))
    return results


def run(command: list[str], workspace: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=workspace, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow  # two short trainings of a user's dataset: about 30 s
def test_extending_adds_a_dataset_and_an_objective_from_the_users_directory(tmp_path):
    run_page("extending.md", tmp_path)
    (metrics_file,) = (tmp_path / "outputs" / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed" and metrics["hparams"]["data"] == "pngs"
    assert {"tv", "recon", "kl", "loss"} <= set(metrics["test"]) and "tv" in metrics["val"]

    refused = subprocess.run(
        ["bash", "-c", "cvae-train -cd conf experiment=stripes loss.weight=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "loss.weight=-1 must be >= 0" in refused.stderr, refused.stderr
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 1  # the refused run made no directory


@pytest.mark.slow  # trains the digits for two epochs: about 20 s
def test_the_api_page_trains_samples_encodes_and_estimates(tmp_path):
    (script,) = run_page("api.md", tmp_path)
    assert "completed" in script.stdout and "torch.Size([12, 1, 28, 28])" in script.stdout
    assert (tmp_path / "outputs" / "api_run" / ".hydra" / "config.yaml").is_file()
    assert "cvae-train: completed" in (tmp_path / "outputs" / "api_run" / "train.log").read_text()
    assert "GPU available" not in script.stderr  # Lightning's notices are in train.log
    assert (tmp_path / "reconstructions.png").is_file()
    tabled = subprocess.run(["cvae-table", "outputs"], cwd=tmp_path, capture_output=True, text=True)
    assert tabled.returncode == 0 and "api_run" in tabled.stdout, tabled.stdout + tabled.stderr
