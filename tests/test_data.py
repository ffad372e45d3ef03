"""2AFC data (robustsim.data): NIGHTS, BAPPS and CSV layouts, mini, labels and pixels validated, caches rebuilt."""

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line, random_image, run, run_cli, save_png
from PIL import Image

from robustsim.cache import build_cached, verified_file
from robustsim.data import iter_batches, load_image, open_triplets, triplet_loader
from robustsim.data import mini as mini_mod
from robustsim.errors import DataError


def test_nights_splits_votes_and_labels(nights_dir):
    test = open_triplets(f"nights:{nights_dir}:test")
    assert len(test) == 3  # the votes=5 row is dropped
    assert [float(test[i]["p"]) for i in range(3)] == [0.0, 1.0, 1.0]
    assert len(open_triplets(f"nights:{nights_dir}:test_imagenet")) == 2
    assert len(open_triplets(f"nights:{nights_dir}:test_no_imagenet")) == 1
    train = open_triplets(f"nights:{nights_dir}:train")
    assert float(train[0]["p"]) == 1.0  # right_vote given as a count (6 of 6)
    item = test[0]
    assert item["ref"].shape == (3, 224, 224) and item["ref"].dtype == torch.float32
    assert 0 <= float(item["ref"].min()) and float(item["ref"].max()) <= 1
    assert open_triplets(f"nights:{nights_dir}", size=32)[0]["x1"].shape == (3, 32, 32)


def test_bapps_categories_and_judgements(bapps_dir):
    data = open_triplets(f"bapps:{bapps_dir}:val")
    assert len(data) == 5
    assert sorted(set(data.groups())) == ["cnn", "traditional"]
    assert [round(float(data[i]["p"]), 2) for i in range(5)] == [0.25, 0.5, 0.75, 0.25, 0.5]
    assert len(open_triplets(f"bapps:{bapps_dir}:val:cnn")) == 2
    with pytest.raises(DataError, match="2afc/val/superres"):
        open_triplets(f"bapps:{bapps_dir}:val:superres")
    with pytest.raises(DataError, match="unknown BAPPS category 'dogs'"):
        open_triplets(f"bapps:{bapps_dir}:val:dogs")


def test_csv_spec_and_mode_conversion(tmp_path):
    rng = np.random.default_rng(0)
    save_png(tmp_path / "r.png", rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L")
    save_png(tmp_path / "a.png", rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), mode="RGBA")
    save_png(tmp_path / "b.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    (tmp_path / "t.csv").write_text("ref,x0,x1,p\nr.png,a.png,b.png,0.75\n")
    item = open_triplets(f"csv:{tmp_path / 't.csv'}")[0]
    assert item["ref"].shape == item["x0"].shape == (3, 20, 20)
    assert torch.equal(item["ref"][0], item["ref"][2])  # grayscale replicated
    assert float(item["p"]) == 0.75
    (tmp_path / "bad.csv").write_text("ref,x0,x1,p\nr.png,a.png,b.png,1.5\n")
    with pytest.raises(DataError, match=r"bad.csv:2: p = 1.5 is outside \[0, 1\]"):
        open_triplets(f"csv:{tmp_path / 'bad.csv'}")
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks column"):
        open_triplets(f"csv:{tmp_path / 'cols.csv'}")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("foo:bar", "'foo:bar' is not a data spec; use mini"),
        ("mnii", "did you mean mini"),
        ("csv:/definitely/missing.csv", "does not exist; csv: takes a file: a CSV with header ref,x0,x1,p"),
        ("/definitely/missing.csv", "triplets can be a CSV with header ref,x0,x1,p"),
        ("nights", "needs a path"),
        ("nights:/definitely/not/here", "data.csv does not exist"),
        ("mini:holdout", "unknown mini split 'holdout'"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        open_triplets(spec)


def test_a_path_given_as_a_spec_gets_the_spec_that_fits(tmp_path, nights_dir, csv_set):
    """A folder of images, a NIGHTS or BAPPS root, or a CSV file passed without its kind: the
    error names the spec that fits, with an example line."""
    from conftest import random_image, save_png

    images = tmp_path / "photos"
    images.mkdir()
    save_png(images / "a.png", random_image(np.random.default_rng(0)))
    with pytest.raises(DataError, match="is a folder of images, not 2AFC triplets: triplets need a CSV") as info:
        open_triplets(str(images))
    assert "ref.png,a.png,b.png,0.75" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match=f"looks like a NIGHTS root: use nights:{nights_dir}"):
        open_triplets(str(nights_dir))
    with pytest.raises(DataError, match="use csv:"):
        open_triplets(str(csv_set))
    with pytest.raises(DataError, match="is a folder; csv: takes a file"):
        open_triplets(f"csv:{images}")


def test_nights_bad_split(nights_dir):
    with pytest.raises(DataError, match="unknown NIGHTS split"):
        open_triplets(f"nights:{nights_dir}:dev")


def test_corrupt_and_missing_images_name_their_path(nights_dir):
    bad = nights_dir / "distort" / "001_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = open_triplets(f"nights:{nights_dir}:test")
    with pytest.raises(DataError, match=str(bad)):
        data[1]
    # through worker processes the error keeps its one-line form
    with pytest.raises(DataError, match=str(bad)) as info:
        list(iter_batches(triplet_loader(data, batch_size=2, workers=1)))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_image(nights_dir / "missing.png")


def test_loader_batches(nights_dir):
    data = open_triplets(f"nights:{nights_dir}:test", size=16)
    batches = list(iter_batches(triplet_loader(data, batch_size=2, workers=0)))
    assert [b["ref"].shape[0] for b in batches] == [2, 1]
    assert batches[0]["index"].tolist() == [0, 1]


def test_mini_is_deterministic_and_well_formed():
    a_imgs, a_p, a_f = mini_mod.generate_split("val", 40, seed=5)
    b_imgs, b_p, b_f = mini_mod.generate_split("val", 40, seed=5)
    assert np.array_equal(a_imgs, b_imgs) and np.array_equal(a_p, b_p) and a_f == b_f
    assert a_imgs.shape == (40, 3, 3, 64, 64) and a_imgs.dtype == np.uint8
    assert set(np.unique(a_p)) <= {0.0, 1.0} and 0 < a_p.mean() < 1
    assert mini_mod.manifest_hash() == mini_mod.manifest_hash()
    test = open_triplets("mini")
    assert len(test) >= 500 and len(open_triplets("mini:train")) > len(test)
    assert len(set(test.groups())) >= 8
    splits = mini_mod.SPLIT_SOURCES
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))
    root = mini_mod.build_mini()
    assert root.name.endswith(mini_mod.manifest_hash())
    # the weaker distortion is the labelled choice: plain l2 agrees with it more often than not
    item = test[0]
    assert item["ref"].shape == (3, 64, 64)
    agree = []
    for i in range(300):
        t = test[i]
        d0, d1 = ((t["ref"] - t[k]).pow(2).mean() for k in ("x0", "x1"))
        agree.append(float((d1 < d0) == (float(t["p"]) == 1.0)))
    assert 0.6 < sum(agree) / len(agree) < 0.95  # 72.4 % on the full split (README); never a coin flip


def test_flipped_mini_labels_are_detected_and_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTSIM_CACHE", str(tmp_path / "cache"))
    clean = open_triplets("mini", limit=200)
    p_file = next((tmp_path / "cache").glob("mini-*/test_p.npy"))
    np.save(p_file, 1 - np.load(p_file))  # flip every label
    again = open_triplets("mini", limit=200)
    assert "failed verification" in capsys.readouterr().err
    assert all(float(again[i]["p"]) == float(clean[i]["p"]) for i in range(200))


def test_a_cache_folder_without_manifest_is_rebuilt_not_wedged(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTSIM_CACHE", str(tmp_path))
    builds = []

    def write(folder: Path) -> dict:
        builds.append(1)
        (folder / "a.bin").write_bytes(b"payload")
        return {}

    root = build_cached("thing", "abc", write)
    assert build_cached("thing", "abc", write) == root and len(builds) == 1
    (root / "manifest.json").unlink()
    assert (build_cached("thing", "abc", write) / "a.bin").read_bytes() == b"payload" and len(builds) == 2
    (root / "a.bin").write_bytes(b"")  # a zero-byte file
    build_cached("thing", "abc", write)
    assert len(builds) == 3 and verified_file(
        root / "a.bin", json.loads((root / "manifest.json").read_text())["files"]["a.bin"]
    )


def test_dataset_identity_follows_content_not_the_spec_string(tmp_path):
    rng = np.random.default_rng(3)
    ids = []
    for name in ("one", "two"):
        root = tmp_path / name
        for k in ("r", "a", "b"):
            save_png(root / f"{k}.png", random_image(rng, 8))
        (root / "data.csv").write_text("ref,x0,x1,p\nr.png,a.png,b.png,1\n")
        ids.append(open_triplets(f"csv:{root / 'data.csv'}").identity)
    assert ids[0] != ids[1]
    save_png(tmp_path / "one" / "r.png", random_image(rng, 8))
    os.utime(tmp_path / "one" / "r.png", ns=(1, 1))
    assert open_triplets(f"csv:{tmp_path / 'one' / 'data.csv'}").identity != ids[0]


def test_nights_votes_are_read_by_the_votes_column(tmp_path):
    root = _nights(tmp_path, [("5", "1", "6"), ("0", "1", "6"), ("2", "4", "6"), ("1", "0", "7")])
    assert [round(float(t["p"]), 4) for t in open_triplets(f"nights:{root}")] == [
        round(1 / 6, 4),
        1.0,
        round(4 / 6, 4),
        0.0,
    ]


@pytest.mark.parametrize(
    "row, match",
    [
        (("0", "7", "6"), "exceeds votes"),
        (("-1", "7", "6"), "negative vote"),
        (("0", "nan", "6"), "finite"),
        (("0", "1.5", "6"), "neither votes"),
        (("3", "3", "-6"), "positive count"),
    ],
)
def test_bad_nights_rows_are_refused_with_their_line(tmp_path, capsys, row, match):
    root = _nights(tmp_path, [("0", "1", "6"), row])
    code, _, err = run(["score", "--metric", "l2", "--data", f"nights:{root}"], capsys)
    line = one_error_line(err)
    assert code == 2 and match in line and "data.csv:3" in line


@pytest.mark.parametrize("judgement", [1.5, -0.2, float("nan")])
def test_bad_bapps_judgements_are_refused(bapps_dir, judgement, capsys):
    np.save(bapps_dir / "2afc" / "val" / "cnn" / "judge" / "000001.npy", np.array([judgement], dtype=np.float32))
    code, _, err = run(["score", "--metric", "l2", "--data", f"bapps:{bapps_dir}:val"], capsys)
    assert code == 2 and "outside [0, 1]" in one_error_line(err)


def test_16_bit_and_float_images_load_by_their_real_range(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 127.5, dtype=np.float32), mode="F").save(tmp_path / "f255.tif")
    for name in ("g16.png", "f.tif", "f255.tif"):
        x = load_image(tmp_path / name)
        assert x.shape == (3, 8, 8) and torch.allclose(x, torch.full_like(x, 0.5), atol=1e-4), name
    assert torch.allclose(load_image(tmp_path / "g16.png", 4), torch.full((3, 4, 4), 0.5), atol=1e-4)
    Image.fromarray(np.full((8, 8), 1e6, dtype=np.float32), mode="F").save(tmp_path / "huge.tif")
    with pytest.raises(DataError, match="range is unknown"):
        load_image(tmp_path / "huge.tif")


def test_oversized_images_fail_on_their_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 50000, 50000)
    with pytest.raises(DataError, match="bomb.png"):
        load_image(bomb)
    save_png(tmp_path / "small.png", random_image(np.random.default_rng(0), 40))
    monkeypatch.setenv("ROBUSTSIM_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="40x40 pixels, over the 1000 cap"):
        load_image(tmp_path / "small.png")


def test_limit_stops_reading_the_annotation_file(csv_set):
    with csv_set.open("a") as f:
        f.write("r0.png,a0.png,b0.png,7\n")  # a bad row after the limit is never parsed
    assert len(open_triplets(f"csv:{csv_set}", limit=3)) == 3
    with pytest.raises(DataError, match="outside"):
        open_triplets(f"csv:{csv_set}")


def test_allow_outside_lets_a_csv_name_other_folders(csv_set, tmp_path):
    other = tmp_path / "other" / "elsewhere.csv"
    other.parent.mkdir()
    other.write_text(f"ref,x0,x1,p\n{csv_set.parent / 'r0.png'},{csv_set.parent / 'a0.png'},../set/b0.png,1\n")
    assert run_cli(["score", "--metric", "l2", "--data", f"csv:{other}"]) == 2
    assert run_cli(["score", "--metric", "l2", "--data", f"csv:{other}", "--allow-outside"]) == 0


NIGHTS_HEADER = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet"


def _nights(tmp_path: Path, votes: list[tuple[str, str, str]]) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "nights"
    rows = [NIGHTS_HEADER]
    for i, (left, right, n) in enumerate(votes):
        for sub in (f"ref/{i}.png", f"distort/{i}_0.png", f"distort/{i}_1.png"):
            save_png(root / sub, random_image(rng, 8))
        rows.append(f"{i},{left},{right},{n},ref/{i}.png,distort/{i}_0.png,distort/{i}_1.png,test,True")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A small PNG file whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
