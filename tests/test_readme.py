"""The documentation, executable: every command of the ```bash blocks of README.md and of
every page under docs/, run as written, in order.

The commands run with `bash -c` in a fresh copy of the checkout (`<tmp>/main`, the files
git tracks or would track), beside a `<tmp>/shared` link to the real shared folder, so
that `../shared/data/MNIST/raw/` resolves as it does on the reference machine. Each must
exit 0.

What the test changes, and only that:
- training commands get a few overrides appended so that they finish in seconds
  (`shorten`, see the constants below); the command as run is in every failure message;
- placeholders (`<...>`, `/path/to/datasets`, `/path/to/MNIST/raw`) become real paths
  (PLACEHOLDERS);
- `tensorboard` gets a free port and counts as run once it serves (TENSORBOARD_FLAGS);
- the commands in SKIPPED cannot run here and are skipped with their reason; the ones
  that need the real MNIST files are skipped, saying so, where those files are absent.
The cases depend on each other (sampling needs a run, cvae-table a sweep, the MNIST
commands the copy docs/usage.md makes): pytest runs them page by page in PAGES order
(README.md, docs/usage.md, then the other pages by path), each page's in its order, all
in one module-scoped workspace. A test id names the page and the command. Slow (about 15
minutes on 2 cores): `pytest -m slow tests/test_readme.py`; one page:
`-k docs/usage.md`. The checks that read the pages without running anything (the set-up
block against .ci/run, the docs map, the links) are in the default suite.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
# Pages that run first, in this order: the README, then usage.md, whose commands copy MNIST
# into data/ and make the runs that later pages' placeholders stand for. The other pages
# under docs/ follow in path order.
FIRST_PAGES = ("README.md", "docs/usage.md")
# Pages whose examples write files first and run in a directory of their own: tests/test_docs.py
# runs them.
OWN_WORKSPACE = {"docs/extending.md", "docs/api.md"}
CI_SCRIPT = REPO / ".ci" / "run"
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MNIST = SHARED / "data" / "MNIST" / "raw"
TIMEOUT_S = 900  # a command that trains the coloured-MNIST classifier first takes about 10 minutes on 2 busy cores
TENSORBOARD_WAIT_S = 60
OUTPUT_TAIL = 3000

# Commands that cannot run here: a regular expression searched in the command (most are
# plain substrings) -> why. Nothing else is skipped, except MNIST commands without MNIST.
SKIPPED = {
    r"pip install": "installs the package (network, installer); CI runs it (.ci/run)",
    r"^pytest(\s|$)": "runs the test suite, of which this test is part",
    r"\.ci/run": "runs CI: the install and the whole test suite, of which this test is part",
    r"^ruff\s": "lints or formats the checkout; CI runs `ruff check .` and `ruff format --check .` on it",
    r"^pre-commit\s": "installs git hooks; the copy this test runs in is not a git repository",
    r"hydra/launcher=slurm.*trainer=gpu": "needs a SLURM cluster with GPU nodes; its CPU variants in docs/usage.md "
    "run on the test cluster (tests/slurm_cluster.py)",
    r"^(scancel|scontrol)\s": "signals a running SLURM job by the id squeue shows; tests/test_slurm.py preempts a "
    "job both ways",
    r"hydra\.sweeper\.storage=postgresql://": "needs a PostgreSQL server; tests/test_optuna_storage.py shares a study "
    "between two sweepers through one it starts",
}
# A command that matches this runs on the test SLURM cluster (the slurm_cluster fixture, which
# skips, saying why, where slurm-wlm is not installed or not as root).
NEEDS_SLURM = re.compile(r"hydra/launcher=slurm|^squeue\s")

# A command that mentions any of these needs the real MNIST files (docs/usage.md copies
# them from /path/to/MNIST/raw, here ../shared/data/MNIST/raw/; the scripts/reproduce_*.sh
# run MNIST experiments).
NEEDS_MNIST = (
    "MNIST",
    "data=mnist",
    "experiment=report_",
    "experiment=sohn_",
    "experiment=binarized_",
    "experiment=mnist_",
    "scripts/reproduce_",
    "/path/to/datasets",
)

# Placeholders of the documented commands -> what they stand for here (resolved when the
# command runs, from what the commands before it wrote). Longest first when substituting.
PLACEHOLDERS = {
    "outputs/runs/<date_time>": "newest_run",
    "<run dir or .ckpt>": "newest_run",
    "<its run dir>": "newest_run",
    "<run dir>": "newest_run",
    "outputs/multiruns/<date_time>": "newest_multirun",
    "<sweep dir>": "newest_multirun",
    "/path/to/datasets": "data_root",
    "/path/to/MNIST/raw": "mnist_files",
}
PLACEHOLDER_MEANING = {
    "newest_run": "the newest <tmp>/main/outputs/runs/* that holds a metrics.json",
    "newest_multirun": "the newest <tmp>/main/outputs/multiruns/*",
    "data_root": "<tmp>/main/data, where docs/usage.md's `mkdir -p data/MNIST/raw && cp ...` put MNIST",
    "mnist_files": "the four original MNIST files, ../shared/data/MNIST/raw/ beside the checkout",
}

# Appended to the cvae-train part of a command (and to scripts/reproduce_*.sh, which
# pass their arguments on to cvae-train); later overrides win in Hydra.
TRAIN_SHORT = ["trainer.max_epochs=1", "eval.samples_per_class=20", "eval.nll_samples=5", "eval.flow_steps=50"]
TRAIN_NOT_MNIST = ["data=digits"]
# `++`: add the key, or set it where a config (debug=fast, say) has it already.
TRAIN_MNIST_SHORT = ["++trainer.limit_train_batches=5", "++trainer.limit_val_batches=2"]
OPTUNA_SHORT = ["hydra.sweeper.n_trials=2"]
# Appended to commands that train on dSprites (its own data, or its experiments' and script's):
# a grid of 1,536 images.
DSPRITES = re.compile(r"data=dsprites|experiment=dsprites_|scripts/reproduce_disentanglement\.sh")
DSPRITES_SHORT = [
    "data.source.orientations=2",
    "data.source.positions=8",
    "data.source.test_size=300",
    "data.val_size=200",
]
# Appended to `python scripts/benchmark.py ...` (argparse: the last value wins).
BENCHMARK_SHORT = ["--epochs", "1", "--limit-batches", "5", "--repeats", "1"]
# Appended to `tensorboard ...`: port 0 asks the OS for a free port.
TENSORBOARD_FLAGS = ["--port", "0", "--host", "127.0.0.1"]
TENSORBOARD_SERVING = re.compile(r"TensorBoard \S+ at (http://\S+)")

BASH_FENCE = re.compile(r"^```(bash|sh|shell)\s*$")
UNMAPPED_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*>")


# --- The pages and their commands ----------------------------------------------------------


def bash_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(heading above the block, its commands) for every ```bash block, in order.
    Lines ending with a backslash continue; blank lines and whole-line comments are not commands."""
    blocks, heading, block, other_block = [], "", None, False
    for line in text.splitlines():
        stripped = line.strip()
        if other_block:  # a ``` block of another language, or none (the directory trees)
            other_block = stripped != "```"
            continue
        if block is None:
            if BASH_FENCE.match(stripped):
                block = []
            elif stripped.startswith("```"):
                other_block = True
            elif stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
            continue
        if stripped == "```":
            blocks.append((heading, _join_continuations(block)))
            block = None
        else:
            block.append(line)
    return blocks


def _join_continuations(lines: list[str]) -> list[str]:
    commands, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        command, current = current.strip(), ""
        if command and not command.startswith("#"):
            commands.append(command)
    if current.strip():
        commands.append(current.strip())
    return commands


def pages() -> list[str]:
    """README.md and every page under docs/, as paths from the checkout, in the order they run."""
    found = sorted(path.relative_to(REPO).as_posix() for path in DOCS.rglob("*.md"))
    return [page for page in FIRST_PAGES if (REPO / page).is_file()] + [
        page for page in found if page not in FIRST_PAGES
    ]


def page_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of every page's ```bash blocks, in running order."""
    return [
        (page, command)
        for page in pages()
        if page not in OWN_WORKSPACE
        for _, commands in bash_blocks((REPO / page).read_text())
        for command in commands
    ]


def command_id(page: str, command: str) -> str:
    return f"{page}: {' '.join(command.split())[:80]}"


# --- Links ----------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]+`")


def prose(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped,
    spaces as hyphens, a repeated one numbered (-1, -2, ...)."""
    seen: dict[str, int] = {}
    for line in prose(text):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            if seen[slug]:
                seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def links(page: str) -> list[str]:
    """The relative link and image targets of a page (outside code), `path#anchor` as written."""
    text = "\n".join(CODE_SPAN.sub("code", line) for line in prose((REPO / page).read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


# --- Rewriting a command for this test ---------------------------------------------------


def unquoted(text: str):
    """The positions of `text` outside quotes and backslash escapes, as a shell reads it."""
    quote, escaped = None, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        else:
            yield i


def split_comment(command: str) -> tuple[str, str]:
    """(code, trailing `# comment` or "") of one shell line, minding quotes."""
    for i in unquoted(command):
        if command[i] == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip(), command[i:]
    return command.rstrip(), ""


def split_pipeline(code: str) -> list[str]:
    """The code cut before and after every `&&`, `||`, `|` and `;` outside quotes: the
    pieces alternate between simple commands and operators."""
    pieces, start = [], 0
    for i in unquoted(code):
        if i < start:
            continue  # the second character of `&&` or `||`
        width = 2 if code.startswith(("&&", "||"), i) else 1 if code[i] in "|;" else 0
        if width:
            pieces += [code[start:i], code[i : i + width]]
            start = i + width
    return pieces + [code[start:]]


def needs_mnist(command: str) -> bool:
    return any(marker in command for marker in NEEDS_MNIST)


def extra_arguments(words: list[str], mnist: bool) -> list[str]:
    """What to append to one simple command; [] leaves it as written."""
    program = words[0] if words else ""
    if program == "cvae-train" or re.search(r"scripts/reproduce_\w+\.sh$", program):
        if any(word == "--cfg" or word.startswith("--cfg=") for word in words):
            return []  # prints the config, trains nothing
        if any(word.startswith("resume=") for word in words):
            return []  # continues a run that is short already
        dsprites = bool(DSPRITES.search(" ".join(words)))
        names_its_data = dsprites or any(word.startswith("data=") for word in words)  # a dataset other than MNIST
        extra = TRAIN_SHORT + (TRAIN_MNIST_SHORT if mnist else [] if names_its_data else TRAIN_NOT_MNIST)
        if "model=vqvae" in words:  # a point-mass posterior: no importance sampling (checks refuses it)
            extra.remove("eval.nll_samples=5")
        extra += DSPRITES_SHORT if dsprites else []
        if "hparams_search=optuna" in words:
            extra = extra + OPTUNA_SHORT
        return extra
    if program.startswith("python") and len(words) > 1 and words[1].endswith("scripts/benchmark.py"):
        return BENCHMARK_SHORT
    if program == "tensorboard":
        return TENSORBOARD_FLAGS
    return []


def shorten(command: str, mnist_available: bool) -> str:
    """The command with the overrides that make it quick appended to each of its simple
    commands that trains (before its `#` comment and before any `&&`, `|`, ...)."""
    code, comment = split_comment(command)
    mnist = needs_mnist(command) and mnist_available
    pieces = split_pipeline(code)
    for index in range(0, len(pieces), 2):
        piece = pieces[index]
        try:
            words = shlex.split(piece)
        except ValueError:
            continue
        extra = extra_arguments(words, mnist)
        if extra:
            trailing = piece[len(piece.rstrip()) :] or (" " if index + 1 < len(pieces) else "")
            pieces[index] = piece.rstrip() + " " + " ".join(shlex.quote(word) for word in extra) + trailing
    code = "".join(pieces)
    return f"{code}  {comment}" if comment else code


def is_server(command: str) -> bool:
    code, _ = split_comment(command)
    return any(piece.split()[:1] == ["tensorboard"] for piece in split_pipeline(code)[::2])


def skip_reason(command: str) -> str | None:
    for pattern, reason in SKIPPED.items():
        if re.search(pattern, command):
            return f"{reason} [SKIPPED: {pattern!r}]"
    if needs_mnist(command) and not SHARED_MNIST.is_dir():
        return f"needs the real MNIST files, not found at {SHARED_MNIST}"
    return None


# --- Placeholders ---------------------------------------------------------------------------


def _newest(directories: list[Path], what: str) -> Path:
    if not directories:
        pytest.fail(f"no {what} to put in for the placeholder: did an earlier documented command fail?")
    return max(directories, key=lambda path: (path.name, path.stat().st_mtime))


def resolve(kind: str, main: Path) -> Path:
    if kind == "newest_run":
        return _newest(
            [path.parent for path in (main / "outputs" / "runs").glob("*/metrics.json")], PLACEHOLDER_MEANING[kind]
        )
    if kind == "newest_multirun":
        return _newest(
            [path for path in (main / "outputs" / "multiruns").glob("*") if path.is_dir()], PLACEHOLDER_MEANING[kind]
        )
    if kind == "data_root":
        return main / "data"
    if kind == "mnist_files":
        return main.parent / "shared" / "data" / "MNIST" / "raw"
    raise AssertionError(f"unknown placeholder kind {kind!r}")


def fill_placeholders(command: str, main: Path) -> str:
    for placeholder in sorted(PLACEHOLDERS, key=len, reverse=True):
        if placeholder in command:
            command = command.replace(placeholder, shlex.quote(str(resolve(PLACEHOLDERS[placeholder], main))))
    left = UNMAPPED_PLACEHOLDER.search(split_comment(command)[0])
    assert left is None, (
        f"documented command has a placeholder this test does not know, {left.group()!r}: add it to PLACEHOLDERS\n "
        f" {command}"
    )
    return command


# --- Running ----------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(process: subprocess.Popen) -> None:
    """End the command's process group (it was started in its own session)."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(command: str, cwd: Path) -> tuple[int | str, str]:
    """(exit status or "timeout", stdout and stderr interleaved)."""
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        _stop(process)
        output, _ = process.communicate()
        return f"timeout after {TIMEOUT_S} s", output


def run_server(command: str, cwd: Path, log: Path) -> tuple[int | str, str]:
    """Start a server command; 0 once it says it serves and answers a request, else why not."""
    with log.open("w") as sink:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TENSORBOARD_WAIT_S
        while time.monotonic() < deadline:
            serving = TENSORBOARD_SERVING.search(log.read_text())
            if serving:
                with urllib.request.urlopen(serving.group(1), timeout=30) as response:
                    return (
                        0 if response.status == 200 else f"HTTP {response.status} from {serving.group(1)}"
                    ), log.read_text()
            if process.poll() is not None:
                return f"exited with {process.returncode} before serving", log.read_text()
            time.sleep(0.5)
        return f"not serving after {TENSORBOARD_WAIT_S} s", log.read_text()
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """<tmp>/main: a copy of the checkout as a fresh clone has it; <tmp>/shared: the shared folder."""
    root = tmp_path_factory.mktemp("readme")
    main = root / "main"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.split("\0")):
            source = REPO / name
            if source.is_file():  # a tracked file deleted in the working tree is not there
                (main / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, main / name)
    else:  # not a git checkout (an sdist, say)
        shutil.copytree(
            REPO,
            main,
            ignore=shutil.ignore_patterns(
                ".git", "outputs", "data", "multirun", "lightning_logs", "__pycache__", "*.egg-info", ".pytest_cache"
            ),
        )
        (main / "outputs").mkdir(exist_ok=True)
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED, target_is_directory=True)
    return main


PAGE_COMMANDS = page_commands()


def test_pages_have_commands():
    readme = [command for page, command in PAGE_COMMANDS if page == "README.md"]
    assert len(readme) >= 5, f"found only {readme} in README.md's ```bash blocks"
    assert len(PAGE_COMMANDS) >= 30, f"found only {len(PAGE_COMMANDS)} commands in README.md and docs/"


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, command", [pytest.param(page, command, id=command_id(page, command)) for page, command in PAGE_COMMANDS]
)
def test_documented_command(page, command, workspace, request):
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    if NEEDS_SLURM.search(command):
        request.getfixturevalue("slurm_cluster")  # sets SLURM_CONF, which the command inherits
    as_run = shorten(fill_placeholders(command, workspace), SHARED_MNIST.is_dir())
    if is_server(command):
        status, output = run_server(as_run, workspace, workspace.parent / "server.log")
    else:
        status, output = run_command(as_run, workspace)
    assert status == 0, (
        f"{page} command failed ({status}):\n  as written: {command}\n  as run (cwd {workspace}): {as_run}\n"
        f"--- last {OUTPUT_TAIL} characters of stdout+stderr ---\n{output[-OUTPUT_TAIL:]}"
    )


def ci_commands() -> list[str]:
    """The commands .ci/run always runs, in order: its lines less comments, `set` and `cd`,
    and the bodies of its `if`/`for`/`while`/`case` blocks (what it runs only on some
    machines, such as system packages for one test, is not part of a user's set-up)."""
    commands, depth = [], 0
    for line in (line.strip() for line in CI_SCRIPT.read_text().splitlines()):
        opens = re.match(r"(if|for|while|until|case)\s", line)
        closes = re.match(r"(fi|done|esac)\b", line) or re.search(r";\s*(fi|done|esac)$", line)
        if opens and not closes:
            depth += 1
        elif closes and not opens:
            depth -= 1
        elif depth == 0 and line and not opens and not line.startswith(("#", "set ", "cd ")):
            commands.append(line)
    return commands


def test_setup_block_is_what_ci_runs():
    """README's set-up block is the commands .ci/run always runs, the same ones in the same
    order, starting with the install, and .ci/run stops at the first that fails."""
    setup = [
        commands for heading, commands in bash_blocks(README.read_text()) if heading.lower().replace("-", "") == "setup"
    ]
    assert len(setup) == 1 and setup[0][:1] == ['pip install -e ".[dev]"'], f"README's set-up block(s): {setup}"
    lines = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    assert any(re.match(r"set -\w*e", line) for line in lines), (
        ".ci/run must stop at the first failing command (set -e)"
    )
    assert setup[0] == ci_commands(), f".ci/run runs {ci_commands()}, README's set-up block {setup[0]}"


def test_readme_maps_every_page():
    """The README's documentation map links every page under docs/."""
    linked = {os.path.normpath(target.split("#")[0]) for target in links("README.md")}
    unlinked = [page for page in pages() if page != "README.md" and page not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


@pytest.mark.parametrize("page", pages())
def test_links_resolve(page):
    """Every relative link and image of a page names a file that exists, and a heading of
    it where the link has an anchor."""
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (REPO / page).parent / path if path else REPO / page
        name = os.path.relpath(file, REPO)
        if not file.exists():
            broken.append(f"{target} (no {name})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target} (no heading #{anchor} in {name})")
    assert not broken, f"{page} links to what is not there: {broken}"
