"""The run's datasets: the held-out split is seeded, disjoint from training and covers every line;
samples are built from their lines with their own randomness."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import InternVLConfig

from internvl_trainer.data.errors import ImageDecodeError, StrictDataError
from internvl_trainer.data.sampling import SampleRef
from internvl_trainer.model.processor import load_tokenizer
from internvl_trainer.storage import Storage
from internvl_trainer.train.datasets import Where, builder_for, open_run_data
from tests.unit.trainer.data.conftest import encode, photo
from tests.unit.trainer.train.runs import records, train_config, write_data


def open_data(model_dir, meta, tmp_path, *, bad_dir=None, **sections):
    """The run data of a train.yaml around ``meta``; ``sections`` as in ``train_config``."""
    config = train_config(str(model_dir), str(meta), str(tmp_path / "out"), **sections)
    return open_run_data(
        config,
        load_tokenizer(model_dir),
        InternVLConfig.from_pretrained(model_dir),
        storage=Storage(),
        cache_dir=tmp_path / "cache",
        bad_dir=bad_dir,
    )


@pytest.fixture
def opened(tmp_path, tiny_model_dir):
    def make(seed: int = 7, eval_split: float = 0.25, count: int = 12):
        meta = write_data(tmp_path / f"data-{count}", count=count)
        return open_data(tiny_model_dir, meta, tmp_path, data={"evalSplit": eval_split}, training={"seed": seed})

    return make


def test_held_out_split(opened):
    data = opened()
    (spec,) = data.specs()
    assert (spec.name, spec.size) == ("pictures", 9)
    held = [where.line for where in data.eval_refs()]
    trained = [data.line(0, index) for index in range(spec.size)]
    assert len(held) == 3 and sorted(held + trained) == list(range(12))
    assert held == [where.line for where in opened().eval_refs()]  # the same with the same seed
    assert held != [where.line for where in opened(seed=8).eval_refs()]


def test_a_drawn_sample_is_its_line(opened):
    data = opened(eval_split=0.0, count=8)
    sample = data.build(SampleRef(dataset=0, index=3, epoch=0, position=0))
    record = data.record(Where(0, data.line(0, 3)))
    answer = record["conversations"][1]["value"]
    text = data.builder.encoder.tokenizer.decode(sample.input_ids[sample.labels != -100])
    assert text.startswith(answer)
    assert sample.pixel_values.shape == (1, 3, 56, 56) and sample.kind == "image"
    again = data.build(SampleRef(dataset=0, index=3, epoch=0, position=0))
    assert torch.equal(again.input_ids, sample.input_ids) and torch.equal(again.pixel_values, sample.pixel_values)
    assert data.where(Where(0, 2)).endswith("train.jsonl:3")


def test_the_fine_tuning_guide_variant_trains_as_its_jsonl_twin(tmp_path, tiny_model_dir):
    """``train``/``image_folder`` keys, a JSON array, user/assistant roles and a system turn read
    as the same samples as InternVL's own spelling; the meta file's weight reaches the sampler."""
    meta = write_data(tmp_path / "data", count=4)
    twin = tmp_path / "data/guide.json"
    guide = []
    for record in records(4):
        question, answer = record["conversations"]
        guide.append(
            {
                "image": record["image"],
                "conversations": [
                    {"from": "system", "value": "You are a helpful assistant."},
                    {"from": "user", "value": question["value"]},
                    {"from": "assistant", "value": answer["value"]},
                ],
            }
        )
    twin.write_text(json.dumps(guide, indent=2))
    guide_meta = tmp_path / "data/guide-meta.json"
    guide_meta.write_text(json.dumps({"guide": {"image_folder": ".", "train": "guide.json", "weight": 3}}))

    jsonl, array = open_data(tiny_model_dir, meta, tmp_path), open_data(tiny_model_dir, guide_meta, tmp_path)
    (spec,) = array.specs()
    assert (spec.name, spec.size, spec.weight) == ("guide", 4, 3.0)
    assert array.report()["datasets"]["guide"]["format"] == "json"
    # "[" then 17 lines per object: the second object starts on line 19.
    assert array.where(Where(0, 1)) == f"{twin}:19"
    for index in range(4):
        ref = SampleRef(dataset=0, index=index, epoch=0, position=0)
        plain, guided = jsonl.build(ref), array.build(ref)
        text = array.builder.encoder.tokenizer.decode(guided.input_ids)
        assert "You are a helpful assistant." in text
        assert torch.equal(plain.pixel_values, guided.pixel_values)
        assert torch.equal(plain.input_ids[plain.labels != -100], guided.input_ids[guided.labels != -100])
    assert sorted((tmp_path / "cache/annotation-index").iterdir())  # indexes kept for every rank


def test_bad_samples_are_counted_by_kind_and_strict_mode_names_the_first(tmp_path, tiny_model_dir):
    folder = tmp_path / "data"
    meta = write_data(folder, count=3)
    lines = (folder / "train.jsonl").read_text().splitlines()
    missing = json.loads(lines[1]) | {"image": "images/nowhere.png"}
    outside = json.loads(lines[2]) | {"image": "../secret.png"}
    (folder / "train.jsonl").write_text("\n".join([lines[0], json.dumps(missing), json.dumps(outside)]) + "\n")

    data = open_data(tiny_model_dir, meta, tmp_path, data={"strict": False})
    built = [data.build_eval(Where(0, line)) for line in range(3)]
    assert built[0] is not None and built[1:] == [None, None]
    summary = data.report()["badSamples"]
    assert summary["byKind"] == {"missing": 1, "path": 1}
    assert summary["examples"]["missing"][0].startswith(f"{folder / 'train.jsonl'}:2: images/nowhere.png")
    assert data.report()["refusedKeys"] == 1
    with pytest.raises(StrictDataError, match=f"^{folder / 'train.jsonl'}:2: "):
        open_data(tiny_model_dir, meta, tmp_path, data={"strict": True}).build_eval(Where(0, 1))


def test_the_run_builder_takes_its_limits_from_train_yaml_and_its_tile_from_the_model(tmp_path, tiny_model_dir):
    limits = {"maxSeqLength": 4096, "maxTiles": 6, "overlong": "reduce-tiles", "maxImagePixels": 1048576}
    config = train_config(str(tiny_model_dir), "/data/meta.json", str(tmp_path / "out"), data=limits)
    tokenizer = load_tokenizer(tiny_model_dir)
    builder = builder_for(config, tokenizer, InternVLConfig.from_pretrained(tiny_model_dir))
    assert (builder.max_length, builder.overlong, builder.tiler.config.max_tiles) == (4096, "reduce-tiles", 6)
    assert (builder.tiler.config.tile_size, builder.tokens_per_tile) == (56, 4)
    question = [{"from": "human", "value": "Describe the image."}, {"from": "gpt", "value": "A cat."}]
    sample = builder.build(question, images=[encode(photo(640, 480, seed=1), "JPEG", quality=90)])
    assert sample.tiles_per_image == [7] and tuple(sample.pixel_values.shape) == (7, 3, 56, 56)  # 3x2 and a thumbnail
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((sample.input_ids == context).sum()) == 7 * 4
    with pytest.raises(ImageDecodeError, match="^1920x1080 image: 2,073,600 pixels, more than the limit of 1,048,576 "):
        builder.build(question, images=[encode(photo(1920, 1080, seed=2), "PNG")])
