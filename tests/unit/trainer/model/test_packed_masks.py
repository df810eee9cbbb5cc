"""GPT-OSS on packed rows: each sample's logits equal those of the sample alone once the masks come
from the position ids (sliding-window layers included: the samples are longer than the window)."""

from __future__ import annotations

import torch

from internvl_trainer.model.export import save_hf
from internvl_trainer.model.load import load
from internvl_trainer.model.packed_masks import derive_packed_masks
from tests.unit.trainer.model.conftest import make_model

LENGTHS = (13, 11)


def packed_and_alone(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of two samples packed in one row (no mask, positions restarting, no cache), and
    of each sample alone, concatenated."""
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randint(10, 300, (1, length), generator=generator) for length in LENGTHS]
    positions = torch.cat([torch.arange(length) for length in LENGTHS])[None]
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=torch.cat(samples, dim=1), position_ids=positions, use_cache=False).logits
        alone = torch.cat([model(input_ids=sample, use_cache=False).logits for sample in samples], dim=1)
    return packed, alone


def test_without_derived_masks_gpt_oss_attends_across_samples(tokenizer):
    packed, alone = packed_and_alone(make_model(tokenizer, "gpt_oss"))
    torch.testing.assert_close(packed[:, : LENGTHS[0]], alone[:, : LENGTHS[0]], rtol=0, atol=1e-5)
    assert (packed[:, LENGTHS[0] :] - alone[:, LENGTHS[0] :]).abs().max() > 0.1


def test_derived_masks_keep_each_sample_to_itself(tokenizer):
    model = make_model(tokenizer, "gpt_oss")
    assert derive_packed_masks(model) == 1
    packed, alone = packed_and_alone(model)
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
    assert derive_packed_masks(make_model(tokenizer, "qwen3_moe")) == 0  # derives them itself


def test_loaded_gpt_oss_models_derive_them(tokenizer, processor, tmp_path):
    save_hf(make_model(tokenizer, "gpt_oss"), tmp_path / "model", processor=processor)
    packed, alone = packed_and_alone(load(tmp_path / "model").model)
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
