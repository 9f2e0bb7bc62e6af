"""``evaluate``: one metrics JSON for a run, on the val split (offline: no downloads).

- reconstruction (posterior mean) vs input: PSNR, SSIM, LPIPS-AlexNet;
- checkerboard: the power of the period-2 frequencies (``checkerboard_power``) of the reconstructions
  (``checkerboard_recon``) and of each sampler's samples (``checkerboard_<sampler>``, e.g. ``checkerboard_prior``),
  each as a ratio to that of the val images themselves: a decoder that prints a mesh on its faces scores well
  above 1 (blur lowers it);
- KL(q(z|x) || N(0, I)) per image (nats) and the active latent units;
- samples: Frechet distance between ``samples`` samples and the val images on AlexNet features (mean-pooled
  conv5 activations of the LPIPS AlexNet trunk), per sampler of ``samplers``: ``fd_alexnet`` for N(0, I)
  (``prior``), ``fd_alexnet_<name>`` for each prior plugin fitted on the training posterior means (as
  ``sample sampler=<name>`` fits and saves it); and FID of the N(0, I) samples on InceptionV3 pool features only
  when ``inception_weights=<file>`` is given (``fid: null`` and a ``fid_note`` otherwise);
- with ``attribute=``: how well editing along the attribute's direction works. A logistic regression on LPIPS-
  AlexNet features (mean-pooled taps) learns P(attribute) from the labelled training split; it scores val faces
  that lack the attribute (or the positives of ``edit_faces=``, e.g. ``neutral``) after reconstruction and after
  each edit: mean P, its change from the reconstruction, and the LPIPS between edit and reconstruction (how much
  of the face is kept). The classifier learns from each training photo AND its reconstruction by the model, with
  the same label: edits are decoder outputs, and a classifier that has only seen sharp photos reacts to a small
  VAE's blur more than to the attribute (docs/benchmarks.md#measurements-behind-the-code).
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vaeforge.api import (LPIPS, STANDARD_NORMAL, TRAIN, VAL, AttributeClassifier, ConfigError, DataError, TaskContext,
                          active_units, checkerboard_power, find_lpips_weights, frechet_distance, has_attribute,
                          kl_per_dim, progress_bar, psnr, register_task, check_sampler, ssim, at_least)

BATCH = 128
INCEPTION_SIZE = 299
NO_FID = ("FID not computed: no InceptionV3 weights given (inception_weights=<torchvision inception_v3 state dict, "
          ".safetensors or .pth>); fd_alexnet is the offline sample-quality measure")


@dataclass
class EvaluateConfig:
    samples: int = at_least(2, 500)  # samples of each sampler compared with the val images (a covariance needs two)
    temperature: float = 1.0
    samplers: list[str] = field(default_factory=lambda: ["prior", "gmm", "flow", "flow_matching"])  # scored: fd_alexnet (prior = N(0, I)), fd_alexnet_<name>
    prior_args: dict[str, Any] = field(default_factory=dict)  # options per prior plugin, e.g. prior_args.gmm.components=3
    prior_train_limit: int = 0  # training images the priors are fitted on (0: all)
    lpips_weights: str = ""  # LPIPS-AlexNet safetensors file (default: $VAEFORGE_LPIPS_WEIGHTS, then the cache)
    inception_weights: str = ""  # torchvision InceptionV3 state dict: enables FID
    attribute: str = ""  # a label column: also measure editing along it
    alphas: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])
    edit_faces: str = ""  # a binary column whose positive val faces are edited (default: the attribute's negatives)
    edit_limit: int = 64  # val faces edited
    train_limit: int = 0  # labelled training images for the direction and the classifier (0: all)


def mean(values: torch.Tensor) -> float:
    """A tensor's mean as a rounded float, for the JSON."""
    return round(float(values.mean()), 4)


@torch.no_grad()
def pooled_features(lpips: LPIPS, x: torch.Tensor) -> list[torch.Tensor]:
    """Each LPIPS tap's activations, mean-pooled over space: a list of ``[B, C_tap]``, shallowest first."""
    parts = [[f.mean((2, 3)) for f in lpips.features(chunk)] for chunk in x.split(BATCH)]
    return [torch.cat(tap) for tap in zip(*parts)]


def all_taps(lpips: LPIPS, x: torch.Tensor) -> torch.Tensor:
    """The classifier's features: every tap, mean-pooled, concatenated."""
    return torch.cat(pooled_features(lpips, x), 1)


def conv5(lpips: LPIPS, x: torch.Tensor) -> torch.Tensor:
    """The Frechet distance's features: the last (conv5) tap, mean-pooled."""
    return pooled_features(lpips, x)[-1]


@torch.no_grad()
def lpips_distance(lpips: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cat([lpips(a, b) for a, b in zip(x.split(BATCH), y.split(BATCH))])


def checkerboard(images: torch.Tensor, real: torch.Tensor) -> float:
    """Checkerboard power of ``images`` as a ratio to that of the ``real`` images (1: as much as photos have)."""
    return round(checkerboard_power(images) / checkerboard_power(real), 4)


def reconstruction_metrics(ctx: TaskContext, lpips: LPIPS, x: torch.Tensor) -> dict:
    """PSNR / SSIM / LPIPS / checkerboard ratio of the reconstructions, KL per image and active units."""
    mu, logvar = ctx.model.encode(x)
    recon = ctx.model.decode(mu).cpu()
    kl = kl_per_dim(mu, logvar).cpu()
    return {"psnr": mean(psnr(recon, x)), "ssim": mean(ssim(recon, x)), "lpips": mean(lpips_distance(lpips, recon, x)),
            "checkerboard_recon": checkerboard(recon, x), "kl": mean(kl.sum(1)), "active_units": active_units(kl),
            "latent_dim": ctx.model.latent_dim, "latent_shape": list(ctx.model.latent_shape)}


def read_state_dict(path: str) -> dict:
    """A state dict from a .safetensors file or a ``torch.save`` file (loaded with ``weights_only``)."""
    if not Path(path).is_file():
        raise DataError(f"inception_weights file {path} not found")
    try:
        return load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
    except (OSError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as exc:
        raise DataError(f"inception_weights {path}: not a readable .safetensors or torch.save state dict "
                        f"({type(exc).__name__})") from None


def inception(path: str) -> nn.Module:
    """torchvision's InceptionV3 with the given weights, returning its 2048-d pool features."""
    from torchvision.models import inception_v3  # here: only FID needs it, and it is slow to import

    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        net.load_state_dict(read_state_dict(path))
    except (RuntimeError, TypeError):
        raise DataError(f"inception_weights {path}: not torchvision InceptionV3 weights (names or shapes differ)"
                        ) from None
    net.fc = nn.Identity()
    return net.eval()


@torch.no_grad()
def inception_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pool features ``[B, 2048]`` of images in [0, 1], resized to 299 and scaled to [-1, 1] as Inception expects."""
    size = (INCEPTION_SIZE, INCEPTION_SIZE)
    return torch.cat([net(nn.functional.interpolate(c, size=size, mode="bilinear") * 2 - 1) for c in x.split(32)])


def sample_metrics(ctx: TaskContext, cfg: EvaluateConfig, lpips: LPIPS, net: nn.Module | None, x: torch.Tensor,
                   shown: Any) -> dict:
    """Samples vs val images: the Frechet distance on AlexNet conv5 features and the checkerboard ratio per sampler
    (each sampler's first 64 samples saved as a grid), and FID of the N(0, I) samples with an Inception net."""
    real = conv5(lpips, x)
    result: dict[str, Any] = {"samples": cfg.samples, "temperature": cfg.temperature, "samplers": {}}
    for name in cfg.samplers:
        with stage(shown, f"samples of {name}"):
            sampler = ctx.model.sampler(name, cfg.prior_args.get(name), cfg.prior_train_limit)
            fake = ctx.model.decode(sampler.sample(cfg.samples, ctx.generator(), cfg.temperature)).cpu()
            suffix = "" if name == STANDARD_NORMAL else f"_{name}"
            ctx.save_grid(f"samples{suffix}.png", fake[:64], nrow=8)
            result[f"fd_alexnet{suffix}"] = round(frechet_distance(conv5(lpips, fake), real), 4)
            result[f"checkerboard_{name}"] = checkerboard(fake, x)
            result["samplers"][name] = {"fd_alexnet": result[f"fd_alexnet{suffix}"],
                                        "checkerboard": result[f"checkerboard_{name}"], **sampler.describe()}
    if net is None:
        return {**result, "fid": None, "fid_note": NO_FID}
    with stage(shown, "FID"):
        fake = ctx.model.sample(cfg.samples, cfg.temperature, ctx.generator(), sampler=STANDARD_NORMAL).cpu()
        fid = frechet_distance(inception_features(net, fake), inception_features(net, x))
    return {**result, "fid": round(fid, 4),
            "fid_note": f"torchvision InceptionV3 pool features, weights {cfg.inception_weights}, images resized "
                        f"to {INCEPTION_SIZE}; {cfg.samples} N(0, I) samples vs {len(x)} val images"}


def attribute_classifier(ctx: TaskContext, cfg: EvaluateConfig, lpips: LPIPS, kind: str
                         ) -> tuple[AttributeClassifier, int]:
    """P(attribute) from LPIPS-AlexNet features, fitted on the labelled training photos and their reconstructions;
    returns it and the number of training images."""
    feats, targets = [], []
    batches = progress_bar(ctx.labelled(TRAIN, cfg.attribute, cfg.train_limit, BATCH),
                           f"classifier features of images labelled {cfg.attribute}", unit="batch")
    for batch in batches:
        y = has_attribute(batch.values, kind)
        feats += [all_taps(lpips, batch.images), all_taps(lpips, ctx.model.reconstruct(batch.images).cpu())]
        targets += [y, y]
    y = torch.cat(targets)
    if y.all() or not y.any():
        raise DataError(f"attribute '{cfg.attribute}': the labelled training images used are all one class; "
                        "a classifier needs both")
    return AttributeClassifier.fit(torch.cat(feats), y), len(y) // 2


def edit_faces(ctx: TaskContext, cfg: EvaluateConfig, val: list, labelled: list, truth: torch.Tensor) -> list:
    """The val faces to edit: the positives of ``edit_faces``, else the labelled faces without the attribute."""
    if cfg.edit_faces:
        if ctx.label_kind(cfg.edit_faces) != "binary":
            raise ConfigError(f"edit_faces must be a binary label column, '{cfg.edit_faces}' is real-valued")
        chosen = [s for s in val if s.labels.get(cfg.edit_faces, 0) > 0.5]
    else:
        chosen = [s for s, positive in zip(labelled, truth.tolist()) if not positive]
    if not chosen:
        raise DataError(f"no val faces to edit for attribute '{cfg.attribute}'"
                        + (f" among the {cfg.edit_faces} ones" if cfg.edit_faces else ""))
    return chosen[: cfg.edit_limit]


def classifier_accuracy(ctx: TaskContext, prob: Callable, labelled: list, truth: torch.Tensor) -> dict:
    """Accuracy of the attribute classifier on the labelled val photos and on their reconstructions."""
    if not labelled:
        return {"val_accuracy_photos": None, "val_accuracy_reconstructions": None}
    x = torch.stack([s.image for s in labelled])
    views = {"photos": x, "reconstructions": ctx.model.reconstruct(x).cpu()}
    return {f"val_accuracy_{view}": mean(((prob(images) > 0.5) == truth).float()) for view, images in views.items()}


def edit_shifts(ctx: TaskContext, cfg: EvaluateConfig, lpips: LPIPS, prob: Callable, direction: torch.Tensor,
                x: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """P(attribute) of the reconstructions of ``x``, and per alpha: mean P of the edits, its change from the
    reconstructions, and the LPIPS between edit and reconstruction."""
    recon = ctx.model.reconstruct(x).cpu()
    p_recon = prob(recon)
    rows = []
    for alpha, edited in zip(cfg.alphas, ctx.model.edit(x, direction, cfg.alphas).cpu().unbind(1)):
        p_edit = prob(edited)
        rows.append({"alpha": alpha, "p": mean(p_edit), "shift": mean(p_edit - p_recon),
                     "lpips_to_reconstruction": mean(lpips_distance(lpips, edited, recon))})
    return p_recon, rows


def edit_metrics(ctx: TaskContext, cfg: EvaluateConfig, lpips: LPIPS, val: list) -> dict:
    """The attribute classifier (and its accuracy on the labelled val faces) and the shifts edits cause."""
    kind = ctx.label_kind(cfg.attribute)
    vector, _ = ctx.attribute_vector(cfg.attribute, cfg.train_limit)
    classifier, n_train = attribute_classifier(ctx, cfg, lpips, kind)

    def prob(images: torch.Tensor) -> torch.Tensor:
        return classifier.prob(all_taps(lpips, images))

    labelled = [s for s in val if cfg.attribute in s.labels]
    truth = has_attribute(torch.tensor([float(s.labels[cfg.attribute]) for s in labelled]), kind)
    x = torch.stack([s.image for s in edit_faces(ctx, cfg, val, labelled, truth)])
    p_recon, by_alpha = edit_shifts(ctx, cfg, lpips, prob, vector.direction, x)
    return {"attribute": cfg.attribute, "kind": kind, "faces": cfg.edit_faces or f"not {cfg.attribute}",
            "n": len(x), "direction_images": vector.count,
            "classifier": {"train_images": n_train, "val_images": len(labelled),
                           **classifier_accuracy(ctx, prob, labelled, truth)},
            "p_original": mean(prob(x)), "p_reconstruction": mean(p_recon), "by_alpha": by_alpha}


@register_task("evaluate", config=EvaluateConfig)
def evaluate(ctx: TaskContext, cfg: EvaluateConfig) -> dict:
    if ctx.input not in (None, VAL):
        raise ConfigError(f"evaluate runs on the val split; drop input={ctx.input} (limit= takes fewer images)")
    for name in cfg.samplers:
        check_sampler(name)
    for name in set(cfg.prior_args).difference(cfg.samplers):
        raise ConfigError(f"evaluate: prior_args.{name} is for a sampler not scored (samplers={cfg.samplers})")
    lpips = LPIPS("alex", find_lpips_weights("alex", cfg.lpips_weights or None))
    net = inception(cfg.inception_weights) if cfg.inception_weights else None
    stages = 1 + len(cfg.samplers) + (net is not None) + bool(cfg.attribute)
    with progress_bar(desc="evaluate", total=stages, unit="stage") as shown:
        with stage(shown, "reconstructions"):
            val = ctx.split(VAL, ctx.limit)
            x = torch.stack([s.image for s in val])
            recon = reconstruction_metrics(ctx, lpips, x)
        samples = sample_metrics(ctx, cfg, lpips, net, x, shown)
        edit = None
        if cfg.attribute:
            with stage(shown, f"edits along {cfg.attribute}"):
                edit = edit_metrics(ctx, cfg, lpips, val)
    return {"output": str(ctx.output), "files": 1, "split": VAL, "images": len(val), **recon, **samples, "edit": edit}


@contextmanager
def stage(shown: Any, name: str) -> Iterator[None]:
    """One step of the evaluate bar: its name beside the bar while it runs."""
    shown.set_postfix_str(name)
    yield
    shown.update()
