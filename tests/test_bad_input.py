"""Bad input, as a hostile or careless user gives it: every case asserts the exit status, that the message names
the file or option with what was expected and what was found, and that nothing on disk changed (the tree is
hashed before and after). Small real data: latents of Fashion-MNIST images through the shipped VQ-GAN."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zlib
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from rissole.cli.main import main as rissole
from rissole_export.cli import main as rissole_export
from rissole_runtime.cli import main as rissole_run

ROOT = Path(__file__).resolve().parent.parent
N_ROWS = 64


# ------------------------------------------------------------------ helpers
def tree_hash(root: Path) -> dict[str, str]:
    """Every path under root (itself included) -> sha256 of a file, 'dir', or 'link:TARGET'."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames + ([""] if dirpath == str(root) else []):
            p = Path(dirpath) / name if name else Path(dirpath)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link:{os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(cli: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a CLI in-process; argparse's exit and the command's status both count."""
    capsys.readouterr()
    try:
        rc = cli([str(a) for a in argv])
    except SystemExit as exc:
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def refused(cli: Callable[[list[str]], int], argv: list[Any], where: Path, mentions: list[str],
            capsys: pytest.CaptureFixture[str], rc: int = 2) -> str:
    """The command must exit with `rc`, its stderr must name everything in `mentions`, show no traceback, and
    leave the tree under `where` exactly as it was."""
    before = tree_hash(where)
    code, err = run(cli, argv, capsys)
    assert code == rc, f"exit {code}, expected {rc}; stderr:\n{err}"
    assert "Traceback" not in err
    for text in mentions:
        assert text in err, f"{text!r} not in the message:\n{err}"
    assert tree_hash(where) == before, "the command changed what was on disk"
    return err


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """64 Fashion-MNIST training images -> latents (shipped VQ-GAN) -> a g = 2 database with exact k = 5 block-0
    tables, and one with full-latent tables (the key mode of the shipped RISSOLE)."""
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN
    from rissole.retrieval import build_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    d = tmp_path_factory.mktemp("real")
    data = load_source("fmnist:train", limit=N_ROWS)
    h = load_checkpoint(SHIPPED_VQGAN).weights_hash()
    encode_images(load_vqgan(SHIPPED_VQGAN), data.images, d / "lat.npy", str(SHIPPED_VQGAN), h, "fmnist:train",
                  labels=data.labels, progress=False)
    db = build_database(d / "lat.npy", d / "db", grid=2, progress=False)
    make_tables(db, KeySet(db, "block0"), "exact", {}, k=5, progress=False)
    shipped = build_database(d / "lat.npy", d / "db-latent", grid=2, progress=False)  # the shipped RISSOLE's key mode
    make_tables(shipped, KeySet(shipped, "latent"), "exact", {}, k=5, progress=False)
    return {"dir": d, "latents": d / "lat.npy", "db": d / "db", "db_latent": d / "db-latent", "vqgan": SHIPPED_VQGAN}


def copy_db(real: dict[str, Path], dest: Path) -> Path:
    shutil.copytree(real["db"], dest)
    return dest


def rewrite_manifest(db: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    m = json.loads((db / "manifest.json").read_text())
    out = change(m)  # edits m in place, or returns what replaces it (a list)
    (db / "manifest.json").unlink()  # delete-and-recreate: copies may share inodes with fixtures
    (db / "manifest.json").write_text(json.dumps(out if isinstance(out, list) else m))


def unrelated_dir(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "p.txt").write_text("keep me\n")
    return p


# ------------------------------------------------------------------ 1. never destroy what is at --out
def test_db_build_never_replaces_an_unrelated_directory_or_file(real, tmp_path, capsys) -> None:  # noqa: ANN001
    x = unrelated_dir(tmp_path / "x")
    for force in ([], ["--force"]):
        refused(rissole, ["db", "build", real["latents"], "--out", x, "--grid", 2, *force], tmp_path,
                [str(x), "expected nothing there or a block database", "found a directory with 1 entry",
                 "even with --force"], capsys)
    f = tmp_path / "plain"
    f.write_text("keep\n")
    refused(rissole, ["db", "build", real["latents"], "--out", f, "--force"], tmp_path,
            [str(f), "found a file of 5 bytes"], capsys)


def test_db_build_replaces_a_database_only_with_force(real, tmp_path, capsys) -> None:  # noqa: ANN001
    db = copy_db(real, tmp_path / "db")
    refused(rissole, ["db", "build", real["latents"], "--out", db, "--grid", 2], tmp_path,
            [str(db), "a block database is already there", "--force"], capsys)
    rc, err = run(rissole, ["db", "build", real["latents"], "--out", db, "--grid", 1, "--force"], capsys)
    assert rc == 0, err
    assert json.loads((db / "manifest.json").read_text())["grid"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]  # no temporaries, no lock file left


def test_the_swap_never_touches_a_sibling_named_old(real, tmp_path, capsys) -> None:  # noqa: ANN001
    from rissole.paths import SHIPPED_VQGAN

    old = unrelated_dir(tmp_path / "y.old")
    before = tree_hash(old)
    rc, err = run(rissole, ["checkpoint", "slim", SHIPPED_VQGAN, "--out", tmp_path / "y"], capsys)
    assert rc == 0, err
    rc, err = run(rissole, ["checkpoint", "slim", SHIPPED_VQGAN, "--out", tmp_path / "y", "--force", "--half"], capsys)
    assert rc == 0, err
    assert tree_hash(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y", "y.old"]


def test_checkpoint_slim_and_export_refuse_unrelated_outputs(real, tmp_path, capsys) -> None:  # noqa: ANN001
    from rissole.paths import SHIPPED_RISSOLE, SHIPPED_VQGAN

    x = unrelated_dir(tmp_path / "x")
    refused(rissole, ["checkpoint", "slim", SHIPPED_VQGAN, "--out", x, "--force"], tmp_path,
            [str(x), "expected nothing there or a checkpoint"], capsys)
    existing = tmp_path / "ck"
    shutil.copytree(SHIPPED_VQGAN, existing)
    refused(rissole, ["checkpoint", "slim", SHIPPED_VQGAN, "--out", existing], tmp_path,
            [str(existing), "a checkpoint is already there", "--force"], capsys)
    refused(rissole_export, [SHIPPED_RISSOLE, "--out", x, "--force"], tmp_path,
            [str(x), "expected nothing there or a edge bundle"], capsys)
    db = copy_db(real, tmp_path / "db")
    refused(rissole_export, [SHIPPED_RISSOLE, "--out", db, "--force"], tmp_path,
            [str(db), "found a rissole block database"], capsys)


def test_file_outputs_refuse_directories_and_other_kinds(real, tmp_path, capsys) -> None:  # noqa: ANN001
    x = unrelated_dir(tmp_path / "x")
    refused(rissole, ["encode", "--source", "fmnist:test", "--limit", 4, "--out", x], tmp_path,
            [str(x), "expected nothing there or a latents file", "found a directory"], capsys)
    refused(rissole, ["sample", "--db", real["db"], "-n", 2, "--out", x], tmp_path,
            [str(x), "expected nothing there or a PNG image"], capsys)
    # --npy onto a latents file (expensive to remake) is not a sample array: refused
    refused(rissole, ["sample", "--db", real["db"], "-n", 2, "--out", tmp_path / "s.png", "--npy", real["latents"]],
            real["dir"], [str(real["latents"]), "found a rissole latents file"], capsys)
    # encode beside an unrelated .json of the same stem: the manifest would overwrite it
    (tmp_path / "z.json").write_text("{}")
    refused(rissole, ["encode", "--source", "fmnist:test", "--limit", 4, "--out", tmp_path / "z.npy"], tmp_path,
            [str(tmp_path / "z.json"), "expected nothing there"], capsys)


_HOLD = """
import sys
from rissole.fileio import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_into_the_same_out_fails_clearly(real, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "db"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(rissole, ["db", "build", real["latents"], "--out", out, "--grid", 2], tmp_path,
                [str(out), f"(pid {holder.pid}) is writing here right now", "locked"], capsys)
    finally:
        holder.communicate("")
    rc, err = run(rissole, ["db", "build", real["latents"], "--out", out, "--grid", 2], capsys)
    assert rc == 0, err  # the lock went with its holder


def test_stale_temporaries_of_dead_runs_are_cleaned_and_only_those(tmp_path) -> None:  # noqa: ANN001
    from rissole.checkpoint import load_checkpoint, save_checkpoint
    import torch

    dead = 2**22 + 12345  # above pid_max on Linux (4194304): no such process
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead += 1
    ck = tmp_path / "checkpoint"
    stale_dir = tmp_path / f".checkpoint.{dead}-deadbeef.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".checkpoint.{os.getppid()}-cafebabe.tmp"  # a live process's write in progress
    live.mkdir()
    foreign = tmp_path / ".checkpoint.notours.tmp"
    foreign.write_text("someone else's")
    save_checkpoint(ck, "vqgan", 1, {"model": {}}, {"model": {"w": torch.zeros(2)}})
    assert not stale_dir.exists()
    assert live.is_dir() and foreign.read_text() == "someone else's"
    # a crash between the two renames of a swap leaves only the old version: the next write puts it back
    os.replace(ck, tmp_path / f".checkpoint.{dead}-0badf00d.old")
    from rissole.fileio import output_lock

    with output_lock(ck):
        pass
    assert load_checkpoint(ck).step == 1


# ------------------------------------------------------------------ 2. nothing a bundle names leaves it
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_export import tiny_export

    return tiny_export(tmp_path_factory.getbasetemp())["bundle"]


def _bundle_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, copy_function=shutil.copy2)
    return dest


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../etc/passwd", "db/../../outside.bin"])
def test_runtime_refuses_manifest_paths_leaving_the_bundle(bundle, tmp_path, capsys, name) -> None:  # noqa: ANN001
    b = _bundle_copy(bundle, tmp_path / "b")
    (tmp_path / "outside.bin").write_bytes(b"secret")
    m = json.loads((b / "manifest.json").read_text())
    m["files"][name] = {"role": "x", "bytes": 6, "sha256": hashlib.sha256(b"secret").hexdigest()}
    (b / "manifest.json").write_text(json.dumps(m))
    err = refused(rissole_run, [b, "--verify", "-n", 1, "--out", tmp_path / "g.png"], tmp_path,
                  [name, "expected a relative path inside", "nothing outside the directory is opened"], capsys)
    assert "verified" not in err


def test_runtime_refuses_a_symlink_resolving_outside(bundle, tmp_path, capsys) -> None:  # noqa: ANN001
    b = _bundle_copy(bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere.npy"
    shutil.copy(b / "db" / "blocks.npy", outside)
    (b / "db" / "blocks.npy").unlink()
    (b / "db" / "blocks.npy").symlink_to(outside)
    refused(rissole_run, [b, "-n", 1, "--out", tmp_path / "g.png"], tmp_path,
            [str(b / "db" / "blocks.npy"), f"resolves to {outside}", "outside"], capsys)


def test_runtime_refuses_malformed_manifests(bundle, tmp_path, capsys) -> None:  # noqa: ANN001
    b = _bundle_copy(bundle, tmp_path / "b")
    good = json.loads((b / "manifest.json").read_text())
    cases = [
        ([1, 2], ["expected a mapping at the top level, found a list"]),
        ({**good, "model": {k: v for k, v in good["model"].items() if k != "grid"}}, ["'model.grid' is missing"]),
        ({**good, "files": {**good["files"], "decoder.onnx": {"bytes": "12", "sha256": "x"}}},
         ["'files.decoder.onnx.bytes'", "expected an integer >= 0", "found '12' (str)"]),
        ({**good, "model": {**good["model"], "retrieval": "no"}}, ["'model.retrieval'", "expected true/false",
                                                                   "found 'no' (str)"]),
    ]
    for manifest, mentions in cases:
        (b / "manifest.json").write_text(json.dumps(manifest))
        refused(rissole_run, [b, "-n", 1, "--out", tmp_path / "g.png"], tmp_path,
                [str(b / "manifest.json"), *mentions], capsys)


def test_runtime_refuses_non_finite_latents_before_decoding(bundle) -> None:  # noqa: ANN001
    from rissole.errors import DataError
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import open_sampler

    edge = open_sampler(open_bundle(bundle), "cpu", 1)
    lat = np.zeros((2, 10, 8, 8), np.float32)
    lat[1, 3, 2, 1] = np.nan
    with pytest.raises(DataError, match=r"the sampled latents \(before decoding\): 1 of 1280 values are not finite "
                                        r"\(first at index \[1, 3, 2, 1\]"):
        edge.decode(lat)


# ------------------------------------------------------------------ 3. a full disk
@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 1 MiB tmpfs, where the test may mount one (root, mount permitted); otherwise the test is skipped."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_db_build_on_a_full_disk_fails_clearly_and_keeps_the_old_database(real, small_disk, capsys) -> None:  # noqa: ANN001
    db = copy_db(real, small_disk / "db")  # 160 KiB of blocks: fits
    big = real["dir"] / "big.npy"  # the 64 real latents 8 times over -> 1.25 MiB of blocks: does not
    if not big.exists():
        np.save(big, np.concatenate([np.load(real["latents"])] * 8))
        m = json.loads(real["latents"].with_suffix(".json").read_text())
        big.with_suffix(".json").write_text(json.dumps({**m, "shape": [8 * N_ROWS, *m["shape"][1:]],
                                                        "count": 8 * N_ROWS, "labels": None}))
    refused(rissole, ["db", "build", big, "--out", db, "--grid", 2, "--force"], small_disk,
            [f"{db}/blocks.npy: the block database needs 1.3 MiB", "MiB are free", "nothing was written"], capsys)


def test_a_writer_hitting_enospc_says_so_and_removes_its_temporary(small_disk, capsys) -> None:  # noqa: ANN001
    from rissole.paths import SHIPPED_VQGAN

    (small_disk / "filler").write_bytes(b"x" * (1 << 19))
    refused(rissole, ["checkpoint", "slim", SHIPPED_VQGAN, "--out", small_disk / "ck"], small_disk,
            [str(small_disk / "ck"), "no space left on device", "The temporary was removed"], capsys)


def test_a_memmap_that_cannot_fit_is_refused_before_any_write(small_disk) -> None:  # noqa: ANN001
    from rissole.errors import DataError
    from rissole.fileio import create_memmap

    with pytest.raises(DataError, match=r"needs 4\.0 MiB, but only"):
        create_memmap(small_disk / "x.npy", np.float32, (1024, 1024), "the test array")
    assert not (small_disk / "x.npy").exists() or (small_disk / "x.npy").stat().st_size < 4096


# ------------------------------------------------------------------ 4, 5. non-finite and out-of-range options
OPTION_CASES = [
    (rissole, ["sample", "--guidance", "nan"], "--guidance", "'nan'"),
    (rissole, ["sample", "--guidance", "inf"], "--guidance", "'inf'"),
    (rissole, ["sample", "--guidance=-1e30"], "--guidance", "'-1e30'"),
    (rissole, ["sample", "--eta", "nan"], "--eta", "'nan'"),
    (rissole, ["sample", "-n", "0"], "-n", "'0'"),
    (rissole, ["sample", "-n", "-1"], "-n", "'-1'"),
    (rissole, ["sample", "--seed", "-1"], "--seed", "'-1'"),
    (rissole, ["sample", "--steps", "0"], "--steps", "'0'"),
    (rissole, ["sample", "--steps", "5000"], "--steps", "'5000'"),
    (rissole, ["sample", "--top-m", "0"], "--top-m", "'0'"),
    (rissole, ["sample", "--top-m", "2"], "--top-m", "'2'"),
    (rissole, ["sample", "--top-m", "nan"], "--top-m", "'nan'"),
    (rissole, ["sample", "-k", "-3"], "-k", "'-3'"),
    (rissole, ["sample", "--top-k", "-5"], "--top-k", "'-5'"),
    (rissole, ["sample", "--temperature", "0"], "--temperature", "'0'"),
    (rissole, ["sample", "--temperature", "nan"], "--temperature", "'nan'"),
    (rissole, ["demo", "--steps", "0"], "--steps", "'0'"),
    (rissole, ["db", "build", "x.npy", "--out", "y", "--grid", "0"], "--grid", "'0'"),
    (rissole, ["db", "neighbours", "db", "-k", "0"], "-k", "'0'"),
    (rissole, ["encode", "--out", "z.npy", "--batch-size", "0"], "--batch-size", "'0'"),
    (rissole, ["train", "--config", "c.yaml", "--out", "r", "--stop-after", "0"], "--stop-after", "'0'"),
    (rissole_run, ["bundle", "--steps", "0"], "--steps", "'0'"),
    (rissole_run, ["bundle", "--guidance", "nan"], "--guidance", "'nan'"),
    (rissole_run, ["bundle", "--eta", "nan"], "--eta", "'nan'"),
    (rissole_run, ["bundle", "--top-m", "nan"], "--top-m", "'nan'"),
    (rissole_run, ["bundle", "--temperature", "0"], "--temperature", "'0'"),
    (rissole_run, ["bundle", "-n", "0"], "-n", "'0'"),
    (rissole_export, ["ckpt", "--out", "b", "--guidance", "inf"], "--guidance", "'inf'"),
    (rissole_export, ["ckpt", "--out", "b", "--max-samples", "0"], "--max-samples", "'0'"),
    (rissole_export, ["ckpt", "--out", "b", "--opset", "9"], "--opset", "'9'"),
]


@pytest.mark.parametrize("cli,argv,option,found", OPTION_CASES, ids=[" ".join(c[1]) for c in OPTION_CASES])
def test_options_are_validated_at_parse_time_with_the_valid_range(cli, argv, option, found, tmp_path, capsys,
                                                                   monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    err = refused(cli, argv, tmp_path, [f"argument {option}", "expected", f"found {found}"], capsys)
    assert any(w in err for w in ("in [", "in (", ">=")), err  # the valid range is stated


def test_db_build_refuses_non_finite_latents(real, tmp_path, capsys) -> None:  # noqa: ANN001
    lat = tmp_path / "nan.npy"
    arr = np.load(real["latents"]).copy()
    arr[17, 2, 3, 4] = np.nan
    np.save(lat, arr)
    shutil.copy(real["latents"].with_suffix(".json"), lat.with_suffix(".json"))
    m = json.loads(lat.with_suffix(".json").read_text())
    m["labels"] = None
    lat.with_suffix(".json").write_text(json.dumps(m))
    refused(rissole, ["db", "build", lat, "--out", tmp_path / "db", "--grid", 2], tmp_path,
            [f"{lat} rows 0..{N_ROWS - 1} (latents)", "1 of", "not finite", "[17, 2, 3, 4]", "expected finite"], capsys)


def test_db_verify_refuses_non_finite_blocks(real, tmp_path, capsys) -> None:  # noqa: ANN001
    from rissole.fileio import sha256_file

    db = copy_db(real, tmp_path / "db")
    blocks = np.load(db / "blocks.npy")
    blocks[1, 5, 7] = np.inf
    (db / "blocks.npy").unlink()
    np.save(db / "blocks.npy", blocks)
    sha = sha256_file(db / "blocks.npy")
    rewrite_manifest(db, lambda m: m.update(sha256=sha))
    for name in ("train", "database"):  # the tables name the checksum of the blocks they were made for
        t = db / "neighbours" / f"{name}.json"
        meta = json.loads(t.read_text())
        t.unlink()
        t.write_text(json.dumps({**meta, "db_sha256": sha}))
    refused(rissole, ["db", "verify", db], tmp_path, [str(db / "blocks.npy"), "not finite", "[1, 5, 7]"], capsys)


def test_sampled_latents_that_go_non_finite_are_refused_before_decoding(real, tmp_path, capsys) -> None:  # noqa: ANN001
    from safetensors.torch import load_file, save_file

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**_tiny_rissole_config(real["db"]), "train": {
        "steps": 1, "batch_size": 8, "warmup_steps": 1, "ema_decay": None, "seed": 1}}))
    rc, err = run(rissole, ["train", "--config", cfg, "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    ck = tmp_path / "run" / "final"
    w = load_file(str(ck / "model.safetensors"))
    name = next(k for k, v in w.items() if v.is_floating_point() and v.dim() >= 2)
    w[name] = w[name].clone().fill_(float("nan"))  # a broken model: every sample goes nan
    (ck / "model.safetensors").unlink()
    save_file(w, str(ck / "model.safetensors"))
    refused(rissole, ["sample", "--ckpt", ck, "--db", real["db"], "-n", 2, "--steps", 2, "--out", tmp_path / "s.png",
                      "--npy", tmp_path / "s.npy"], tmp_path,
            ["the sampled latents (before decoding)", "not finite", "expected finite numbers", "Nothing was written"],
            capsys)


def test_sampling_is_batched_and_streamed_with_memory_bounded_by_the_batch(tmp_path) -> None:  # noqa: ANN001
    from rissole.cli.sample_files import sample_to_files
    from rissole_runtime.batches import BATCH, GRID_MAX, batch_seed

    n, calls = 24000, []

    def generate(sl: slice, seed: int) -> np.ndarray:  # a stand-in sampler: deterministic images of the seed
        calls.append((sl.stop - sl.start, seed))
        return np.random.default_rng(seed).integers(0, 256, (sl.stop - sl.start, 1, 32, 32), dtype=np.uint8)

    tracemalloc.start()
    kept = sample_to_files(n, 7, str(tmp_path / "all.npy"), generate)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total = n * 32 * 32
    assert max(c[0] for c in calls) == BATCH and sum(c[0] for c in calls) == n
    assert kept.shape == (GRID_MAX, 1, 32, 32)
    on_disk = np.load(tmp_path / "all.npy", mmap_mode="r")
    assert on_disk.shape == (n, 1, 32, 32)
    last = n - (n - 1) % BATCH - 1
    np.testing.assert_array_equal(on_disk[last:], generate(slice(last, n), batch_seed(7, last, n)))
    np.testing.assert_array_equal(on_disk[:GRID_MAX], kept)
    bound = 3 * GRID_MAX * 32 * 32 + 4 * BATCH * 32 * 32  # the grid's samples (kept, joined) and a few batches
    assert peak < bound < total / 5, f"peak {peak} bytes while sampling {total} bytes of images"
    assert batch_seed(7, 0, 64) == 7  # one batch: the seed itself, as before


# ------------------------------------------------------------------ 6. tracebacks -> errors: manifests and configs
@pytest.mark.parametrize("change,mentions", [
    (lambda m: m.pop("grid"), ["key 'grid' is missing", "expected an integer >= 1"]),
    (lambda m: m.pop("sha256"), ["key 'sha256' is missing", "expected a string"]),
    (lambda m: m.pop("checkpoint_hash"), ["key 'checkpoint_hash' is missing"]),
    (lambda m: [m], ["expected a mapping at the top level, found a list"]),
    (lambda m: m.update(grid=3), ["inconsistent manifest", "num_blocks is 4, expected grid * grid = 9"]),
    (lambda m: m.update(checkpoint_hash="xyz"), ["checkpoint_hash is 'xyz', expected 64 lowercase hex digits"]),
    (lambda m: m.update(rows="64"), ["key 'rows': expected an integer >= 1, found '64' (str)"]),
])
def test_db_inspect_and_verify_refuse_bad_manifests(real, tmp_path, capsys, change, mentions) -> None:  # noqa: ANN001
    db = copy_db(real, tmp_path / "db")
    rewrite_manifest(db, change)
    for action in (["inspect", db, "--spot-check", 0], ["verify", db]):
        refused(rissole, ["db", *action], tmp_path, [str(db / "manifest.json"), *mentions], capsys)


def test_a_database_manifest_cannot_name_files_outside_it(real, tmp_path) -> None:  # noqa: ANN001
    from rissole.errors import DataError
    from rissole.retrieval import open_database

    db = copy_db(real, tmp_path / "db")
    rewrite_manifest(db, lambda m: m.update(labels="../../../etc/passwd"))
    with pytest.raises(DataError, match=r"names '\.\./\.\./\.\./etc/passwd'; expected a relative path inside"):
        open_database(db).labels()


def test_float_neighbour_ids_are_refused(real, tmp_path, capsys) -> None:  # noqa: ANN001
    db = copy_db(real, tmp_path / "db")
    ids = np.load(db / "neighbours" / "train.ids.npy").astype(np.float64)
    (db / "neighbours" / "train.ids.npy").unlink()
    np.save(db / "neighbours" / "train.ids.npy", ids)
    refused(rissole, ["db", "verify", db], tmp_path,
            [str(db / "neighbours" / "train.ids.npy"), "ids float64", "expected integer ids"], capsys)


def _tiny_rissole_config(db: Path) -> dict[str, Any]:
    from rissole.paths import SHIPPED_VQGAN

    return {"model": {"latent_channels": 10, "latent_size": 8, "grid": 2, "k": 3, "model_channels": 16,
                      "channel_mult": [1, 2], "num_res_blocks": 1, "attention": False, "num_heads": 2,
                      "prediction": "v"},
            "data": {"db": str(db), "table": "train", "vqgan": str(SHIPPED_VQGAN)},
            "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "ema_decay": 0.9, "ckpt_every": 1000,
                      "seed": 1}}


@pytest.mark.parametrize("edit,mentions", [
    (lambda c: c.pop("model"), ["config section 'config' is missing ['model']"]),
    (lambda c: c["model"].update(k="ten"), ["config key model.k: expected an integer, found 'ten' (str)"]),
    (lambda c: c["model"].update(retrieval="no"), ["config key model.retrieval: expected true or false, found 'no'"]),
    (lambda c: c["model"].update(grid=-2), ["config key model.grid: expected a value >= 1, found -2"]),
    (lambda c: c["train"].update(lr="fast"), ["config key train.lr: expected a number, found 'fast' (str)"]),
    (lambda c: c["train"].update(steps=0), ["config key train.steps: expected a value >= 1, found 0"]),
    (lambda c: c["train"].update(lr=float("nan")), ["config key train.lr: expected a number, found nan"]),
    (lambda c: c.update(model=[1, 2]), ["config key 'model': expected a mapping (a section), found a list"]),
    (lambda c: c["data"].pop("db"), ["config section 'data' is missing ['db']"]),
    (lambda c: c.update(diffusion={"num_timesteps": "many"}),
     ["key 'diffusion.num_timesteps': expected an integer >= 1, found 'many' (str)"]),
    (lambda c: c.update(diffusion={"beta_start": 0.5, "beta_end": 0.1}),
     ["diffusion: expected 0 < beta_start < beta_end < 1, found 0.5, 0.1"]),
])
def test_train_refuses_bad_configs_naming_file_and_key(real, tmp_path, capsys, edit, mentions) -> None:  # noqa: ANN001
    cfg = _tiny_rissole_config(real["db"])
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    refused(rissole, ["train", "--config", path, "--out", tmp_path / "run"], tmp_path, [str(path), *mentions], capsys)


def test_vqgan_config_types_are_checked(tmp_path, capsys, tiny_vqgan_config) -> None:  # noqa: ANN001
    tiny_vqgan_config["model"]["n_embed"] = "many"
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(tiny_vqgan_config))
    refused(rissole, ["vqgan", "train", "--config", path, "--out", tmp_path / "run"], tmp_path,
            [str(path), "model.n_embed: expected an integer, found 'many' (str)"], capsys)


def test_resume_refuses_a_changed_config_unless_allowed_and_a_corrupt_trainer_state(real, tmp_path, capsys) -> None:  # noqa: ANN001
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_tiny_rissole_config(real["db"])))
    run_dir = tmp_path / "run"
    rc, err = run(rissole, ["train", "--config", cfg, "--out", run_dir, "--stop-after", 2], capsys)
    assert rc == 0, err
    refused(rissole, ["train", "--config", cfg, "--out", run_dir, "--resume", "--set", "train.lr=0.1"], tmp_path,
            [str(run_dir / "checkpoint" / "config.yaml"), "train.lr (0.001 -> 0.1)", "--allow-config-change"], capsys)
    refused(rissole, ["train", "--config", cfg, "--out", run_dir, "--resume", "--set", "model.k=2",
                      "--allow-config-change"], tmp_path, ["model config differs"], capsys)
    fresh = refused(rissole, ["train", "--config", cfg, "--out", run_dir], tmp_path, ["checkpoint exists", "--resume"],
                    capsys)
    assert str(run_dir) in fresh
    meta = run_dir / "checkpoint" / "trainer.json"
    saved = meta.read_bytes()
    meta.write_text("{not json")
    refused(rissole, ["train", "--config", cfg, "--out", run_dir, "--resume"], tmp_path,
            [str(meta), "corrupt trainer state", "expected the JSON the trainer wrote"], capsys)
    meta.write_bytes(saved)
    rc, err = run(rissole, ["train", "--config", cfg, "--out", run_dir, "--resume", "--set", "train.lr=0.002",
                            "--allow-config-change"], capsys)
    assert rc == 0, err
    assert yaml.safe_load((run_dir / "final" / "config.yaml").read_text())["train"]["lr"] == 0.002


# ------------------------------------------------------------------ 7. images: no silent wrong data, no bombs
def _bomb_png(path: Path, side: int = 100_000) -> None:
    """A PNG whose header claims side x side grey pixels (10^10), with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_by_its_header(real, tmp_path, capsys) -> None:  # noqa: ANN001
    folder = tmp_path / "imgs"
    folder.mkdir()
    _bomb_png(folder / "bomb.png")
    refused(rissole, ["encode", "--source", f"folder:{folder}", "--out", tmp_path / "z.npy"], tmp_path,
            [str(folder / "bomb.png"), "too many pixels", "expected an image of at most"], capsys)
    refused(rissole, ["sample", "--db", real["db_latent"], "--query", folder / "bomb.png", "-n", 1, "--out",
                      tmp_path / "s.png"], tmp_path, [str(folder / "bomb.png"), "too many pixels"], capsys)


def test_sixteen_bit_pngs_are_scaled_not_saturated(tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    from rissole.data import ImageFolder

    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "ramp8.png")
    f = ImageFolder(tmp_path, size=64, channels=1)
    a16, a8 = (f[f.files.index(tmp_path / n)] for n in ("ramp16.png", "ramp8.png"))
    assert (a16 >= 250).mean() < 0.05  # saturated, 97% would be white
    assert np.abs(a16.astype(int) - a8.astype(int)).max() <= 1  # the same picture as its 8-bit version


def test_transparency_is_composited_onto_white(tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    from rissole.data import ImageFolder

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half, opaque on the right
    rgba[:, 16:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    la = np.zeros((32, 32, 2), np.uint8)  # black grey+alpha, half transparent everywhere
    la[..., 1] = 128
    Image.fromarray(la, "LA").save(tmp_path / "b.png")
    p = Image.new("P", (32, 32), 0)
    p.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    p.save(tmp_path / "c.png", transparency=0)
    rgb = ImageFolder(tmp_path, size=32, channels=3)
    a, b, c = (rgb[i] for i in range(3))
    assert (a[:, :, :16] == 255).all()  # transparent red -> the white background, not red or grey
    np.testing.assert_array_equal(a[:, 5, 20], [255, 0, 0])
    assert abs(int(b[0, 0, 0]) - 127) <= 1  # 50% black over white
    assert (c == 255).all()  # the palette's transparent colour
