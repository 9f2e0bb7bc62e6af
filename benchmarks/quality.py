"""Equal wall-clock quality benchmark on prepared LFW (identity-disjoint val split).

Each model trains for the same wall-clock budget with the same number of CPU threads, in its own process:
  lfw_unet, lfw_resnet    vaeforge's recipes through the real CLI with ``trainer.time_budget=<budget>`` (their
                          lr decays over the budget on whatever machine runs it; max_steps lifted); any other
                          recipe name (e.g. lfw_unet_nll; lfw_kl_f8, whose latent tensors the GMM sees
                          flattened) may be added to ``--models``
  pythae_celeba           pythae's VAE through pythae's own trainer, with its CelebA-64 benchmark conv networks
  pythae_baseline         pythae's VAE through pythae's own trainer, with the plain baseline's networks
  baseline                a plain PyTorch conv VAE: 4 stride-2 convs 32-64-128-256 + BatchNorm + LeakyReLU,
                          latent 128, mirrored decoder, sigmoid, MSE-sum + KL, Adam 1e-3, batch 64

Then, on every val image: PSNR, SSIM and LPIPS-AlexNet of the posterior-mean reconstructions (rounded to
8 bits), and Frechet distances between mean-pooled AlexNet conv5 features (the LPIPS trunk at the images' own
resolution, as the evaluate task's ``fd_alexnet``) of the val images and of: their reconstructions
(``fd_conv5_recon``); ``--samples`` (8-bit) samples of N(0, I) (``fd_conv5``); of a 10-component Gaussian mixture
fitted on the posterior means of the training images (ex-post density estimation, as ``sample sampler=gmm``;
``fd_conv5_gmm``); and of the learned prior ``sample`` draws from by default, fitted on the same means with its
default options (``flow`` for vector latents, ``conv_diffusion`` for latent tensors; ``fd_conv5_learned``, its fit
time ``learned_fit_s``). The checkerboard power (``vaeforge.metrics.checkerboard_power``) of the reconstructions
and of each kind of samples is reported as a ratio to that of the val images (``cb_*``: 1 is as much as photos
have). Each contestant's reconstruction grid (val images above, reconstructions below) and learned-prior sample
grid go to ``<out>/<budget>s/<model>_recon.png`` and ``_samples.png``, all of them side by side to
``recon_all.png`` and ``samples_all.png``. Data loading and evaluation are outside the budget; vaeforge's in-run
validation is inside it. ``--budget-seconds 600,1800`` runs every contestant at each budget; the report starts with
the machine (CPU model, ISA flags, whether bf16 is native). ``--no-learned-prior`` skips the learned prior's
fit (``conv_diffusion``: ~10 min on 2 threads; its columns then repeat the mixture's), for quick trials of
reconstruction settings.

    python benchmarks/quality.py --shards data/lfw64 --budget-seconds 600 --threads 2 \\
        --lpips-weights ../shared/weights/lpips_alexnet.safetensors --out runs/bench_quality

pythae is a benchmark-only dependency: ``pip install -e .[bench]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import vaeforge
from common import machine
from vaeforge.config import available_recipes
from vaeforge.data.stream import eval_batches
from vaeforge.data.manifest import read_manifest, shard_paths
from vaeforge.models.prior import fit_prior
from vaeforge.metrics import checkerboard_power, frechet_distance, psnr, ssim
from vaeforge.models.lpips import LPIPS
from vaeforge.runs import checkpoints as ckpt
from vaeforge.runs.layout import RUN_FILE
from vaeforge.runs.priors import VECTOR_SAMPLER, tensor_priors
from vaeforge.runs.tensorfile import read_tensors, write_tensors
from vaeforge.tasks.image_files import save_grid

MODELS = ("lfw_unet", "lfw_resnet", "pythae_celeba", "pythae_baseline", "baseline")
LATENT = 128
BATCH = 64
LR = 1e-3
EVAL_BATCH = 128
GMM_COMPONENTS = 10
GRID_IMAGES = 8  # val images (and their reconstructions) per grid row; sample grids hold twice as many


@dataclass
class Result:
    model: str
    budget_s: float
    precision: str  # what it trained in: fp32, bf16 or fp16
    params_M: float
    images_per_s: float
    steps: int
    psnr: float
    ssim: float
    lpips_alex: float
    fd_conv5_recon: float
    fd_conv5: float
    fd_conv5_gmm: float
    fd_conv5_learned: float
    learned: str  # the learned prior's plugin
    learned_fit_s: float
    cb_recon: float
    cb_prior: float
    cb_gmm: float
    cb_learned: float


@dataclass
class Trained:
    """A trained model as the evaluation sees it, and what its training did in the budget."""

    encode_mean: Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] -> posterior means
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> images in [0, 1]
    params: int
    steps: int
    images: int
    seconds: float
    precision: str = "fp32"


# ----- data ------------------------------------------------------------------------------------------------------
def load_split(shards: Path, split: str) -> torch.Tensor:
    """Every image of a split, uint8 ``[N, 3, H, W]``, in file order."""
    paths = shard_paths(shards, read_manifest(shards), split)
    return torch.cat([b["image"] for b in eval_batches(paths, 256, 0, 1)])


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round images in [0, 1] to 8-bit levels, as a saved PNG would be."""
    return (images.clamp(0, 1) * 255).round() / 255


# ----- the plain baseline's networks (used by `baseline` and `pythae_baseline`) ---------------------------------
def conv_block(c_in: int, c_out: int, transpose: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    return [conv(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]


class BaselineEncoder(nn.Module):
    """4 stride-2 convs 32-64-128-256 with BatchNorm + LeakyReLU, then linear heads for (mu, logvar)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        widths = [3, 32, 64, 128, 256]
        self.convs = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in conv_block(a, b)], nn.Flatten())
        features = 256 * (size // 16) ** 2
        self.mu, self.logvar = nn.Linear(features, LATENT), nn.Linear(features, LATENT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(x)
        return self.mu(h), self.logvar(h)


class BaselineDecoder(nn.Module):
    """The encoder mirrored with transposed convs; sigmoid output in [0, 1]."""

    def __init__(self, size: int) -> None:
        super().__init__()
        side = size // 16
        self.fc = nn.Sequential(nn.Linear(LATENT, 256 * side * side), nn.Unflatten(1, (256, side, side)))
        blocks = [m for a, b in zip([256, 128, 64], [128, 64, 32]) for m in conv_block(a, b, transpose=True)]
        self.deconvs = nn.Sequential(*blocks, nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.fc(z))


def count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# ----- training, one function per kind of contestant -------------------------------------------------------------
def train_vaeforge(recipe: str, args: argparse.Namespace) -> Trained:
    """The recipe through ``python -m vaeforge.train``, its lr schedule and its end set by ``trainer.time_budget``."""
    run_dir = args.out / recipe
    cmd = [sys.executable, "-m", "vaeforge.train", f"recipe={recipe}", f"data.shards={args.shards}",
           f"run_dir={run_dir}", f"trainer.time_budget={args.budget_seconds}", f"trainer.max_steps={10**9}",
           "trainer.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if args.lpips_weights:  # the perceptual loss finds the same file
        env["VAEFORGE_LPIPS_WEIGHTS"] = str(Path(args.lpips_weights).resolve().parent)
    subprocess.run(cmd, check=True, env=env)
    state = ckpt.read_state(ckpt.latest_checkpoint(run_dir))
    precision = json.loads((run_dir / RUN_FILE).read_text())["mixed_precision"]
    model = vaeforge.load(run_dir)
    return Trained(lambda x: model.encode(x)[0], model.decode, count(model.vae), state.step, state.images_seen,
                   float(args.budget_seconds), "fp32" if precision == "no" else precision)


class Budget(Exception):
    """Raised inside pythae's trainer when the wall-clock budget is used up."""


def train_pythae(nets: str, train: torch.Tensor, args: argparse.Namespace) -> Trained:
    """pythae's VAE and trainer (Adam 1e-3, batch 64, its own MSE + KL), stopped after the budget."""
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.models.nn.benchmarks.celeba import Decoder_Conv_AE_CELEBA, Encoder_Conv_VAE_CELEBA
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    size = train.shape[-1]
    config = VAEConfig(input_dim=(3, size, size), latent_dim=LATENT, reconstruction_loss="mse")

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = BaselineEncoder(size)

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mu, logvar = self.net(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = BaselineDecoder(size)

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=self.net(z))

    class StopAtBudget(TrainingCallback):
        def __init__(self) -> None:
            self.start, self.steps = 0.0, 0

        def on_train_begin(self, training_config, **kwargs) -> None:
            self.start = time.monotonic()

        def on_train_step_end(self, training_config, **kwargs) -> None:
            self.steps += 1
            if time.monotonic() - self.start >= args.budget_seconds:
                raise Budget

    encoder, decoder = ((Encoder_Conv_VAE_CELEBA(config), Decoder_Conv_AE_CELEBA(config)) if nets == "celeba"
                        else (Encoder(), Decoder()))
    model = VAE(config, encoder=encoder, decoder=decoder)
    training = BaseTrainerConfig(output_dir=str(args.out / f"pythae_{nets}"), num_epochs=10**6, learning_rate=LR,
                                 per_device_train_batch_size=BATCH, optimizer_cls="Adam", no_cuda=True,
                                 steps_saving=None)
    stop = StopAtBudget()
    trainer = BaseTrainer(model, BaseDataset(to_unit(train), torch.zeros(len(train))), training_config=training,
                          callbacks=[stop])
    try:
        trainer.train()
    except Budget:
        pass
    seconds = time.monotonic() - stop.start
    model = trainer.model.eval()
    return Trained(lambda x: model.encoder(x).embedding, lambda z: model.decoder(z).reconstruction, count(model),
                   stop.steps, stop.steps * BATCH, seconds)


def train_baseline(train: torch.Tensor, args: argparse.Namespace) -> Trained:
    """A plain PyTorch training loop: MSE summed over pixels + KL, Adam 1e-3, batch 64, shuffled epochs."""
    size = train.shape[-1]
    encoder, decoder = BaselineEncoder(size), BaselineDecoder(size)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    start, steps = time.monotonic(), 0
    while time.monotonic() - start < args.budget_seconds:
        for index in torch.randperm(len(train)).split(BATCH):
            x = to_unit(train[index])
            mu, logvar = encoder(x)
            recon = decoder(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
            kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
            loss = ((recon - x).square().flatten(1).sum(1) + kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if time.monotonic() - start >= args.budget_seconds:
                break
    seconds = time.monotonic() - start
    encoder.eval()
    decoder.eval()
    return Trained(lambda x: encoder(x)[0], decoder, count(encoder, decoder), steps, steps * BATCH, seconds)


# ----- evaluation ------------------------------------------------------------------------------------------------
@torch.no_grad()
def conv5(lpips: LPIPS, x: torch.Tensor) -> torch.Tensor:
    """Mean-pooled AlexNet conv5 (after ReLU) features ``[N, 256]``."""
    return torch.cat([lpips.features(chunk)[-1].mean((2, 3)) for chunk in x.split(EVAL_BATCH)])


@torch.no_grad()
def evaluate(model: Trained, val: torch.Tensor, train: torch.Tensor, lpips: LPIPS, samples: int,
             fit_learned: bool = True) -> tuple[dict[str, float | str], dict[str, torch.Tensor]]:
    """Reconstruction metrics on every val image; Frechet distances of reconstructions and of N(0, I), mixture and
    learned-prior samples to val; the checkerboard ratios of each. Also the images to show: ``GRID_IMAGES`` val
    images of different people, their reconstructions, and twice as many learned-prior samples. Without
    ``fit_learned`` the mixture stands in for the learned prior (quick trials of reconstruction settings)."""
    x = to_unit(val)
    recon = torch.cat([to_8bit(model.decode(model.encode_mean(chunk))) for chunk in x.split(EVAL_BATCH)])
    distance = torch.cat([lpips(a, b) for a, b in zip(recon.split(EVAL_BATCH), x.split(EVAL_BATCH))])
    real = conv5(lpips, x)

    def checkerboard(images: torch.Tensor) -> float:
        return checkerboard_power(images) / checkerboard_power(x)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([to_8bit(model.decode(c)) for c in z.split(EVAL_BATCH)])

    mu = torch.cat([model.encode_mean(to_unit(chunk)) for chunk in train.split(EVAL_BATCH)])
    prior = decode(torch.randn(samples, *mu.shape[1:], generator=torch.Generator().manual_seed(0)))  # its latent shape
    mixture = fit_prior("gmm", {"components": GMM_COMPONENTS, "covariance": "full"}, mu, progress=False)
    mixed = decode(mixture.sample(samples, torch.Generator().manual_seed(0)))
    # what `sample` draws from by default: the flow for vectors, the (first) prior over latent tensors for tensors
    learned = fit_prior(VECTOR_SAMPLER if mu.dim() == 2 else tensor_priors()[0], {}, mu, progress=False) \
        if fit_learned else mixture
    drawn = decode(learned.sample(samples, torch.Generator().manual_seed(0))) if fit_learned else mixed
    shown = torch.linspace(0, len(x) - 1, GRID_IMAGES).long()  # spread over the split: different people
    metrics = {"psnr": float(psnr(recon, x).mean()), "ssim": float(ssim(recon, x).mean()),
            "lpips_alex": float(distance.mean()), "fd_conv5_recon": frechet_distance(conv5(lpips, recon), real),
            "fd_conv5": frechet_distance(conv5(lpips, prior), real),
            "fd_conv5_gmm": frechet_distance(conv5(lpips, mixed), real),
            "fd_conv5_learned": frechet_distance(conv5(lpips, drawn), real), "learned": learned.name,
            "learned_fit_s": learned.fit_seconds, "cb_recon": checkerboard(recon), "cb_prior": checkerboard(prior),
            "cb_gmm": checkerboard(mixed), "cb_learned": checkerboard(drawn)}
    return metrics, {"val": x[shown], "recon": recon[shown], "samples": drawn[:2 * GRID_IMAGES]}


def save_shown(images: dict[str, torch.Tensor], out: Path, name: str) -> None:
    """One contestant's ``<name>_recon.png`` (val images above their reconstructions), ``<name>_samples.png``, and
    the images themselves for :func:`side_by_side`."""
    save_grid([list(images["val"]), list(images["recon"])], out / f"{name}_recon.png")
    save_grid(images["samples"], out / f"{name}_samples.png", nrow=GRID_IMAGES)
    write_tensors(out / f"{name}_shown.safetensors", images, {})


def run_one(name: str, args: argparse.Namespace) -> Result:
    """Train one contestant for the budget and evaluate it (in this process)."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    train = load_split(args.shards, "train")
    if name in available_recipes():
        model = train_vaeforge(name, args)
    elif name == "baseline":
        model = train_baseline(train, args)
    else:
        model = train_pythae(name[len("pythae_"):], train, args)
    metrics, shown = evaluate(model, load_split(args.shards, "val"), train, LPIPS("alex", args.lpips_weights),
                              args.samples, fit_learned=not args.no_learned_prior)
    save_shown(shown, args.out, name)
    return Result(name, args.budget_seconds, model.precision, round(model.params / 1e6, 2),
                  round(model.images / model.seconds, 1), model.steps,
                  **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


# ----- orchestration ---------------------------------------------------------------------------------------------
def side_by_side(out: Path, names: list[str]) -> None:
    """``recon_all.png`` (a column of val images, then each contestant's reconstructions of them) and
    ``samples_all.png`` (a column of learned-prior samples per contestant) in ``out``, captioned."""
    shown = {n: read_tensors(out / f"{n}_shown.safetensors", "grid images")[1] for n in names}
    labels = [n.removeprefix("lfw_") for n in names]
    val = shown[names[0]]["val"]
    save_grid([[val[i], *(shown[n]["recon"][i] for n in names)] for i in range(len(val))], out / "recon_all.png",
              columns=["val", *labels])
    save_grid([[shown[n]["samples"][i] for n in names] for i in range(GRID_IMAGES)], out / "samples_all.png",
              columns=labels)


def table(results: list[Result]) -> str:
    columns = tuple(asdict(results[0]))
    rows = [columns, tuple("---" for _ in columns), *[tuple(str(v) for v in asdict(r).values()) for r in results]]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=Path("data/lfw64"), help="folder from vaeforge prepare")
    parser.add_argument("--budget-seconds", default="600",
                        help="training wall-clock per model; several (600,1800) train every model at each")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per model")
    parser.add_argument("--lpips-weights", default=None, help="lpips_alexnet.safetensors (default: found as usual)")
    parser.add_argument("--samples", type=int, default=2000, help="prior samples for the Frechet distance")
    parser.add_argument("--no-learned-prior", action="store_true",
                        help="skip fitting the learned prior (minutes; conv_diffusion ~10 on 2 threads): its columns "
                        "repeat the mixture's. For quick trials of reconstruction settings")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_quality"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # train + evaluate one model, then exit
    args = parser.parse_args()
    budgets = [float(b) for b in args.budget_seconds.split(",") if b]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        args.budget_seconds = budgets[0]
        result = run_one(args.worker, args)
        (args.out / f"{args.worker}.json").write_text(json.dumps(asdict(result), indent=1))
        return
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS) - set(available_recipes()))
    if unknown:
        parser.error(f"unknown models {unknown} (valid: {', '.join(MODELS)}, or any vaeforge recipe)")
    report, results = f"{machine()}; {args.threads} threads per model\n", []
    for budget in budgets:
        out, done = args.out / f"{budget:g}s", []
        for name in names:  # one process per model: fresh threads and memory, nothing shared between contestants
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--budget-seconds", f"{budget:g}", "--out",
                            str(out), "--worker", name], check=True, env={**os.environ, "TQDM_DISABLE": "1"})
            done.append(Result(**json.loads((out / f"{name}.json").read_text())))
        side_by_side(out, names)
        report += f"\nbudget {budget:g} s per model (grids in {out})\n\n{table(done)}\n"
        results += done
    (args.out / "results.md").write_text(report)
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(report)


if __name__ == "__main__":
    main()
