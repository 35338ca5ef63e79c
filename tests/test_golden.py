"""Golden samples of the three shipped heads: fixed seeds, a few steps, exact pixel statistics.

The numbers were recorded from the code before the head layer was restructured (one pipeline, one
sampling path, prediction conversion in rissole.diffusion); any change to what a seed samples, in
the noise, the neighbours, p_D, the v -> eps conversion, guidance or the RARM draw, changes them.
Only the `rissole` command line is used, so the test does not depend on the library's internal API.

The databases are small ones built here (the first 300 training images through the shipped
VQ-GAN, exact tables; the block tables keyed by the whole latent, as the shipped RISSOLE is), so
the test needs neither the shipped 60k-row databases nor minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rissole.cli.main import main as rissole
from rissole.paths import SHIPPED_RARM, SHIPPED_RDM, SHIPPED_RISSOLE

ROWS = 300


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("golden")
    lat = d / "lat.npy"
    steps = [
        ["encode", "--source", "fmnist:train", "--limit", str(ROWS), "--out", str(lat)],
        ["db", "build", str(lat), "--out", str(d / "blocks"), "--grid", "2"],
        ["db", "neighbours", str(d / "blocks"), "--backend", "exact", "--keys", "latent", "-k", "20"],
        ["embed", str(lat), "--embedder", "vq", "--rows", f"0:{ROWS // 2}", "--out", str(d / "a.npy")],
        ["embed", str(lat), "--embedder", "vq", "--rows", f"{ROWS // 2}:{ROWS}", "--out", str(d / "b.npy"),
         "--db", str(d / "emb")],
        ["db", "neighbours", str(d / "emb"), "--backend", "exact", "--keys", "latent", "-k", "20",
         "--queries", str(d / "a.npy")],
    ]
    for argv in steps:
        assert rissole(argv) == 0, argv
    return {"rissole": d / "blocks", "embedding": d / "emb", "latents": lat}


# (checkpoint, database, extra sampling flags) -> (sum of all uint8 pixels, pixels at PROBES)
PROBES = ((0, 0, 16, 16), (1, 0, 10, 20), (2, 0, 25, 8), (-1, 0, 5, 27))
CASES = {
    "rissole": (SHIPPED_RISSOLE, "rissole", ["--steps", "4"]),
    "rissole-guided-eta": (SHIPPED_RISSOLE, "rissole", ["--steps", "4", "--guidance", "2", "--eta", "1",
                                                        "--top-m", "0.5"]),
    "rdm": (SHIPPED_RDM, "embedding", ["--steps", "4"]),
    "rdm-guided-eta": (SHIPPED_RDM, "embedding", ["--steps", "4", "--guidance", "2", "--eta", "1", "--top-m", "0.5"]),
    "rarm": (SHIPPED_RARM, "embedding", ["--top-k", "50", "--temperature", "0.9"]),
    "rarm-guided": (SHIPPED_RARM, "embedding", ["--guidance", "2", "--top-m", "0.5"]),
}
# RARM: recorded before the head layer was restructured. RISSOLE and RDM: recorded again when x_T and the
# stochastic steps' noise moved to the numpy NoiseSource that rissole-run shares (the same seed gives the
# same image on the desktop and the device); the pre-restructuring code with only that change gave
# exactly the numbers then recorded, the restructured code too. All six recorded again when the shipped
# heads were retrained on first stage B (issue 19): new weights, no sampling code changed (the previous
# numbers passed with the previous checkpoints at the commit before). RISSOLE's two recorded again when the
# shipped model was retrained with full-latent keys (its database's tables made with --keys latent).
GOLDEN: dict[str, tuple[int, tuple[int, ...]]] = {
    "rarm": (186713, (255, 185, 1, 0)),
    "rarm-guided": (229679, (204, 228, 223, 0)),
    "rdm": (171397, (89, 133, 2, 0)),
    "rdm-guided-eta": (237848, (194, 220, 241, 0)),
    "rissole": (142038, (141, 188, 0, 1)),
    "rissole-guided-eta": (209246, (224, 220, 149, 0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_samples(case: str, databases: dict[str, Path], tmp_path: Path) -> None:
    ckpt, db, flags = CASES[case]
    out = tmp_path / "x.npy"
    argv = ["sample", "--ckpt", str(ckpt), "--db", str(databases[db]), "-n", "3", "--seed", "7",
            "--out", str(tmp_path / "grid.png"), "--npy", str(out), "--device", "cpu", *flags]
    assert rissole(argv) == 0
    x = np.load(out)
    assert x.dtype == np.uint8 and x.shape == (3, 1, 32, 32)
    found = (int(x.astype(np.int64).sum()), tuple(int(x[p]) for p in PROBES))
    assert found == GOLDEN[case]


def test_the_first_use_database_has_the_shipped_models_keys(databases: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`rissole demo` builds the shipped RISSOLE's database where its config's data.db says, with tables in
    the key mode it was trained with; the shipped model then samples from it (tables of another key mode
    are refused when loaded). Built here from the fixture's 300 latents instead of the 60k."""
    import rissole.paths as paths
    from rissole.config import load_config
    from rissole.retrieval import open_database
    from rissole.retrieval.neighbours import open_table

    cfg = load_config(SHIPPED_RISSOLE / "config.yaml")
    if "RISSOLE_DB" not in os.environ:
        assert paths.SHIPPED_DB == paths.REPO_ROOT / cfg["data"]["db"]
    monkeypatch.setattr(paths, "SHIPPED_DB", tmp_path / "db")
    monkeypatch.setattr(paths, "SHIPPED_LATENTS", databases["latents"])
    assert paths.ensure_shipped_database() == tmp_path / "db"
    db = open_database(tmp_path / "db")
    for name in ("train", "database"):
        assert open_table(db, name).meta["key_mode"] == cfg["model"]["key"]
    argv = ["sample", "--ckpt", str(SHIPPED_RISSOLE), "--db", str(tmp_path / "db"), "-n", "2", "--steps", "2",
            "--out", str(tmp_path / "grid.png"), "--device", "cpu"]
    assert rissole(argv) == 0
