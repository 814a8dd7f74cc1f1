"""addsr upscale under torchrun: the folder is sharded across ranks, no file twice or lost, resumable."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from addsr_core.cli import CLIError
from addsr_core.cli_upscale import plan_jobs, rank_shard
from test_cli import kit, model_args, write_images  # noqa: F401  (kit: the module's tiny models)

REPO = Path(__file__).resolve().parents[1]
IMAGES = 8


def test_shards_partition_the_folder_whatever_is_already_done(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_images(src, [(8, 8, "RGB")] * 7)
    everything = plan_jobs(src, out, overwrite=False)
    shards = [plan_jobs(src, out, overwrite=False, shard=(r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == everything and sum(map(len, shards)) == len(everything)
    out.mkdir()
    (out / "img0.png").touch()  # one rank finished a file: the others' shards do not move
    (out / "img4.png").touch()
    after = [plan_jobs(src, out, overwrite=False, shard=(r, 3)) for r in range(3)]
    for before, now in zip(shards, after):
        assert now == [job for job in before if job[1].name not in ("img0.png", "img4.png")]


def test_rank_comes_from_torchrun_and_is_checked(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_shard() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_shard() == (1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(CLIError, match="RANK 2 is not within WORLD_SIZE 2"):
        rank_shard()


def _torchrun(kit, src, out):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
               "-m", "addsr_core", "upscale", str(src), "-o", str(out), *model_args(kit), "--scale", "2",
               "--steps", "1", "--tile", "128", "--tile-overlap", "32", "--vae-tile", "256"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in their own sessions)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finished(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("img*.png") if not p.name.endswith(".partial.png")}


def test_two_ranks_share_a_folder_and_a_killed_run_resumes(kit, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_images(src, [(16, 16, "RGB")] * IMAGES)
    first = _torchrun(kit, src, out)
    deadline = time.monotonic() + 600
    while not _finished(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_tree(first.pid)  # the launcher and both ranks, mid-batch
    first.wait(timeout=60)
    time.sleep(1)
    done_before = _finished(out)
    assert 0 < len(done_before) < IMAGES, "the kill should land mid-batch"

    second = _torchrun(kit, src, out)
    log, _ = second.communicate(timeout=900)
    assert second.returncode == 0, log
    finished = _finished(out)
    assert sorted(finished) == [f"img{i}.png" for i in range(IMAGES)]
    assert all(finished[name] == stamp for name, stamp in done_before.items()), "finished files were redone"
    written = [int(line.split("done: ")[1].split()[0]) for line in log.splitlines() if "done: " in line]
    assert len(written) == 2 and sum(written) == IMAGES - len(done_before), log  # each file once, by one rank
    assert {f"rank {r}/2" for r in range(2)} <= {line.split(":")[0].split("]")[-1].strip() for line in log.splitlines()
                                                if "rank " in line and "done: " in line}
    assert all(Image.open(out / name).size == (32, 32) for name in finished)
