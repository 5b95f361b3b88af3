"""The memory-mapped cache of decoded datasets and the image-folder source that fills it: real
PNG and JPEG files, a cache that is reused, rebuilt when damaged, never left half-written;
training from it through DataLoader workers gives the in-memory path's numbers."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvae_exp import api
from cvae_exp.data import cache, folders
from cvae_exp.data.batches import MappedImages
from cvae_exp.data.folders import load_image_folder
from cvae_exp.errors import UserInputError


def write_png(image: torch.Tensor, path: str) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def write_jpeg(image: torch.Tensor, path: str) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=90)


def decode_image(path: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def write_folder(folder: Path, per_class: int = 12, size=(3, 20, 24)) -> dict[str, list[Path]]:
    """Two class subfolders of random images, PNG and JPEG alternately."""
    generator = torch.Generator().manual_seed(0)
    written = {}
    for name in ("cats", "dogs"):
        (folder / name).mkdir(parents=True)
        written[name] = []
        for i in range(per_class):
            image = torch.randint(0, 256, size, dtype=torch.uint8, generator=generator)
            path = folder / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
            (write_png if i % 2 else write_jpeg)(image, str(path))
            written[name].append(path)
    return written


@pytest.fixture
def folder(tmp_path) -> Path:
    write_folder(tmp_path / "pets")
    return tmp_path / "pets"


def load(folder: Path, cache_dir: Path, **settings):
    folders._image_folder.cache_clear()  # a new process's view: the disk cache only
    arguments = dict(image_size=16, resize="resize", test_size=6, cache_dir=str(cache_dir))
    return load_image_folder(None, str(folder), **{**arguments, **settings})


def test_a_folder_is_decoded_by_torchvision_resized_and_split_into_a_memory_map(folder, tmp_path):
    data = load(folder, tmp_path / "cache")
    assert isinstance(data.train_images, MappedImages) and data.train_images.shape == (18, 3, 16, 16)
    assert data.test_images.shape == (6, 3, 16, 16) and sorted(data.train_labels.tolist() + data.test_labels.tolist())
    assert sorted(data.train_labels.tolist() + data.test_labels.tolist()) == [0] * 12 + [1] * 12
    # the held-out images are the ones split_seed picks, each the file resized as torchvision does
    from torchvision.transforms.v2.functional import resize

    order = torch.randperm(24, generator=torch.Generator().manual_seed(0)).tolist()
    files = sorted((folder / "cats").iterdir()) + sorted((folder / "dogs").iterdir())
    first_test = files[sorted(order[:6])[0]]
    expected = resize(decode_image(str(first_test)), [16, 16], antialias=True)
    assert torch.equal(data.test_images[0], expected)


def test_train_and_test_folders_are_the_splits(tmp_path):
    write_folder(tmp_path / "set" / "train", per_class=4)
    write_folder(tmp_path / "set" / "test", per_class=2)
    data = load(tmp_path / "set", tmp_path / "cache", resize="crop", test_size=0)
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4 and data.test_labels.tolist() == [0, 0, 1, 1]
    expected = decode_image(str(tmp_path / "set" / "test" / "cats" / "000.jpg"))[:, 2:18, 4:20]
    assert torch.equal(data.test_images[0], expected)  # the centre 16x16 of 20x24


def test_a_second_load_reads_the_cache_without_decoding(folder, tmp_path, monkeypatch):
    first = load(folder, tmp_path / "cache")
    monkeypatch.setattr(folders, "decode", lambda *args: pytest.fail("decoded again"))
    second = load(folder, tmp_path / "cache")
    assert torch.equal(first.train_images[:], second.train_images[:])
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.name.startswith("pets-") and not any(p.name.endswith(".partial") for p in cached.parent.iterdir())


def test_changed_files_or_settings_make_another_cache(folder, tmp_path):
    load(folder, tmp_path / "cache")
    load(folder, tmp_path / "cache", image_size=8)
    write_png(torch.zeros(3, 20, 24, dtype=torch.uint8), str(folder / "cats" / "001.png"))
    os.utime(folder / "cats" / "001.png", ns=(1, 1))
    load(folder, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 3


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate", "no_manifest", "bad_manifest"])
def test_a_damaged_cache_is_detected_and_rebuilt_never_trained_on(folder, tmp_path, damage, caplog):
    good = load(folder, tmp_path / "cache").train_images[:]
    (path,) = (tmp_path / "cache").iterdir()
    images = path / "train.images"
    if damage == "flip_a_byte":
        data = bytearray(images.read_bytes())
        data[100] ^= 0xFF
        images.write_bytes(bytes(data))
    elif damage == "truncate":
        images.write_bytes(images.read_bytes()[:-10])
    elif damage == "no_manifest":
        (path / "manifest.json").unlink()
    else:
        (path / "manifest.json").write_text("{")
    with caplog.at_level("WARNING", logger="cvae_exp.data.cache"):
        again = load(folder, tmp_path / "cache")
    assert f"The cache {path} is damaged" in caplog.text and "decoding pets again" in caplog.text
    assert torch.equal(again.train_images[:], good)


def test_a_partly_written_cache_of_another_process_is_not_read(folder, tmp_path):
    """A writer killed mid-way leaves only its .partial directory, which no reader opens."""
    cache_dir = tmp_path / "cache"
    data = load(folder, cache_dir)
    (path,) = cache_dir.iterdir()
    partial = path.with_name(f".{path.name}.99999.partial")
    path.rename(partial)
    (partial / "manifest.json").unlink()
    again = load(folder, cache_dir)
    assert torch.equal(again.train_images[:], data.train_images[:]) and path.is_dir()


def test_a_full_disk_while_writing_is_one_clear_error_and_leaves_nothing(folder, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, as a full disk: the write fails with an OSError) in a
    child process: the cache is refused with one paragraph and nothing is left behind."""
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from cvae_exp.data.folders import load_image_folder
        from cvae_exp.errors import UserInputError
        try:
            load_image_folder(None, {str(folder)!r}, image_size=16, test_size=6, cache_dir={str(cache_dir)!r})
        except UserInputError as error:
            print(error)
            raise SystemExit(2)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Could not write the cache of the decoded dataset in" in result.stdout
    assert "paths.cache_dir" in result.stdout and "nothing was left behind" in result.stdout
    assert list(cache_dir.iterdir()) == []


def test_bad_folder_settings_are_refused_naming_the_value(folder, tmp_path):
    with pytest.raises(UserInputError, match="data.source.path='/nowhere/at/all': no such directory"):
        load(Path("/nowhere/at/all"), tmp_path / "cache")
    with pytest.raises(UserInputError, match="data.source.resize='stretch': allowed: resize | crop | resize_crop"):
        load(folder, tmp_path / "cache", resize="stretch")
    with pytest.raises(UserInputError, match="data.source.test_size=0: .* has 24 images .* between 1 and 23"):
        load(folder, tmp_path / "cache", test_size=0)
    (folder / "birds").mkdir()
    with pytest.raises(UserInputError, match="The class folder .*birds holds no images"):
        load(folder, tmp_path / "cache")
    (folder / "birds").rmdir()
    (folder / "cats" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserInputError, match="Cannot decode the image .*broken.png"):
        load(folder, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_the_manifest_records_shapes_and_checksums(folder, tmp_path):
    load(folder, tmp_path / "cache")
    (path,) = (tmp_path / "cache").iterdir()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["splits"]["train"]["shape"] == [18, 3, 16, 16]
    assert manifest["splits"]["test"]["images_crc32"] == cache._crc32(path / "test.images")


def test_training_from_a_folder_through_dataloader_workers_matches_the_in_memory_path(folder, tmp_path):
    """data=image_folder, trained twice: batches from tensors in memory, then from the memory
    map through two DataLoader workers; every validation and test metric is identical."""
    common = [
        "data=image_folder",
        f"data.source.path={folder}",
        "data.source.image_size=16",
        "data.source.test_size=6",
        f"data.source.cache_dir={tmp_path / 'cache'}",
        "data.num_classes=2",
        "data.val_size=4",
        "data.batch_size=5",
        "trainer.max_epochs=2",
        "eval.samples_per_class=4",
        "logger=none",
    ]
    fast = api.train([*common, "data.in_memory=true", f"hydra.run.dir={tmp_path / 'fast'}"]).metrics
    streamed = api.train(
        [*common, "data.in_memory=false", "data.num_workers=2", f"hydra.run.dir={tmp_path / 'streamed'}"]
    ).metrics
    assert fast["status"] == streamed["status"] == "completed"
    assert fast["val"] == streamed["val"] and fast["test"] == streamed["test"]
