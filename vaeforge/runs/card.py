"""The model card (``README.md``) of an export, rendered from its ``config.json``: YAML metadata the Hub indexes
(library, pipeline, tags), then what the model is, how to load it, the data, the recipe, the evaluate metrics, the
exported samplers and the plugins it needs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

PIPELINE = "unconditional-image-generation"
WEIGHTS_TEXT = {"ema": "EMA weights", "model": "trained weights (not their EMA)"}


def model_card(info: dict[str, Any]) -> ModelCard:
    """The card of the export described by ``info``."""
    tags = ["vaeforge", "vae", str(info["data"].get("dataset", "faces")), info["model"]["backbone"]["name"]]
    meta = ModelCardData(library_name="vaeforge", pipeline_tag=PIPELINE, tags=tags)
    sections = (_about, _usage, _data, _recipe, _evaluation, _samplers, _plugins)
    body = "\n\n".join(section(info) for section in sections)
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{body}\n")


def _table(rows: list[tuple[Any, Any]], head: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {key} | {value} |" for key, value in rows])


def _code(text: str, language: str = "") -> str:
    return f"```{language}\n{text.rstrip()}\n```"


def _latent(info: dict[str, Any]) -> str:
    """'a 128-dimensional latent' or 'a 4x8x8 latent tensor' (exports from before latent_shape: a vector)."""
    shape = info.get("latent_shape", [info["model"]["latent_dim"]])
    return f"a {shape[0]}-dimensional latent" if len(shape) == 1 else f"a {'x'.join(map(str, shape))} latent tensor"


def _about(info: dict[str, Any]) -> str:
    source, model, image = info["source"], info["model"], info["image"]
    backbone = model["backbone"]
    return (f"# {source['run']}: a vaeforge VAE for {image['size']}x{image['size']} faces\n\n"
            f"A variational autoencoder trained with vaeforge on {info['data'].get('dataset', 'faces')}: backbone "
            f"`{backbone['name']}` (`{json.dumps(backbone.get('args', {}))}`), {_latent(info)}, the "
            f"{WEIGHTS_TEXT.get(info['weights'], info['weights'])} of checkpoint `{source['checkpoint']}` "
            f"(step {source['step']:,}, {source['images_seen']:,} training images seen, "
            f"{source['train_seconds']:,} s of training). Exported by vaeforge {info['vaeforge_version']}.")


def _usage(info: dict[str, Any]) -> str:
    size, channels = info["image"]["size"], info["image"]["channels"]
    code = (f'import vaeforge\n\n'
            f'model = vaeforge.from_pretrained("<this repo id, or the folder>")   # backbone plugin '
            f'`{info["model"]["backbone"]["name"]}` installed\n'
            f'mean, logvar = model.encode(x)            # x: float [B, {channels}, {size}, {size}] in [0, 1]\n'
            f'faces = model.decode(mean)                # images in [0, 1]\n'
            f'same = model.reconstruct(x)\n'
            f'new = model.sample(16, sampler="prior")   # z ~ N(0, I); the exported priors: see Samplers')
    return "## Use\n\n" + _code(code, "python")


def _data(info: dict[str, Any]) -> str:
    data = info["data"]
    counts = ", ".join(f"{split['count']:,} {name}" for name, split in data.get("splits", {}).items())
    columns = list(data.get("label_columns", {}))
    source = data.get("source", {})
    rows = [("dataset", data.get("dataset", "?")),
            ("images", f"{counts} (identity-disjoint splits); {data.get('skipped', 0)} skipped"),
            ("image", f"{data.get('image_size')}x{data.get('image_size')}, {data.get('channels', 3)} channels, "
                      f"crop {data.get('crop')} of the original"),
            ("label columns", f"{len(columns)}: {', '.join(columns)}" if columns else "none"),
            ("prepared", f"from `{Path(str(source.get('path_or_url', '?'))).name}` (SHA-256 "
                         f"`{str(source.get('sha256', '?'))[:16]}...`) by vaeforge {data.get('vaeforge_version', '?')}"
                         f" on {data.get('created', '?')}")]
    return "## Data\n\n" + _table(rows)


def _recipe(info: dict[str, Any]) -> str:
    recipe, setup = info["recipe"], info.get("setup", {})
    ran = ", ".join(f"{key} {value}" for key, value in setup.items())
    return (f"## Recipe\n\nRecipe `{recipe.get('recipe', '?')}`, trained {info['source']['step']:,} steps"
            f"{f' ({ran})' if ran else ''}. The resolved config it trained with:\n\n"
            + _code(yaml.safe_dump(recipe, sort_keys=False), "yaml"))


def _evaluation(info: dict[str, Any]) -> str:
    found = info.get("evaluation")
    if not found:
        return ("## Evaluation\n\nThe run had not been evaluated when it was exported: `vaeforge run task=evaluate "
                "run_dir=<run>`, then export again, puts the metrics here.")
    measured = f"checkpoint `{found['checkpoint']}`, {found['weights']} weights"
    exported = f"checkpoint `{info['source']['checkpoint']}`, {info['weights']} weights"
    note = "" if measured == exported else f" **Measured on {measured}; this export is {exported}.**"
    return (f"## Evaluation\n\n`vaeforge run task=evaluate` on the {found.get('split') or 'val'} split "
            f"({measured}).{note}\n\n" + _table(list(found["metrics"].items()), ("metric", "value")))


def _samplers(info: dict[str, Any]) -> str:
    priors, vectors = info["fitted"].get("priors", []), info["fitted"].get("vectors", [])
    rows = [(f"`{p['plugin']}`", f"options `{json.dumps(p.get('options', {}))}`, train_limit "
             f"{str(p.get('source', '')).rpartition('train_limit=')[2] or 0}, fitted on {p.get('count', '?')} latents")
            for p in priors]
    text = ("## Samplers\n\n`sampler=\"prior\"` is N(0, I). Latent priors fitted on the training latents of these "
            "weights, used as `model.sampler(name, prior_args=options, train_limit=train_limit).sample(n)` (then "
            "`model.decode`), or `model.sample(n, sampler=name)` when fitted with the defaults:\n\n")
    text += _table(rows, ("prior", "fitted")) if rows else "None exported (the run had fitted none on these weights)."
    if vectors:
        text += ("\n\nAttribute directions for `edit`: "
                 + ", ".join(f"`{v.get('attribute')}`" for v in vectors) + ".")
    return text


def _plugins(info: dict[str, Any]) -> str:
    rows = [(f"{p['kind']} `{p['name']}`", f"{p['distribution'] or 'module'} {p['version']} (`{p['module']}`)")
            for p in info["plugins"]]
    return ("## Plugins\n\n`from_pretrained` builds the model with these, installed or named with `plugins=[...]` "
            "(it never imports a module because a model folder names it):\n\n" + _table(rows, ("plugin", "from")))
