"""Several optimizer groups: a loss plugin that owns a module (a critic, shaped like a GAN discriminator) has it
trained by its own optimizer, on its own cadence, apart from the model; both resume bit-exactly on 1 and 2
processes and under DeepSpeed ZeRO-2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, cut_back, env, launch, train

USER_PLUGINS = Path(__file__).parent / "fixtures" / "userplugins"
CRITIC = ["plugins=[owned_critic]", "losses.critic.name=owned_critic", "losses.critic.weight=0.5",
          "trainer.val_every=0", "trainer.image_every=0", "trainer.audit_samples=true", "optim.warmup_steps=0",
          "optim.schedule=constant"]  # a resumed run trains with max_steps of its own: no horizon-bound decay
CKPT = "checkpoints"


def plugin_env() -> dict[str, str]:
    return env(PYTHONPATH=str(USER_PLUGINS))


def digest(run_dir: Path, world: int = 1) -> str:
    found = {(run_dir / "audit" / f"params_rank{r}.txt").read_text() for r in range(world)}
    assert len(found) == 1, "replicas differ"
    return found.pop()


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / CKPT / f"step_{step:08d}"


@pytest.fixture()
def critic_module():
    """The plugin module imported in this process (its registration is process-wide, like any plugin's)."""
    sys.path.insert(0, str(USER_PLUGINS))
    try:
        import owned_critic
        yield owned_critic
    finally:
        sys.path.remove(str(USER_PLUGINS))


def build_with(overrides: dict):
    """A tiny lfw_mlp train module (model + loss terms) and its owned modules, with ``overrides``."""
    from omegaconf import OmegaConf

    from vaeforge.config import load_config
    from vaeforge.models.vae import ImageSpec
    from vaeforge.train.builders import build_train_module

    cfg = load_config({"recipe": "lfw_mlp", "model.latent_dim": 8, "model.backbone.args.hidden": [16], **overrides})
    torch.manual_seed(0)
    return build_train_module(OmegaConf.to_object(cfg), ImageSpec(64))


def build(critic_module):
    return build_with({"losses.critic.name": "owned_critic", "losses.critic.weight": 0.5})


def test_owned_module_is_outside_the_model_and_gets_no_model_gradient(critic_module):
    """The engine takes the critic out of the module it hands to DDP/DeepSpeed; the model's backward (critic
    frozen) leaves the critic without gradients while its adversarial term reaches the decoder; the critic's
    own backward, on the detached output, leaves the model without gradients."""
    from vaeforge.models.objective import detached
    from vaeforge.train.groups import frozen

    module, owned = build(critic_module)
    assert [o.name for o in owned] == ["critic.critic"]
    critic = owned[0].module
    model_params = {id(p) for p in module.parameters()}
    assert not any(id(p) in model_params for p in critic.parameters())
    assert "losses.terms.critic.scale" in dict(module.named_parameters())  # the term's other weight trains with it
    assert module.losses.terms["critic"].critic is critic  # the plugin still reaches its module

    x = torch.rand(4, 3, 64, 64)
    with frozen(list(critic.parameters())):
        out = module.vae(x)
        value = module.losses.terms["critic"](out, x, 0).value
        value.backward()
    assert all(p.grad is None for p in critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.vae.decoder.parameters())

    module.zero_grad(set_to_none=True)
    loss = owned[0].loss.owned_loss("critic", detached(module.vae(x)), x, 0).value
    loss.backward()
    assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is not None for p in critic.parameters())


def test_owned_module_trains_on_its_cadence_and_resumes_bit_exactly(lfw64, tmp_path):
    """The critic is not trained before its start step, is trained after it; 10 steps straight equal 6 + a
    resumed 4, model and critic weights alike (one process)."""
    common = [*TINY, f"data.shards={lfw64}", *CRITIC, "losses.critic.args.start=4", "losses.critic.args.every=2",
              "trainer.checkpoint_every=2", "trainer.keep_checkpoints=10"]
    straight = tmp_path / "straight"
    train(*common, f"run_dir={straight}", "trainer.max_steps=10", env=plugin_env())
    critic = {s: load_file(checkpoint(straight, s) / "owned_critic.critic.safetensors") for s in (2, 4, 6)}
    assert all(torch.equal(critic[2][k], critic[4][k]) for k in critic[2])  # steps 0-3: before its start
    assert not all(torch.equal(critic[4][k], critic[6][k]) for k in critic[4])  # trained at step 4
    state = json.loads((checkpoint(straight, 10) / "state.json").read_text())
    assert state["step"] == 10 and state["owned_nonfinite_skipped"] == {}
    assert (checkpoint(straight, 10) / "owned_critic.critic_optimizer.pt").is_file()
    run_json = json.loads((straight / "run.json").read_text())
    assert run_json["optimizer_groups"] == ["model", "critic.critic"]

    resumed = cut_back(straight, tmp_path / "resumed", 6)
    train(*common, f"run_dir={resumed}", "trainer.max_steps=10", "resume=true", env=plugin_env())
    assert digest(resumed) == digest(straight)
    from vaeforge.runs.checkpoints import state_digest  # the critic's file alone, too

    assert state_digest(load_file(checkpoint(resumed, 10) / "owned_critic.critic.safetensors")) == \
        state_digest(load_file(checkpoint(straight, 10) / "owned_critic.critic.safetensors"))


def test_owned_module_on_two_processes_stays_replicated_and_resumes_bit_exactly(lfw64, tmp_path):
    """With DDP on 2 processes the critic's gradients are averaged over ranks: both replicas hold the same weights,
    and a resumed run ends at the uninterrupted one's weights."""
    common = [*TINY, f"data.shards={lfw64}", *CRITIC, "losses.critic.args.start=1", "trainer.checkpoint_every=3"]
    straight = tmp_path / "straight"
    launch(2, "vaeforge.train", *common, f"run_dir={straight}", "trainer.max_steps=6", env=plugin_env())
    resumed = cut_back(straight, tmp_path / "resumed", 3)
    launch(2, "vaeforge.train", *common, f"run_dir={resumed}", "trainer.max_steps=6", "resume=true",
           env=plugin_env())
    assert digest(resumed, 2) == digest(straight, 2)


def test_a_broken_owned_module_declaration_is_one_line(lfw64, tmp_path):
    """A plugin that declares a bare module instead of OwnedModule is named with the fix."""
    (tmp_path / "bad_owner.py").write_text(
        "import torch\nfrom vaeforge.api import LossTerm, LossValue, register_loss\n"
        "@register_loss('bad_owner')\n"
        "class Bad(LossTerm):\n"
        "    def __init__(self):\n        super().__init__(); self.net = torch.nn.Linear(2, 2)\n"
        "    def owned_modules(self):\n        return {'net': self.net}\n"
        "    def forward(self, out, target, step):\n        return LossValue(out.z.mean())\n"
    )
    proc = train(*TINY, f"data.shards={lfw64}", f"run_dir={tmp_path / 'run'}", "plugins=[bad_owner]",
                 "losses.bad.name=bad_owner", "trainer.max_steps=2", check=False, env=env(PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "loss term 'bad'" in lines[0] and "OwnedModule(module, OwnedOptim" in lines[0], \
        proc.stderr


def test_owned_module_under_deepspeed_zero2_resumes(lfw64, tmp_path):
    """ZeRO-2 shards the model's optimizer; the critic stays a replicated group beside it, checkpointed by
    vaeforge, and a resume ends at the uninterrupted run's weights."""
    from test_distributed import accelerate

    common = [*TINY, f"data.shards={lfw64}", *CRITIC, "losses.critic.args.start=1", "trainer.checkpoint_every=2"]
    straight = tmp_path / "straight"
    extra = {"PYTHONPATH": str(USER_PLUGINS)}
    accelerate("zero2", *common, f"run_dir={straight}", "trainer.max_steps=4", extra_env=extra)
    resumed = cut_back(straight, tmp_path / "resumed", 2)
    accelerate("zero2", *common, f"run_dir={resumed}", "trainer.max_steps=4", "resume=true", extra_env=extra)
    assert digest(resumed, 2) == digest(straight, 2)
    assert (checkpoint(straight, 4) / "owned_critic.critic.safetensors").is_file()
