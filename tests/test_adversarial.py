"""The ``adversarial`` loss plugin on real LFW faces: its GAN losses, latent-diffusion's adaptive weight, the start
step and warm-up, the separation of the generator's and the discriminator's updates, and training with it: the
discriminator trains from its start step on, a resumed run ends bit-exactly where an uninterrupted one does (one
and two processes), and ZeRO-3 refuses the adaptive weight in one line."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from helpers import TINY, cut_back, launch, train
from test_optimizer_groups import build_with, checkpoint, digest
from vaeforge.data.manifest import read_manifest, shard_paths
from vaeforge.data.stream import eval_batches
from vaeforge.models.objective import detached
from vaeforge.runs.checkpoints import state_digest
from vaeforge.train.builders import to_float
from vaeforge.train.groups import frozen
from vaeforge_plugins.losses.adversarial import discriminator_loss, generator_loss, gradient_norm

ADV = {"losses.adv.name": "adversarial", "losses.adv.weight": 0.5, "losses.adv.args.disc_width": 8}
RUN = [*TINY, *(f"{k}={v}" for k, v in ADV.items()), "trainer.audit_samples=true", "trainer.image_every=0",
       "optim.warmup_steps=0", "optim.schedule=constant"]  # a resumed run has its own max_steps: constant lr
DISC = "owned_adv.discriminator.safetensors"


@pytest.fixture(scope="module")
def faces(lfw64) -> torch.Tensor:
    """The first 8 val faces, in [0, 1]."""
    shards = shard_paths(lfw64, read_manifest(lfw64), "val")
    return to_float(next(eval_batches(shards, 8, 0, 1, 64))["image"])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_hinge_and_non_saturating_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # discriminator: half of (mean relu(1 - real) + mean relu(1 + fake)) = (0.25 + 0.5) / 2
    assert float(discriminator_loss("hinge", real, fake)) == pytest.approx(0.375)
    expected = 0.5 * ((softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-2.0) + softplus(0.0)) / 2)
    assert float(discriminator_loss("non_saturating", real, fake)) == pytest.approx(expected)
    assert float(generator_loss("hinge", fake)) == pytest.approx(1.0)
    assert float(generator_loss("non_saturating", fake)) == pytest.approx((softplus(2.0) + softplus(0.0)) / 2)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_decoder_s_last_layer(faces):
    """By hand: ||grad(recon + kl)|| / (||grad(generator loss)|| + 1e-4) at the decoder's output Linear, the
    weight the term logs and multiplies by; clamped at max_adaptive_weight; 1 in validation (no gradients)."""
    module, owned = build_with(ADV)
    vae, losses = module.vae, module.losses
    term, disc = losses.terms["adv"], owned[0].module
    out = vae(faces)
    assert out.last_layer is [m for m in vae.decoder.modules() if isinstance(m, nn.Linear)][-1].weight
    with frozen(list(disc.parameters())):  # as in the model's step
        total, logs = losses(out, faces, 0)
        reference = sum(losses.weights[t] * losses.terms[t](out, faces, 0).value for t in ("recon", "kl"))
        (g_ref,) = torch.autograd.grad(reference, out.last_layer, retain_graph=True)
        (g_adv,) = torch.autograd.grad(generator_loss("hinge", term.logits(out.recon)), out.last_layer,
                                       retain_graph=True)
    expected = g_ref.norm() / (g_adv.norm() + 1e-4)
    assert float(expected) > 1  # a real ratio: recon is summed over pixels, the generator loss is a mean
    assert float(logs["adv/adaptive_weight"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(logs["adv"]) == pytest.approx(0.5 * float(expected * logs["adv/generator"]), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(reference.detach() + logs["adv"]), rel=1e-6)

    term.cfg.max_adaptive_weight = float(expected) / 2
    assert float(losses(out, faces, 0)[1]["adv/adaptive_weight"]) == pytest.approx(float(expected) / 2)
    losses.eval()
    with torch.no_grad():
        assert float(losses(vae(faces), faces, 0)[1]["adv/adaptive_weight"]) == 1.0


def test_adaptive_every_k_steps_computes_the_weight_then_reuses_it(faces, monkeypatch):
    """``adaptive_every=3`` from ``start=2``: the weight is computed at steps 2 and 5 (the extra backward runs only
    there) and the steps between reuse the last one whatever their batch; the cached weight is part of the loss
    state that checkpoints keep. The discriminator trains every ``disc_every``-th step from ``start``."""
    from vaeforge_plugins.losses import adversarial

    norms = []
    monkeypatch.setattr(adversarial, "gradient_norm", lambda *a: norms.append(1) or gradient_norm(*a))
    module, owned = build_with({**ADV, "losses.adv.args.start": 2, "losses.adv.args.adaptive_every": 3,
                                "losses.adv.args.disc_every": 2})
    batches = {2: faces, 3: faces.flip(0)[:4], 4: faces[:2], 5: faces.flip(0)[:4]}
    every_step, _ = build_with({**ADV, "losses.adv.args.start": 2})  # the same terms, computing on every step
    every_step.losses.load_state_dict(module.losses.state_dict(), strict=False)
    weights, extra_backwards = {}, {}
    with frozen(list(owned[0].module.parameters())):
        for step, images in batches.items():
            out, before = module.vae(images), len(norms)
            weights[step] = float(module.losses(out, images, step)[1]["adv/adaptive_weight"])
            extra_backwards[step] = len(norms) - before
        alone = every_step.losses(out, images, 5)[1]["adv/adaptive_weight"]
    assert weights[2] == weights[3] == weights[4] != weights[5]
    assert extra_backwards == {2: 2, 3: 0, 4: 0, 5: 2}  # reference and generator loss, at computing steps only
    assert weights[5] == pytest.approx(float(alone), rel=1e-5)  # what computing on every step gives
    assert float(module.losses.terms["adv"].adaptive_cache) == weights[5]
    assert "terms.adv.adaptive_cache" in module.losses.state_dict()
    assert [owned[0].optim.active(s) for s in (1, 2, 3, 4, 5)] == [False, True, False, True, False]


def test_before_start_the_term_is_zero_and_the_discriminator_idle(faces):
    """Before ``start`` the generator term is a zero in the graph and the discriminator is not even run; from
    ``start`` its optimizer is active and the term's factor ramps linearly to 1 over ``warmup_steps``."""
    module, owned = build_with({**ADV, "losses.adv.args.start": 5, "losses.adv.args.warmup_steps": 4})
    term, disc = module.losses.terms["adv"], owned[0].module
    calls = []
    disc.register_forward_hook(lambda *_: calls.append(1))
    total, logs = module.losses(module.vae(faces), faces, 4)
    assert float(logs["adv"]) == 0.0 and not calls and total.requires_grad
    assert [owned[0].optim.active(s) for s in (0, 4, 5, 6)] == [False, False, True, True]
    assert [term.warmup(s) for s in (4, 5, 7, 9, 20)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    module.losses(module.vae(faces), faces, 5)
    assert calls


def test_no_gradient_crosses_between_generator_and_discriminator(faces):
    """The model's step (discriminator frozen, as the engine runs it): the generator term reaches the decoder, the
    discriminator gets nothing. The discriminator's objective on the detached output: the model gets nothing."""
    module, owned = build_with({**ADV, "losses.adv.args.loss": "non_saturating", "losses.adv.args.disc_norm": "none"})
    disc, term = owned[0].module, module.losses.terms["adv"]
    out = module.vae(faces)
    with frozen(list(disc.parameters())):
        reference = module.losses.terms["recon"](out, faces, 0).value
        term(out, faces, 0, reference=reference).value.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert float(out.last_layer.grad.abs().sum()) > 0

    module.zero_grad(set_to_none=True)
    result = term.owned_loss("discriminator", detached(module.vae(faces)), faces, 0)
    result.value.backward()
    assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in disc.parameters())
    assert set(result.logs) == {"logits_real", "logits_fake"}


def test_training_starts_the_discriminator_on_time_and_resumes_bit_exactly(lfw64, tmp_path):
    """One process: the discriminator's checkpointed weights stay put before ``start`` and change after it; its
    logits, the adaptive weight and the warm-up are logged; 10 steps straight == 6 + a resumed 4, bit for bit
    (with the adaptive weight computed every 3rd step: step 6 reuses step 4's, restored from the checkpoint)."""
    common = [*RUN, f"data.shards={lfw64}", "losses.adv.args.start=4", "losses.adv.args.warmup_steps=2",
              "losses.adv.args.adaptive_every=3", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=10",
              "trainer.val_every=5", "trainer.log_every=1"]
    straight = tmp_path / "straight"
    train(*common, f"run_dir={straight}", "trainer.max_steps=10")
    disc = {s: load_file(checkpoint(straight, s) / DISC) for s in (2, 4, 6)}
    assert all(torch.equal(disc[2][k], disc[4][k]) for k in disc[2])  # steps 0-3: before its start
    assert not all(torch.equal(disc[4][k], disc[6][k]) for k in disc[4])  # trained from step 4
    tb = EventAccumulator(str(straight / "tb"), size_guidance={"scalars": 0})
    tb.Reload()
    tags = set(tb.Tags()["scalars"])
    assert {"train/adv.discriminator/logits_real", "train/adv.discriminator/logits_fake", "train/adv/warmup",
            "train/adv/adaptive_weight", "val/adv"} <= tags
    warmup = {e.step: e.value for e in tb.Scalars("train/adv/warmup")}  # logged after step s - 1 ran
    assert [warmup[s] for s in (4, 5, 6, 7, 10)] == [0.0, 0.0, 0.5, 1.0, 1.0]

    resumed = cut_back(straight, tmp_path / "resumed", 6)
    train(*common, f"run_dir={resumed}", "trainer.max_steps=10", "resume=true")
    assert digest(resumed) == digest(straight)
    assert state_digest(load_file(checkpoint(resumed, 10) / DISC)) == \
        state_digest(load_file(checkpoint(straight, 10) / DISC))


def test_two_processes_stay_replicated_and_resume_bit_exactly(lfw64, tmp_path):
    """DDP on 2 processes with the adaptive weight computed inside the model's forward: both replicas hold the
    same weights (discriminator included, trained every 2nd step), and a resumed run ends at the uninterrupted
    one's weights. In the
    channels-last memory format (model, loss terms, discriminator and inputs), which DDP supports."""
    common = [*RUN, f"data.shards={lfw64}", "losses.adv.args.start=1", "losses.adv.args.disc_every=2",
              "trainer.checkpoint_every=3", "trainer.val_every=0", "trainer.channels_last=on"]
    straight = tmp_path / "straight"
    launch(2, "vaeforge.train", *common, f"run_dir={straight}", "trainer.max_steps=6")
    resumed = cut_back(straight, tmp_path / "resumed", 3)
    launch(2, "vaeforge.train", *common, f"run_dir={resumed}", "trainer.max_steps=6", "resume=true")
    assert digest(resumed, 2) == digest(straight, 2)


def test_adaptive_weight_under_zero3_is_refused_in_one_line(lfw64, tmp_path):
    """ZeRO-3 partitions the decoder's last layer: the run stops before training, every rank with the same one
    line naming the term, its plugin and the ways out."""
    from test_distributed import accelerate

    proc = accelerate("zero3", *RUN, f"data.shards={lfw64}", f"run_dir={tmp_path / 'run'}", "trainer.max_steps=2",
                      check=False)
    lines = {line for line in proc.stderr.splitlines() if "ZeRO-3" in line}
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    line = lines.pop()
    assert line.startswith("vaeforge: error: loss term 'adv' (plugin 'adversarial' from vaeforge ") and \
        line.endswith("which DeepSpeed ZeRO-3 partitions across ranks: train it with ZeRO-2 or DDP, or turn its "
                      "balancing off in its args"), line
    assert not (tmp_path / "run" / "checkpoints").exists()
