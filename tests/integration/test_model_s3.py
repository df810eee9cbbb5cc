"""Models to and from a real S3 server: export publishes with a manifest, load fetches and verifies."""

from __future__ import annotations

import json

import pytest
import torch

from internvl_trainer.model.export import export
from internvl_trainer.model.load import load
from internvl_trainer.model.processor import build_processor
from internvl_trainer.model.tiny import tiny_config, tiny_model, tiny_tokenizer
from internvl_trainer.storage import IntegrityError

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_export_to_s3_then_load_from_s3(storage, base, tmp_path, layout):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tiny_config(tokenizer, image_size=56), seed=4)
    processor = build_processor(tokenizer, image_size=56, image_seq_length=4, max_tiles=2)
    uri = f"{base}/{layout}"
    assert export(model, uri, layout, processor=processor, storage=storage, staging_dir=tmp_path) == uri
    manifest = json.loads(storage.read_bytes(f"{uri}/manifest.json"))
    assert {"config.json", "tokenizer.json", "processor_config.json"} <= {f["path"] for f in manifest["files"]}

    loaded = load(uri, storage=storage, cache_dir=tmp_path / "cache")
    assert loaded.layout == layout
    assert loaded.model.name_or_path == uri
    ids = torch.tensor([[3] + [tokenizer.context_image_token_id] * 4 + [4, 20, 21]])
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixels).logits
        got = loaded.model(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(got, expected)


def test_a_corrupted_object_is_not_loaded(storage, base, tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tiny_config(tokenizer, image_size=56))
    uri = f"{base}/model"
    export(model, uri, "hf", tokenizer=tokenizer, storage=storage, staging_dir=tmp_path)
    config = storage.read_bytes(f"{uri}/config.json")
    storage.write_bytes(f"{uri}/config.json", config.replace(b'"internvl"', b'"internvX"'))
    with pytest.raises(IntegrityError):
        load(uri, storage=storage, cache_dir=tmp_path / "cache")
