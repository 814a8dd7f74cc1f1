"""The distillation trainer on tiny random models: trainable set, loss assembly, learning, exact
resume, a 2-process torchrun run (gloo), and loading the export in the pipeline and the nodes."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from addsr_core.loading.io import read_state_dict
from addsr_core.sampling.schedule import scaled_linear_alphas_cumprod
from addsr_core.training.config import load_config
from addsr_core.training.data import collate
from addsr_core.training.tiny import write_tiny_training_kit
from addsr_core.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainkit")
    overrides = write_tiny_training_kit(root, n_images=4, size=SIZE)
    overrides["data"]["degradation"]["resize_range"] = [0.2, 1.5]  # 64 px crops stay above the blur size
    return overrides


def make_cfg(kit, out, **sections):
    ov = copy.deepcopy({k: v for k, v in kit.items() if k != "_paths"})
    ov["train"] = {"output_dir": str(out), "seed": 7, "batch_size": 2, "gradient_accumulation_steps": 1,
                   "max_train_steps": 100, "checkpointing_steps": 100, "mixed_precision": "no",
                   "report_to": "none", "image_log_every": 0}
    for section, values in sections.items():
        ov.setdefault(section, {}).update(values)
    return load_config(None, ov)


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_one_step_changes_exactly_the_trainable_parameters(kit, tmp_path):
    cfg = make_cfg(kit, tmp_path, optimizer={"lr": 1e-3}, disc_optimizer={"lr": 1e-3})
    tr = Trainer(cfg, stream=open(os.devnull, "w"))
    c = tr.c
    frozen = {"teacher": c.teacher, "vae": c.vae, "ram": c.ram, "dino": c.disc.dino, "dinov2": c.cond_encoder,
              "text": c.text.text_encoder}
    before = {k: _snapshot(m) for k, m in frozen.items()}
    student_before, heads_before = _snapshot(c.student), _snapshot(c.disc.heads)
    tr.train(max_steps=1)
    expected = {n for n in student_before
                if ".image_attentions." in n or n.startswith("controlnet.controlnet_cond_embedding.")}
    assert set(tr.trainable) == expected and len(expected) > 50
    for n, p in c.student.named_parameters():
        changed = not torch.equal(p, student_before[n])
        assert changed == (n in expected), n
    for n, p in c.disc.heads.named_parameters():
        assert not torch.equal(p, heads_before[n]), n
    for k, m in frozen.items():
        for n, p in m.named_parameters():
            assert torch.equal(p, before[k][n]), f"{k}.{n}"


def _batch(tr, n=2):
    return tr._to_device(collate([tr.dataset[(i, 100 + i)] for i in range(n)]))


@pytest.mark.parametrize("two_step", [False, True])
def test_loss_terms_match_hand_computation(kit, tmp_path, two_step):
    cfg = make_cfg(kit, tmp_path, loss={"two_step_prob": 1.0 if two_step else 0.0})
    tr = Trainer(cfg, stream=open(os.devnull, "w"))
    obj, c = tr.objective, tr.c
    c.disc.train(False)  # spectral norm without power iteration: the same logits when recomputed
    batch = _batch(tr)
    gen = torch.Generator().manual_seed(5)
    sp = obj.student(batch, gen, c.student)
    ac = scaled_linear_alphas_cumprod()
    # TA weights exact: 0.5 * 2.1**(s-1), s = 1/2/3 for trained 749/499/249, 4 for the single 999 step.
    table = {749: 0.5, 499: 1.05, 249: 2.205, 999: 0.5 * 2.1**3}
    assert sp.plan.two_step == two_step
    for t, w in zip(sp.plan.trained_timesteps.tolist(), sp.plan.ta_weights.tolist()):
        assert w == table[t]
    if two_step:
        assert (sp.plan.trained_timesteps == sp.plan.first_timesteps - 250).all()
        assert sp.control.min() >= 0 and sp.control.max() <= 1  # PSR condition in [0,1], like inference
        assert not torch.equal(sp.control, batch["cond"])
    else:
        assert (sp.plan.trained_timesteps == 999).all() and torch.equal(sp.control, batch["cond"])
    # the student's input is the HR latent noised with epsilon at the trained step
    a = ac[sp.plan.trained_timesteps].view(-1, 1, 1, 1)
    z_t = a.sqrt() * sp.latents + (1 - a).sqrt() * sp.noise
    eps = c.student(z_t, sp.plan.trained_timesteps, sp.control, c.ram.represent(sp.control, resize="bicubic" if two_step else "bilinear"), sp.embeds)
    torch.testing.assert_close(sp.z0, (z_t - (1 - a).sqrt() * eps) / a.sqrt(), rtol=0, atol=1e-5)

    teacher01, t_tea = obj.teacher(sp, batch, gen)
    assert t_tea.shape == (4, 2) and teacher01.shape == (4, 2, 3, SIZE, SIZE)
    student_pm1 = obj.decode_student(sp)
    cc = obj.lr_condition(batch)

    state = gen.get_state()
    d = obj.discriminator_loss(batch, student_pm1, cc, gen)
    gen.set_state(state)
    real, _ = c.disc(batch["gt"] * 2 - 1, cc, generator=gen)
    fake, _ = c.disc(student_pm1.detach(), cc, generator=gen)
    hand_d = torch.relu(1 - torch.cat(real, 1)).mean() + torch.relu(1 + torch.cat(fake, 1)).mean()
    torch.testing.assert_close(d["d_loss"], hand_d, rtol=1e-6, atol=0)

    state = gen.get_state()
    g = obj.generator_loss(sp, student_pm1, teacher01, t_tea, cc, gen)
    gen.set_state(state)
    fake_g, _ = c.disc(student_pm1, cc, generator=gen)
    weights = ac[t_tea].sqrt()  # sqrt(alpha_bar) of each teacher timestep
    from addsr_core.training.losses import sqrt_alpha_bar_weight

    assert torch.equal(sqrt_alpha_bar_weight(ac, t_tea), weights)
    exact = torch.tensor([[ac[int(t)].item() ** 0.5 for t in row] for row in t_tea], dtype=torch.float64)
    torch.testing.assert_close(weights.double(), exact, rtol=1.2e-7, atol=0)  # float32 rounding only
    s01 = student_pm1 / 2 + 0.5
    per_image = [
        sum((weights[k, b] * (teacher01[k, b] - s01[b]) ** 2).mean() for k in range(4)) / 4 for b in range(2)
    ]
    hand_distill = sum(sp.plan.ta_weights[b] * per_image[b] for b in range(2)) / 2
    torch.testing.assert_close(g["distill"].double(), hand_distill.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(g["g_adv"], -torch.cat(fake_g, 1).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(g["g_loss"], g["distill"] + 0.02 * g["g_adv"], rtol=1e-6, atol=0)
    assert g["distill"] > 0 and d["d_loss"] > 0


def test_distillation_loss_decreases(kit, tmp_path):
    cfg = make_cfg(kit, tmp_path, optimizer={"lr": 2e-3}, loss={"two_step_prob": 0.0, "adv_weight": 0.0})
    tr = Trainer(cfg, stream=open(os.devnull, "w"))
    batch = _batch(tr, 4)

    def eval_loss():
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            sp = tr.objective.student(batch, gen, tr.c.student)
            tea, t_tea = tr.objective.teacher(sp, batch, gen)
            return float(tr.objective.generator_loss(sp, tr.objective.decode_student(sp), tea, t_tea, None, gen)["distill"])

    start = eval_loss()
    tr.train(max_steps=8)
    end = eval_loss()
    assert end < 0.97 * start, (start, end)  # measured: about -7% after 8 steps


@pytest.fixture(scope="module")
def finished_run(kit, tmp_path_factory):
    """An uninterrupted 3-step run with accumulation 2 that exports at the end."""
    out = tmp_path_factory.mktemp("run_full")
    cfg = make_cfg(kit, out, train={"max_train_steps": 3, "checkpointing_steps": 2, "gradient_accumulation_steps": 2,
                                    "validation_images": kit["_paths"]["val"], "validation_steps": 3,
                                    "validation_count": 1, "validation_sampler_steps": 2, "export_discriminator": True})
    tr = Trainer(cfg, stream=open(os.devnull, "w"))
    tr.train()
    return cfg, out, tr


def _checkpoint_tensors(path: Path) -> dict:
    out = {}
    for name in ("model_student", "model_disc_heads", "ema_student"):
        for k, v in read_state_dict(path / f"{name}.safetensors", family=name).items():
            out[f"{name}/{k}"] = v
    state = torch.load(path / "training_state.pt", weights_only=True)
    for opt in ("student", "disc"):
        for pid, st in state["optimizers"][opt]["state"].items():
            for k, v in st.items():
                out[f"opt_{opt}/{pid}/{k}"] = v
    out["rng"] = state["rng"][0]["generators"]["train"]
    return out


def test_kill_and_resume_equals_uninterrupted_run(kit, finished_run, tmp_path):
    cfg_full, out_full, _ = finished_run
    cfg = copy.deepcopy(cfg_full)
    cfg.train.output_dir = str(tmp_path)
    cfg.train.validation_images = ""
    first = Trainer(cfg, stream=open(os.devnull, "w"))
    first.train(max_steps=2)  # writes checkpoint-2, then the process "dies"
    del first
    cfg.train.resume_from = "latest"
    second = Trainer(cfg, stream=open(os.devnull, "w"))
    assert second.step == 2
    second.train()
    a, b = _checkpoint_tensors(out_full / "checkpoint-3"), _checkpoint_tensors(tmp_path / "checkpoint-3")
    assert a.keys() == b.keys() and len(a) > 100
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta_a = json.loads((out_full / "checkpoint-3" / "state.json").read_text())["extra"]["data"]
    meta_b = json.loads((tmp_path / "checkpoint-3" / "state.json").read_text())["extra"]["data"]
    assert meta_a == meta_b


def test_export_loads_in_pipeline_and_nodes(finished_run, monkeypatch):
    from addsr_core.loading.pack import load_addsr
    from addsr_core.pipeline import AddSRModels, AddSROptions, upscale

    cfg, out, tr = finished_run
    folder = out / "export" / "addsr-student"
    packed = out / "export" / "addsr-student.safetensors"
    assert (folder / "discriminator_heads.safetensors").is_file()
    assert sorted(p.name for p in (out / "validation" / "step-00000003").iterdir()) == ["val00.png"]
    unet, controlnet = load_addsr(folder)
    shadow = tr.ema.state_dict()
    params = {**{f"unet.{k}": v for k, v in unet.state_dict().items()},
              **{f"controlnet.{k}": v for k, v in controlnet.state_dict().items()}}
    for name, value in shadow.items():  # the EMA weights, not the raw student (and not the teacher)
        assert torch.equal(params[name], value), name
    base = dict(tr.c.teacher.named_parameters())
    frozen = [n for n in params if n not in shadow and n in base]
    assert frozen and all(torch.equal(params[n], base[n]) for n in frozen)
    p_unet, p_cn = load_addsr(packed)
    half = shadow["unet.down_blocks.0.image_attentions.0.proj_in.weight"].half().float()
    assert torch.equal(p_unet.state_dict()["down_blocks.0.image_attentions.0.proj_in.weight"].float(), half)
    models = AddSRModels(unet, controlnet, tr.c.vae, tr.c.ram, None, tr.c.text)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sr = upscale(models, lr, AddSROptions(steps=1, use_tags=False, min_size=64))
    assert sr.shape == (1, 3, 64, 64) and torch.isfinite(sr).all()

    import nodes

    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(out / "export"))
    choices = nodes.AddSRModelLoader.INPUT_TYPES()["required"]["model"][0]
    assert {"addsr-student", "addsr-student.safetensors"} <= set(choices)
    for name in ("addsr-student", "addsr-student.safetensors"):
        (model,) = nodes.AddSRModelLoader().load(name, "fp32")
        loaded = dict(model.unet.model.named_parameters()) if hasattr(model.unet, "model") else None
        if loaded is not None and name == "addsr-student":
            key = "down_blocks.0.image_attentions.0.proj_in.weight"
            assert torch.equal(loaded[key], shadow["unet." + key])


def test_two_processes_with_torchrun_agree(kit, tmp_path):
    cfg = make_cfg(kit, tmp_path / "run", train={"max_train_steps": 2, "checkpointing_steps": 2, "batch_size": 1})
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "training" / "train.py"), "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "checkpoint-2" / "state.json").read_text())
    extra = meta["extra"]
    assert meta["step"] == 2 and extra["world_size"] == 2
    prints = extra["rank_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    state = torch.load(tmp_path / "run" / "checkpoint-2" / "training_state.pt", weights_only=True)
    assert len(state["rng"]) == 2
    # the ranks drew different samples and noise, but hold the same weights
    assert not torch.equal(state["rng"][0]["generators"]["train"], state["rng"][1]["generators"]["train"])
    assert (tmp_path / "run" / "export" / "addsr-student" / "unet" / "config.json").is_file()


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(kit, tmp_path):
    """A real ``kill -9`` of training/train.py (wherever it lands: mid-step or mid-save), then
    ``--resume latest``: the final checkpoint equals an uninterrupted in-process run, bit for bit."""
    import signal
    import time

    train = {"max_train_steps": 4, "checkpointing_steps": 1, "batch_size": 1}
    reference = make_cfg(kit, tmp_path / "reference", train=train)
    Trainer(reference, stream=open(os.devnull, "w")).train()

    cfg = make_cfg(kit, tmp_path / "killed", train=train)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "training" / "train.py"), "--config", str(config)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (tmp_path / "killed" / "checkpoint-2").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-2 within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "checkpoint-4").exists()

    resumed = subprocess.run(command + ["--resume", "latest"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _checkpoint_tensors(tmp_path / "reference" / "checkpoint-4")
    b = _checkpoint_tensors(tmp_path / "killed" / "checkpoint-4")
    assert a.keys() == b.keys() and len(a) > 100
    for k in a:
        assert torch.equal(a[k], b[k]), k
