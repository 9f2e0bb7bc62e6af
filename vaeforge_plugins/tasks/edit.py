"""``edit``: move faces along an attribute direction in latent space (make people smile, change skin tone).

``attribute=`` names any label column of the dataset's manifest (``Smiling``, ``"Pale Skin"``, ``happiness``,
...). Its direction is computed from the training split's labelled images (binary column: mean posterior mean of
the positives minus that of the negatives; real-valued Kumar score: least-squares slope of the posterior means on
the score) and saved as ``run_dir/vectors/<attribute>.safetensors``, which later runs reuse; ``vectors=<file>``
uses a saved direction instead. Each input becomes one row: original, reconstruction, then
``decode(mean + alpha * direction)`` for each of ``alphas``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaeforge.api import AttributeVector, ConfigError, TaskContext, did_you_mean, register_task


@dataclass
class EditConfig:
    attribute: str = ""  # a label column of the manifest (see its label_columns)
    alphas: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0])
    vectors: str = ""  # a saved direction (.safetensors) to use instead of computing one
    train_limit: int = 0  # labelled training images used for the direction (0: all)


def resolve_vector(ctx: TaskContext, cfg: EditConfig) -> tuple[AttributeVector, str, str]:
    """The direction to edit along, the file it is in and where it came from (file, reused, computed)."""
    if cfg.vectors:
        return AttributeVector.load(cfg.vectors), cfg.vectors, "file"
    if not cfg.attribute:
        raise ConfigError(f"edit needs attribute=<label column> or vectors=<file> "
                          f"({did_you_mean('', ctx.label_columns())})")
    vector, reused = ctx.attribute_vector(cfg.attribute, cfg.train_limit)
    return vector, str(ctx.vector_path(cfg.attribute)), "reused" if reused else "computed"


@register_task("edit", config=EditConfig)
def edit(ctx: TaskContext, cfg: EditConfig) -> dict:
    if not cfg.alphas:
        raise ConfigError("edit: alphas must list at least one value, e.g. alphas=[0,1,2]")
    vector, file, origin = resolve_vector(ctx, cfg)
    items = ctx.inputs()
    x = torch.stack([im for _, im in items])
    edits = ctx.model.edit(x, vector.direction, cfg.alphas).cpu()
    recon = ctx.model.reconstruct(x).cpu()
    rows = [[x[i], recon[i], *edits[i]] for i in range(len(items))]
    captions = ["input", "recon", *(f"a={a:+g}" for a in cfg.alphas)]
    names = [f"{Path(name).stem}_edit.png" for name, _ in items]
    for name, row in zip(names, rows):
        ctx.save_grid(name, [row], columns=captions)
    ctx.save_grid("grid.png", rows, columns=captions)
    return {"output": str(ctx.output), "files": len(names) + 1, "attribute": vector.attribute, "kind": vector.kind,
            "alphas": list(cfg.alphas), "vector": file, "vector_origin": origin, "vector_images": vector.count,
            "columns": captions, "images": names}
