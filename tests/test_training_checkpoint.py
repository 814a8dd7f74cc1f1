"""EMA, crash-safe checkpoints, and a resumed run equal to the uninterrupted one bit for bit."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from addsr_core.loading.io import CheckpointError
from addsr_core.training import checkpoint as C
from addsr_core.training.data import ResumableSampler
from addsr_core.training.ema import EMA
from addsr_core.training.losses import hinge_d_loss, sample_student_plan


pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------ EMA
def test_ema_tracks_only_trainable_parameters_with_the_official_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    ema = EMA(model, decay=0.99)
    assert ema.names == ["1.weight", "1.bias"]
    start = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    ema.update(model)
    expected = 0.99 * start + 0.01 * model[1].weight.detach()  # official: (1-d)*param + d*shadow
    assert torch.allclose(ema.shadow["1.weight"], expected, atol=1e-7)
    current = model[1].weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model[1].weight, ema.shadow["1.weight"])
    assert torch.equal(model[1].weight, current)  # restored
    other = EMA(model, decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["1.weight"], ema.shadow["1.weight"])
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({})
    with pytest.raises(ValueError, match="no trainable"):
        EMA(nn.Linear(2, 2).requires_grad_(False))


# ------------------------------------------------------------------------------------------------ a toy trainer
class Toy:
    """Everything a real run carries: partially trainable student, spectral-norm discriminator (its
    power-iteration buffers change every step), two AdamW, EMA, grad scaler, a named generator, the
    data sampler, and draws from Python, NumPy and torch global RNGs."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.student = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
        self.student[0].requires_grad_(False)
        self.disc = nn.Sequential(nn.utils.spectral_norm(nn.Linear(8, 16)), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.opt_g = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=1e-2, weight_decay=1e-2)
        self.ema = EMA(self.student, 0.99)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.sampler = ResumableSampler(10, seed=0)  # the data seed is part of the config, not of the weights
        self.step = 0

    def batches(self, size=2):
        while True:
            buf = []
            for item in self.sampler:
                buf.append(item)
                if len(buf) == size:
                    yield buf
                    buf = []

    def train_step(self, batch):
        x = torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(s)) for _, s in batch])
        noise = torch.randn_like(x) * random.random() + float(np.random.rand())
        fake = self.student(x + noise)
        d_loss = hinge_d_loss([self.disc(x)], [self.disc(fake.detach())])[0]
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        plan = sample_student_plan(len(batch), self.gen)
        self.disc.requires_grad_(False)
        g_loss = (fake - x).pow(2).mean() * plan.ta_weights.float().mean() - 0.02 * self.disc(fake).mean()
        self.disc.requires_grad_(True)
        self.opt_g.zero_grad()
        self.scaler.scale(g_loss).backward()
        self.scaler.unscale_(self.opt_g)
        nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.ema.update(self.student)
        self.step += 1

    def save(self, out, **kw):
        return C.save_checkpoint(
            out, self.step, models={"student": self.student, "disc": self.disc},
            optimizers={"student": self.opt_g, "disc": self.opt_d}, emas={"student": self.ema},
            scaler=self.scaler, generators={"plan": self.gen}, extra={"sampler": self.sampler.state_dict()}, **kw,
        )

    def load(self, path):
        meta = C.load_checkpoint(
            path, models={"student": self.student, "disc": self.disc},
            optimizers={"student": self.opt_g, "disc": self.opt_d}, emas={"student": self.ema},
            scaler=self.scaler, generators={"plan": self.gen},
        )
        self.sampler.load_state_dict(meta["extra"]["sampler"])
        self.step = meta["step"]
        return meta

    def snapshot(self):
        tensors = {**{f"s.{k}": v for k, v in self.student.state_dict().items()},
                   **{f"d.{k}": v for k, v in self.disc.state_dict().items()},
                   **{f"e.{k}": v for k, v in self.ema.state_dict().items()}}
        for name, opt in (("og", self.opt_g), ("od", self.opt_d)):
            for i, st in opt.state_dict()["state"].items():
                tensors.update({f"{name}.{i}.{k}": v for k, v in st.items()})
        return {k: v.detach().clone() for k, v in tensors.items()}, self.scaler.state_dict()


def _run(toy, n, it=None):
    it = it or toy.batches()
    for _ in range(n):
        toy.train_step(next(it))
    return it


def _seed_globals(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    _seed_globals(123)
    ref = Toy()
    _run(ref, 12)  # crosses two epochs of the 10-sample sampler
    expected, expected_scaler = ref.snapshot()

    _seed_globals(123)
    first = Toy()
    _run(first, 7)
    path = first.save(tmp_path)
    _seed_globals(999)  # the new process starts with unrelated global RNG states
    resumed = Toy(seed=5)  # and differently initialised weights: all must come from the checkpoint
    resumed.load(C.find_latest_checkpoint(tmp_path))
    assert resumed.step == 7 and path.name == "checkpoint-7"
    _run(resumed, 5)
    got, got_scaler = resumed.snapshot()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert got_scaler == expected_scaler


def test_rng_capture_and_restore_cover_every_generator():
    gen = torch.Generator().manual_seed(3)
    _seed_globals(1)
    state = C.capture_rng_state({"g": gen})
    a = (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(2), torch.rand(1, generator=gen))
    _seed_globals(2)
    torch.rand(5, generator=gen)
    C.restore_rng_state(state, {"g": gen})
    b = (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(2), torch.rand(1, generator=gen))
    assert a[:3] == b[:3] and torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])
    with pytest.raises(CheckpointError, match="no state for the generator"):
        C.restore_rng_state(state, {"other": torch.Generator()})


# ------------------------------------------------------------------------------------------------ crash safety
def _weights(toy):
    return {k: v.clone() for k, v in toy.student.state_dict().items()}


def test_crash_while_writing_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    _seed_globals(0)
    toy = Toy()
    it = _run(toy, 2)
    good = toy.save(tmp_path)
    good_weights = _weights(toy)
    _run(toy, 2, it)

    real_save = C.safetensors.torch.save_file
    calls = {"n": 0}

    def dying_save(tensors, filename, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # die in the middle of the second file, leaving it half written
            with open(filename, "wb") as f:
                f.write(b"\x00" * 100)
            raise KeyboardInterrupt("simulated kill")
        return real_save(tensors, filename, *a, **kw)

    monkeypatch.setattr(C.safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        toy.save(tmp_path)
    monkeypatch.setattr(C.safetensors.torch, "save_file", real_save)

    assert [p.name for p in C.list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert C.find_latest_checkpoint(tmp_path) == good
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the partial directory was removed
    fresh = Toy(seed=9)
    fresh.load(C.find_latest_checkpoint(tmp_path))
    for k, v in good_weights.items():
        assert torch.equal(fresh.student.state_dict()[k], v)


def test_kill_before_the_final_rename_and_leftovers_of_a_hard_kill(tmp_path, monkeypatch):
    _seed_globals(0)
    toy = Toy()
    toy.step = 1
    good = toy.save(tmp_path)
    toy.step = 2
    real_replace = C.os.replace

    def refuse_checkpoint_rename(src, dst):
        if str(dst).endswith("checkpoint-2"):
            raise OSError("simulated power loss")
        return real_replace(src, dst)

    monkeypatch.setattr(C.os, "replace", refuse_checkpoint_rename)
    with pytest.raises(OSError, match="power loss"):
        toy.save(tmp_path)
    monkeypatch.setattr(C.os, "replace", real_replace)
    assert C.find_latest_checkpoint(tmp_path) == good
    # A hard kill (no cleanup) leaves a hidden temporary directory: it is ignored, then removed.
    stale = tmp_path / ".checkpoint-3.tmp-1-deadbeef"
    stale.mkdir()
    (stale / "model_student.safetensors").write_bytes(b"partial")
    assert C.find_latest_checkpoint(tmp_path) == good
    toy.step = 3
    toy.save(tmp_path)
    assert not stale.exists()
    assert C.find_latest_checkpoint(tmp_path).name == "checkpoint-3"


def test_damaged_checkpoint_is_reported_and_old_ones_rotate(tmp_path):
    _seed_globals(0)
    toy = Toy()
    for step in (1, 2, 3):
        toy.step = step
        toy.save(tmp_path, total_limit=2)
    assert [p.name for p in C.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    toy.save(tmp_path)  # re-saving the same step replaces it atomically
    latest = C.find_latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint-3" and C.read_checkpoint_meta(latest)["step"] == 3
    target = latest / "model_student.safetensors"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="damaged"):
        Toy().load(latest)
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        C.load_checkpoint(tmp_path)


def test_corrupt_training_state_is_a_clear_checkpoint_error(tmp_path):
    """The optimiser/RNG state goes through the library's one safe pickle reader: a broken file is
    named, and torch's advice to load it with weights_only=False never reaches the user."""
    _seed_globals(0)
    toy = Toy()
    toy.step = 1
    toy.save(tmp_path)
    latest = C.find_latest_checkpoint(tmp_path)
    state = latest / C.TRAINING_STATE_FILE
    size = state.stat().st_size
    state.write_bytes(b"\0" * size)  # same size: passes the size check, unreadable content
    with pytest.raises(CheckpointError, match="training state") as err:
        Toy().load(latest)
    assert "weights_only=False" not in str(err.value)
