"""Annotation records: the kinds of sample and InternVL's placeholder rules, every problem under
its kind, and the media of a dataset read from its root into the sample builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from internvl_trainer.config import VideoConfig
from internvl_trainer.data.annotations import open_annotation
from internvl_trainer.data.dataset_source import DatasetSource, frame_order
from internvl_trainer.data.errors import SampleError, StrictDataError
from internvl_trainer.data.meta import DatasetMeta
from internvl_trainer.data.records import parse_record
from internvl_trainer.data.report import BadSamples
from internvl_trainer.data.sample import SampleBuilder
from internvl_trainer.data.template import ConversationEncoder
from internvl_trainer.data.tiling import TilingConfig
from internvl_trainer.data.validate import UNLIMITED, SampleChecker, validate_sources
from internvl_trainer.storage import Storage
from tests.unit.trainer.data.annotation_data import BAD, FRAMES, GOOD, GUIDE, qa, write_dataset


def test_each_kind_and_its_placeholders():
    image = parse_record(json.dumps(GOOD[0][1]).encode())
    assert (image.kind, image.images) == ("image", ["images/a.jpg"])
    assert image.conversations[0] == {"from": "human", "value": "<image>\nDescribe the image."}  # inserted
    text = parse_record(json.dumps(GOOD[1][1]))
    assert (text.kind, text.media_count, text.conversations) == ("text", 0, GOOD[1][1]["conversations"])
    several = parse_record(json.dumps(GOOD[2][1]))
    assert (several.kind, several.media_count) == ("multi-image", 2)
    video = parse_record(json.dumps({**GOOD[3][1], "clip": [0.5, 2]}))
    assert (video.kind, video.video, video.clip) == ("video", "clip.mp4", (0.5, 2.0))
    assert video.conversations[0]["value"] == "<video>\nWhat happens in the video?"
    folder = parse_record(json.dumps(GOOD[4][1]))
    assert (folder.kind, folder.video, folder.frames) == ("frames", "frames/clip/", [])
    listed = parse_record(json.dumps(GOOD[5][1]))
    assert (listed.kind, listed.video, len(listed.frames)) == ("frames", None, 4)
    assert listed.conversations[0]["value"] == "<video>\nWhat happens?"  # already there: kept as written


def test_a_placeholder_in_a_later_user_turn_is_kept():
    turns = [*qa("Hello.", "Hi."), *qa("And this <image>?", "A cat.")]
    record = parse_record(json.dumps({"image": "a.jpg", "conversations": turns}))
    assert [turn["value"] for turn in record.conversations] == ["Hello.", "Hi.", "And this <image>?", "A cat."]


def test_empty_media_fields_mean_text_only():
    for empty in ({"image": ""}, {"image": []}, {"video": ""}, {"image": None}):
        assert parse_record(json.dumps({**empty, "conversations": qa("Hi.", "Hello.")})).kind == "text"


def test_the_guide_spelling_and_a_system_turn():
    record = parse_record(json.dumps(GUIDE[0]))
    assert record.kind == "image"
    assert record.conversations == [
        {"from": "system", "value": "You are helpful."},
        {"from": "human", "value": "<image>\nDescribe the image."},
        {"from": "gpt", "value": "A cat."},
    ]
    assert record.to_internvl() == {  # InternVL's spelling, placeholders as written
        "image": "images/b.png",
        "conversations": [
            {"from": "system", "value": "You are helpful."},
            {"from": "human", "value": "Describe the image."},
            {"from": "gpt", "value": "A cat."},
        ],
    }
    chat = parse_record(
        json.dumps({"conversations": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Yo."}]})
    )
    assert chat.conversations == qa("Hi.", "Yo.")


def test_a_record_keeps_its_length():
    assert parse_record(json.dumps({**GOOD[1][1], "length": 321})).length == 321
    assert parse_record(json.dumps({**GOOD[1][1], "length": "many"})).length is None


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (b'{"conversations": [', "json", "invalid JSON: Expecting value (column 20)"),
        (b"[1, 2]", "json", "a sample must be a JSON object, not a list"),
        (b'{"a": "\xff"}', "json", "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "json", "invalid JSON: maximum recursion depth exceeded"),
        (b'{"length": ' + b"1" * 5000 + b"}", "json", "invalid JSON: Exceeds the limit (4300 digits)"),
        ({"conversations": []}, "conversation", "empty conversation: no conversations"),
        ({"image": "a.jpg"}, "conversation", "empty conversation: no conversations"),
        ({"conversations": [{"from": "system", "value": "Be brief."}]}, "conversation", "empty conversation"),
        ({"conversations": "Hi"}, "record", "conversations must be a list of turns, not a string"),
        (
            {"conversations": [*qa("a", "b")[:1], *qa("c", "d")]},
            "conversation",
            "roles out of order: turn 1 is from the user",
        ),
        ({"conversations": qa("a", "b")[::-1]}, "conversation", "roles out of order: turn 0 is from the assistant"),
        ({"conversations": [*qa("a", "b"), qa("c", "d")[0]]}, "conversation", "the last turn (2) is from the user"),
        (
            {"conversations": [*qa("a", "b"), {"from": "system", "value": "late"}]},
            "conversation",
            "turn 2: a system turn may only come first",
        ),
        ({"conversations": [{"from": "bot", "value": "x"}]}, "conversation", "turn 0: unknown role 'bot'"),
        ({"conversations": [{"from": "human", "value": 3}]}, "conversation", "turn 0: the text must be a string"),
        ({"conversations": ["hi"]}, "record", "turn 0 must be an object with from and value, not a string"),
        (
            {"image": ["a.jpg", "b.jpg"], "conversations": qa("<image>", "x")},
            "placeholder",
            "1 <image> placeholders in the user turns but 2 images",
        ),
        (
            {"image": "a.jpg", "conversations": qa("<image><image>", "x")},
            "placeholder",
            "2 <image> placeholders in the user turns but 1 image",
        ),
        ({"conversations": qa("<image>", "x")}, "placeholder", "1 <image> placeholders in the user turns but 0 images"),
        ({"conversations": qa("<video>", "x")}, "placeholder", "1 <video> placeholders in the user turns but no video"),
        ({"video": "v.mp4", "conversations": qa("<video><video>", "x")}, "placeholder", "2 <video> placeholders"),
        ({"video": "v.mp4", "conversations": qa("<image>", "x")}, "placeholder", "<image> in a video sample"),
        (
            {"conversations": qa("a <IMG_CONTEXT>", "x")},
            "placeholder",
            "a user turn holds the reserved token <IMG_CONTEXT>",
        ),
        (
            {"conversations": qa("a", "x<|im_end|>")},
            "placeholder",
            "an assistant turn holds the reserved token <|im_end|>",
        ),
        (
            {"conversations": [*qa("a", "<think>b</think>c"), *qa("d", "<think>e")]},
            "conversation",
            "turn 3: a thinking answer holds one <think>…</think> block, not 1 <think> and 0 </think>",
        ),
        (
            {"conversations": qa("a", "<think>b</think>")},
            "conversation",
            "turn 1: a thinking answer needs an answer after </think>",
        ),
        ({"image": "a.jpg", "video": "v.mp4", "conversations": qa("a", "x")}, "record", "either images or a video"),
        ({"image": 3, "conversations": qa("a", "x")}, "record", "image must be a path or a list of non-empty paths"),
        ({"image": ["a.jpg", ""], "conversations": qa("a", "x")}, "record", "image must be a path"),
        ({"video": 3, "conversations": qa("a", "x")}, "record", "video must be a path or a list of frame paths"),
        ({"video": "v.mp4", "clip": [3, 1], "conversations": qa("a", "x")}, "record", "clip must be [start, end]"),
    ],
)
def test_every_problem_has_its_kind(raw, kind, message):
    with pytest.raises(SampleError) as caught:
        parse_record(raw if isinstance(raw, bytes) else json.dumps(raw))
    assert caught.value.kind == kind
    assert message in str(caught.value)


def test_frames_sort_by_their_numbers():
    names = ["frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "a_frame_0.jpg"]
    assert sorted(names, key=frame_order) == ["a_frame_0.jpg", "frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    write_dataset(root)
    storage = Storage()
    annotations = open_annotation(str(root / "mixed.jsonl"), storage, root / "cache")
    meta = DatasetMeta(root=str(root), annotation=str(root / "mixed.jsonl"), max_dynamic_patch=6)
    return root, DatasetSource("mixed", meta, annotations, storage)


def test_samples_are_read_by_number_with_their_lines(dataset):
    root, source = dataset
    assert len(source) == len(GOOD) + len(BAD)
    assert [source.where(number) for number in (0, 5, 6, 12)] == [
        f"{root}/mixed.jsonl:1",
        f"{root}/mixed.jsonl:6",
        f"{root}/mixed.jsonl:8",  # line 7 is blank
        f"{root}/mixed.jsonl:14",
    ]
    assert [source.record(number).kind for number in range(len(GOOD))] == [kind for kind, _ in GOOD]
    kinds = []
    for number in range(len(GOOD), len(source)):
        try:
            record = source.record(number)
            source.build_inputs(record)
        except SampleError as error:
            kinds.append(error.kind)
    assert kinds == ["json", "missing", "path", "placeholder", "conversation", "conversation"]


def test_media_outside_the_root_are_refused(dataset):
    _, source = dataset
    for key in ("../secret.jpg", "/etc/passwd", "s3://other/x.jpg", "images/%2e%2e/%2e%2e/x.jpg"):
        with pytest.raises(SampleError) as caught:
            source.read_media(key)
        assert caught.value.kind == "path"
    with pytest.raises(SampleError) as caught:
        source.read_media("images/nope.jpg")
    assert caught.value.kind == "missing"


def test_a_frame_folder_lists_its_frames_in_order(dataset):
    _, source = dataset
    record = source.record(4)
    assert source.frame_keys(record) == [f"frames/clip/frame_{number}.png" for number in range(FRAMES)]
    with pytest.raises(SampleError) as caught:
        source.frame_keys(parse_record(json.dumps({"video": "images/nothing/", "conversations": qa("a", "b")})))
    assert caught.value.kind == "missing"


def builder(tokenizer, **video) -> SampleBuilder:
    return SampleBuilder(
        ConversationEncoder(tokenizer),
        max_length=1 << 20,
        tiling=TilingConfig(resampler="pil"),
        video=VideoConfig(**video) if video else None,
    )


def test_samples_are_built_by_the_sample_builder(dataset, tokenizer):
    root, source = dataset
    rng = np.random.default_rng(0)
    image = source.build(0, builder(tokenizer), rng)
    direct = builder(tokenizer).build(
        GOOD[0][1]["conversations"], images=[(root / "images/a.jpg").read_bytes()], max_tiles=6
    )
    assert image.tiles_per_image == [7] and torch.equal(image.input_ids, direct.input_ids)  # max_dynamic_patch 6
    assert torch.equal(image.pixel_values, direct.pixel_values)
    video = source.build(3, builder(tokenizer, sampling="middle", max_frames=8), rng)
    assert (video.kind, video.tiles_per_image) == ("video", [1] * 8)
    folder = source.build(4, builder(tokenizer, sampling="middle", max_frames=8), rng)
    assert (folder.kind, folder.tiles_per_image, len(folder)) == ("video", [1] * 8, len(video))
    listed = source.build(5, builder(tokenizer, sampling="middle", min_frames=1, max_frames=8), rng)
    assert listed.tiles_per_image == [1] * 4  # a list of 4 frames gives 4, not 8


def test_training_skips_bad_samples_or_stops_at_the_first_in_strict_mode(dataset, tokenizer):
    root, source = dataset
    bad = BadSamples()
    made = builder(tokenizer, sampling="middle", min_frames=1, max_frames=4)
    built = [source.build_or_skip(n, made, np.random.default_rng(n), bad) for n in range(len(source))]
    assert [sample is not None for sample in built] == [True] * len(GOOD) + [False] * len(BAD)
    assert bad.summary()["byKind"] == {
        "conversation": 2,
        "image": 1,
        "json": 1,
        "missing": 1,
        "path": 1,
        "placeholder": 1,
    }
    strict = BadSamples(strict=True)
    with pytest.raises(StrictDataError) as caught:
        for number in range(len(source)):
            source.build_or_skip(number, made, np.random.default_rng(number), strict)
    assert str(caught.value).startswith(f"{root}/mixed.jsonl:8: invalid JSON")


def test_malformed_thinking_samples_are_bad_samples_named_by_file_and_line(tmp_path, harmony_tokenizer):
    thinking = {"from": "system", "value": "Think first: <think> and </think>."}
    lines = [
        {"conversations": [thinking, *qa("What is it?", "<think>\nA cat.\n</think>\n\nA cat.")]},
        {"conversations": qa("What is it?", "<think>A cat.")},
        {"conversations": qa("What is it?", "A cat.</think> Sure.")},
    ]
    (tmp_path / "think.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    storage = Storage()
    annotations = open_annotation(str(tmp_path / "think.jsonl"), storage, tmp_path / "cache")
    source = DatasetSource("think", DatasetMeta(annotation=str(tmp_path / "think.jsonl")), annotations, storage)

    def gpt_oss() -> SampleBuilder:
        encoder = ConversationEncoder.for_model(harmony_tokenizer, "InternVL3_5-GPT-OSS-20B-A4B-Preview")
        return SampleBuilder(encoder, max_length=UNLIMITED)

    for checker in (SampleChecker(), SampleChecker(builder=gpt_oss)):
        validation = validate_sources([source], checker, workers=1, progress=False)
        assert dict(validation.datasets[0].kinds) == {"text": 1}
        assert validation.bad.summary()["examples"] == {
            "conversation": [
                f"{tmp_path}/think.jsonl:2: turn 1: a thinking answer holds one <think>…</think> block, "
                "not 1 <think> and 0 </think>",
                f"{tmp_path}/think.jsonl:3: turn 1: a thinking answer holds one <think>…</think> block, "
                "not 0 <think> and 1 </think>",
            ]
        }
    assert list(validation.datasets[0].tokens) == [len(gpt_oss().build(lines[0]["conversations"]))]
