"""Data-parallel training on the CPU (gloo, world size 2, one thread per rank): both ranks end with the same
parameters, equal to one process trained on the same global batch and data order; a run stopped and
resumed under DDP equals an uninterrupted one; torchrun drives `rissole train`; batch parts are checked."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from neighbour_data import one_thread  # noqa: F401  (autouse)
from neighbour_data import build_neighbour_data, rdm_config
from rissole_runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# --standalone: torchrun's rendezvous binds a free port itself (a port picked here and closed again could be
# taken by another process before torchrun binds it)
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives a rank, for a process spawned here."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})


def _rank_main(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, out: str) -> None:
    _rank_env(rank, world, port)
    torch.set_num_threads(1)
    try:
        trainer = fn(*args)
        torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_world(fn: Callable[..., Any], args: tuple, out: Path, world: int = 2) -> list[dict[str, torch.Tensor]]:
    """fn(*args) -> trainer on `world` gloo processes; each rank's final model parameters."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(world, free_port(), fn, args, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _command_rank(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    _rank_env(rank, world, port)
    from rissole.cli.main import main

    code = main(argv)
    Path(out, f"rank{rank}.txt").write_text(f"{code} {torch.distributed.is_initialized()}")


def child_error(stderr: str) -> str:
    """What a failed rank printed, without torchrun's long summary after it."""
    return stderr.split("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")[0][-4000:]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def nd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_neighbour_data(tmp_path_factory.mktemp("ddp"))


def rdm_cfg(nd: dict[str, Any], steps: int = 4, accumulate: int = 1) -> dict[str, Any]:
    cfg = rdm_config(nd["db_b"])
    cfg["train"].update(steps=steps, batch_size=16, ckpt_every=2, accumulate=accumulate)
    return cfg


def train_rdm_run(cfg: dict[str, Any], run: str, resume: bool = False, stop_after: int | None = None) -> Any:
    from rissole.heads.rdm.train import train_rdm

    return train_rdm(copy.deepcopy(cfg), run, resume=resume, stop_after=stop_after, progress=False)


def test_two_ranks_equal_one_process_on_the_global_batch(nd: dict[str, Any], tmp_path: Path) -> None:
    cfg = rdm_cfg(nd)
    single = train_rdm_run(cfg, str(tmp_path / "single")).model.state_dict()
    ranks = run_world(train_rdm_run, (cfg, str(tmp_path / "ddp")), tmp_path / "ddp_out")
    assert_close(ranks[0], ranks[1], atol=0.0)  # every rank applies the same averaged gradient
    assert_close(ranks[0], single, atol=2e-5)  # the same global batch, another summation order
    # rank 0 alone wrote the run: its log has one row per step, its final weights are rank 0's
    from rissole.checkpoint import load_checkpoint

    log = (tmp_path / "ddp" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 4
    final = load_checkpoint(tmp_path / "ddp" / "final")
    assert_close({k: v for k, v in final.weights["model"].items()}, ranks[0], atol=0.0)


def test_accumulation_equals_the_whole_batch(nd: dict[str, Any], tmp_path: Path) -> None:
    whole = train_rdm_run(rdm_cfg(nd), str(tmp_path / "whole")).model.state_dict()
    accum = train_rdm_run(rdm_cfg(nd, accumulate=4), str(tmp_path / "accum")).model.state_dict()
    assert_close(accum, whole, atol=2e-5)
    with pytest.raises(ConfigError, match="not divisible by world size 1 x train.accumulate 3"):
        train_rdm_run(rdm_cfg(nd, accumulate=3), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def _stopped_then_resumed(cfg: dict[str, Any], run: str) -> Any:
    train_rdm_run(cfg, run, stop_after=2)
    torch.distributed.barrier()
    return train_rdm_run(cfg, run, resume=True)


def test_ddp_resume_equals_uninterrupted_ddp(nd: dict[str, Any], tmp_path: Path) -> None:
    cfg = rdm_cfg(nd)
    straight = run_world(train_rdm_run, (cfg, str(tmp_path / "straight")), tmp_path / "o1")
    resumed = run_world(_stopped_then_resumed, (cfg, str(tmp_path / "resumed")), tmp_path / "o2")
    assert_close(resumed[0], straight[0], atol=0.0)
    assert_close(resumed[1], straight[1], atol=0.0)


def _vqgan_run(cfg: dict[str, Any], run: str) -> Any:
    from rissole.autoencoder.train import train_vqgan

    return train_vqgan(copy.deepcopy(cfg), run, progress=False)


def test_vqgan_two_ranks_equal_one_process(tiny_vqgan_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = copy.deepcopy(tiny_vqgan_config)
    cfg["train"].update(steps=3, batch_size=8, ckpt_every=3, val_every=1000, restart_dead_codes_every=2,
                        restart_until=1.0, disc_start=2)
    cfg["data"]["val_source"] = None
    single = _vqgan_run(cfg, str(tmp_path / "single")).model.state_dict()
    ranks = run_world(_vqgan_run, (cfg, str(tmp_path / "ddp")), tmp_path / "out")
    assert_close(ranks[0], ranks[1], atol=0.0)
    # dead-code restarts see the gathered global batch; from step 2 the GAN term's adaptive weight is the
    # ranks' mean, not the whole batch's, so the two runs agree closely rather than to float rounding
    assert_close(ranks[0], single, atol=5e-3)


def test_torchrun_drives_rissole_train(nd: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    cfg = rdm_cfg(nd, steps=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*TORCHRUN, "--nproc_per_node=2", "-m", "rissole", "train", "--config", str(tmp_path / "c.yaml"), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, child_error(r.stderr)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3
    assert r.stderr.count("parameters used by the forward pass") + r.stdout.count("parameters used by the forward pass") <= 1


def test_a_command_leaves_the_process_group_on_every_rank(nd: dict[str, Any], tmp_path: Path) -> None:
    """A rank that exits with its gloo group alive can abort in interpreter finalization ('terminate called without
    an active exception'), which failed CI once: every command destroys the group, after success and after an error."""
    import shutil

    import torch.multiprocessing as mp

    db = tmp_path / "db"
    shutil.copytree(nd["db_b"], db)
    for argv, code in ((["db", "neighbours", str(db), "--backend", "exact", "--keys", "latent", "-k", "3",
                         "--queries", str(nd["a"])], 0),
                       (["db", "neighbours", str(tmp_path / "missing"), "--backend", "exact"], 2)):  # refused after init
        for f in tmp_path.glob("rank*.txt"):
            f.unlink()
        mp.spawn(_command_rank, args=(2, free_port(), argv, str(tmp_path)), nprocs=2, join=True)
        assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == [f"{code} False"] * 2


def test_sharded_encode_embed_and_tables_equal_one_process_byte_for_byte(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def rissole(*argv: str, ranks: int = 1) -> None:
        launch = [*TORCHRUN, f"--nproc_per_node={ranks}", "-m", "rissole"] if ranks > 1 else [sys.executable, "-m", "rissole"]
        r = subprocess.run([*launch, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert r.returncode == 0, child_error(r.stderr)

    for ranks, d in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        rissole("encode", "--source", "fmnist:train", "--limit", "700", "--batch-size", "128", "--out", str(d / "lat.npy"),
                ranks=ranks)
        rissole("embed", str(d / "lat.npy"), "--embedder", "vq", "--rows", "0:650", "--out", str(d / "emb.npy"), ranks=ranks)
        rissole("db", "build", str(d / "lat.npy"), "--out", str(d / "db"), "--grid", "2")
        rissole("db", "neighbours", str(d / "db"), "--backend", "exact", "-k", "5", "--batch", "256", ranks=ranks)
    for name in ("lat.npy", "emb.npy", "emb.rows.npy", "db/neighbours/train.ids.npy", "db/neighbours/database.scores.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    import json

    one, two = (json.loads((tmp_path / d / "lat.json").read_text()) for d in ("one", "two"))
    assert one == two
    assert not [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]  # no temporaries left
