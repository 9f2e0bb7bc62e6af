"""The configuration reference is generated from the code; a stale docs/config.md fails here."""
from pathlib import Path

from vaeforge.config.reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_config_reference_is_current():
    assert DOC.read_text() == render(), "regenerate: python -m vaeforge.config.reference > docs/config.md"


def test_reference_lists_every_schema_key_and_plugin_option():
    text = render()
    for key in ("`trainer.max_steps`", "`data.corruption.kind`", "`optim.grad_clip`", "### `unet`", "`widths`"):
        assert key in text
