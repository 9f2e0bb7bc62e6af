"""What a task plugin gets: the loaded model, its inputs, the dataset's splits with labels, an output folder and
a seed."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .attributes import VECTORS_DIR, AttributeVector, direction, posterior_means
from ..data.splits import TRAIN, VAL, Sample, chunks, read_split  # noqa: F401  (read_split: re-exported)
from ..errors import DataError, PluginError, unknown_choice
from ..progress import bar
from .image_files import load_inputs, save_grid, save_png

if TYPE_CHECKING:
    from ..runs.load import LoadedVAE


@dataclass
class LabelledBatch:
    """Images ``[B, 3, H, W]`` in [0, 1] with one label column's values ``[B]``."""

    names: list[str]
    images: torch.Tensor
    values: torch.Tensor


def inside(folder: Path, name: str | Path) -> Path | None:
    """``folder / name`` resolved (``..`` and links followed) when it stays inside ``folder``, else None."""
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


@dataclass
class TaskContext:
    """Everything a task needs; tasks write files only through ``output``, and only inside it."""

    model: "LoadedVAE"
    output: Path
    seed: int = 0
    input: str | list[str] | None = None  # image files, a folder, or "val"
    limit: int = 0  # at most this many inputs (0: all)
    task: str = "the task"  # who writes, for errors: "task 'name' (its origin)"

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with the task's seed: same seed, same output."""
        return torch.Generator().manual_seed(self.seed)

    def inputs(self) -> list[tuple[str, torch.Tensor]]:
        """Named input images ``[3, H, W]`` in [0, 1] at the model's size (files are cropped and resized as
        the dataset was when they are larger)."""
        if self.input is None:
            raise DataError("this task needs input=<image files, a folder, or val>")
        if self.input == VAL:
            return [(s.name, s.image) for s in self.split(VAL, self.limit)]
        m = self.model
        items = load_inputs(self.input, m.image_size, m.manifest)
        return items[: self.limit] if self.limit else items

    def split(self, name: str, limit: int = 0) -> list[Sample]:
        """The first ``limit`` (0: all) samples of a split of the run's dataset, with their labels."""
        return list(self.model.samples(name, limit))

    def label_columns(self) -> dict[str, dict[str, Any]]:
        """The dataset's label columns: name -> ``{"kind": "binary" | "real", "count": ...}``."""
        return dict(self.model.manifest.get("label_columns", {}))

    def label_kind(self, column: str) -> str:
        """``binary`` or ``real``; an unknown column is a ConfigError listing the available ones."""
        columns = self.label_columns()
        if column not in columns:
            raise unknown_choice("attribute", column, columns)
        return str(columns[column]["kind"])

    def labelled(self, split: str, column: str, limit: int = 0, batch_size: int = 64) -> Iterator[LabelledBatch]:
        """Batches of the split's images that have a value for ``column`` (at most ``limit`` of them, 0: all)."""
        self.label_kind(column)
        for group in chunks(self.model.samples(split, limit, column), batch_size):
            yield LabelledBatch([s.name for s in group], torch.stack([s.image for s in group]),
                                torch.tensor([float(s.labels[column]) for s in group]))

    def vector_path(self, attribute: str) -> Path:
        """Where the run keeps the direction of ``attribute``: ``run_dir/vectors/<attribute>.safetensors`` (a
        label column of a run's manifest that is not a file name is refused)."""
        folder = self.model.run_dir / VECTORS_DIR
        path = inside(folder, f"{attribute}.safetensors")
        if path is None:
            raise DataError(f"label column '{attribute}' of {self.model.run_dir} is not a file name: its vector "
                            f"would be written outside {folder}")
        return path

    def attribute_vector(self, attribute: str, train_limit: int = 0) -> tuple[AttributeVector, bool]:
        """The latent direction of a label column and whether it was reused: the run's saved one when it was
        computed with the same checkpoint, weights and ``train_limit``; else computed from the training split's
        labelled images (at most ``train_limit``, 0: all) and saved for reuse."""
        kind = self.label_kind(attribute)
        m, path = self.model, self.vector_path(attribute)
        source = f"{m.checkpoint.name} {m.weights} train_limit={train_limit}"
        if path.is_file():
            saved = AttributeVector.load(path)
            if saved.source == source:
                return saved, True
        batches = bar(self.labelled(TRAIN, attribute, train_limit), f"encoding images labelled {attribute}", unit="batch")
        with batches:
            mu, values = posterior_means(m.encode, batches)
        vector = AttributeVector(attribute, kind, direction(mu, values, kind, attribute), len(values), source)
        vector.save(path)
        return vector, False

    def posterior_means(self, split: str, limit: int = 0) -> torch.Tensor:
        """Posterior means ``[N, *latent_shape]`` of the split's first ``limit`` images (0: all), on the CPU."""
        return self.model.posterior_means(split, limit)

    def output_file(self, name: str) -> Path:
        """The path of file ``name`` (may hold sub-folders) in the output folder; a name that leads outside it
        (``../x.png``, an absolute path, a link out) is refused."""
        path = inside(self.output, name)
        if path is None:
            raise PluginError(f"{self.task} tried to write '{name}', outside its output folder {self.output}: "
                              "pass a file name inside it")
        return path

    def save_image(self, name: str, image: torch.Tensor) -> Path:
        """One PNG ``name`` in the output folder."""
        path = self.output_file(name)
        save_png(image, path)
        return path

    def save_grid(self, name: str, rows: list[list[torch.Tensor]] | torch.Tensor, nrow: int | None = None,
                  columns: list[str] | None = None) -> Path:
        """A grid PNG of equal-length rows (or a batch with ``nrow`` a row), with optional column captions."""
        path = self.output_file(name)
        save_grid(rows, path, nrow, columns)
        return path

