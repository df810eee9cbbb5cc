"""``internvl-data``: validate checks every sample and reports bad ones by kind with file:line,
convert writes JSON lines with token lengths, stats draws its PNG; unusable input exits 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from internvl_trainer.config import VideoConfig
from internvl_trainer.data import plots
from internvl_trainer.data.sample import SampleBuilder
from internvl_trainer.data.template import ConversationEncoder
from internvl_trainer.data.video import FrameList
from internvl_trainer.data_cli import main
from tests.unit.trainer.data.annotation_data import BAD_MESSAGES, FRAMES, GOOD, GUIDE, write_dataset
from tests.unit.trainer.data.conftest import bomb_png, train_tokenizer
from tests.unit.trainer.model.conftest import original_folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The dataset's folder with ``meta.json``, and a tokenizer folder beside it."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root)
    train_tokenizer().save_pretrained(root / "tokenizer")
    return root


@pytest.fixture
def run(dataset, tmp_path, capsys):
    """Runs internvl-data with its own cache folder; returns (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--cache-dir", str(tmp_path / "cache")])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def expected_validation(root) -> list[str]:
    lines = [
        f"{root}/meta.json: 2 dataset(s), 15 samples, 7 bad",
        f"  mixed: 13 samples in {root}/mixed.jsonl; frames 2, image 1, multi-image 1, text 1, video 1;"
        " bad 7 (conversation 2, image 1, json 1, missing 1, path 1, placeholder 1)",
        f"  guide: 2 samples in {root}/guide.json; image 1, text 1",
        "bad samples by kind:",
    ]
    by_kind: dict[str, list[str]] = {}
    for line, text in BAD_MESSAGES.items():
        kind, message = text.split(": ", 1)
        by_kind.setdefault(kind, []).append(f"    {root}/mixed.jsonl:{line}: {message.format(root=root)}")
    for kind in sorted(by_kind, key=lambda kind: (-len(by_kind[kind]), kind)):
        lines += [f"  {kind}: {len(by_kind[kind])}", *by_kind[kind]]
    return lines


def test_validate_reports_every_bad_sample_by_kind(dataset, run):
    code, out, err = run("validate", str(dataset / "meta.json"))
    assert code == 0 and err == ""
    got = out.splitlines()
    expected = expected_validation(dataset)
    assert len(got) == len(expected)
    for line, want in zip(got, expected, strict=True):
        assert line.startswith(want)  # the undecodable image's message goes on with Pillow's words


def test_strict_validation_exits_1_on_bad_samples(dataset, run, tmp_path):
    code, out, _ = run("validate", "--strict", str(dataset / "meta.json"))
    assert code == 1 and out.splitlines()[0].endswith("15 samples, 7 bad")
    clean = tmp_path / "clean"
    clean.mkdir()
    shutil.copytree(dataset / "images", clean / "images")
    (clean / "guide.json").write_text(json.dumps(GUIDE))
    (clean / "meta.json").write_text(json.dumps({"guide": {"train": "guide.json"}}))
    assert run("validate", "--strict", str(clean / "meta.json"))[0] == 0


def test_validate_as_json_and_as_a_report_file(dataset, run, tmp_path):
    code, out, _ = run(
        "validate", "--output", "json", "--report", str(tmp_path / "report.json"), str(dataset / "meta.json")
    )
    report = json.loads(out)
    assert code == 0 and report == json.loads((tmp_path / "report.json").read_text())
    assert (report["valid"], report["samples"], report["readable"], report["maxLength"]) == (False, 15, 8, None)
    mixed = report["datasets"]["mixed"]
    assert mixed["kinds"] == {"image": 1, "text": 1, "multi-image": 1, "video": 1, "frames": 2}
    assert mixed["tiles"] == 13 + (7 + 1) + 32 + 12 + 4  # 640x480 in 12, both images in 6 each, frames
    assert report["datasets"]["guide"] == {
        "annotation": f"{dataset}/guide.json",
        "format": "json",
        "samples": 2,
        "readable": 2,
        "kinds": {"image": 1, "text": 1},
        "bad": {},
        "tiles": 1,
    }
    assert report["badSamples"]["byKind"] == {
        "conversation": 2,
        "image": 1,
        "json": 1,
        "missing": 1,
        "path": 1,
        "placeholder": 1,
    }


def test_token_lengths_are_those_of_the_sample_builder(dataset, run):
    code, out, _ = run(
        "validate", "--output", "json", "--tokenizer", str(dataset / "tokenizer"), "--max-seq-length", "4000",
        str(dataset / "meta.json"),
    )  # fmt: skip
    report = json.loads(out)
    assert code == 0 and report["maxLength"] == 4000
    mixed, guide = report["datasets"]["mixed"], report["datasets"]["guide"]
    assert (mixed["tokens"], mixed["maxTokens"], guide["tokens"], guide["maxTokens"]) == (19151, 8673, 520, 313)
    assert report["badSamples"]["byKind"]["overlong"] == 1
    assert report["badSamples"]["examples"]["overlong"] == [
        f"{dataset}/mixed.jsonl:4: 8,673 tokens with 32 tiles; the maximum is 4,000"
    ]
    # Each good sample built directly (videos at their most frames) adds up to the same tokens.
    builder = SampleBuilder(
        ConversationEncoder(train_tokenizer()), max_length=1 << 20, video=VideoConfig(sampling="middle")
    )
    lengths = []
    for _, record in GOOD:
        if "video" in record:
            frames = record["video"]
            if isinstance(frames, str) and frames.endswith("/"):
                frames = [f"{frames}frame_{number}.png" for number in range(FRAMES)]
            video = FrameList([(dataset / f).read_bytes() for f in frames]) if isinstance(frames, list) else None
            sample = builder.build(record["conversations"], video=video or str(dataset / frames))
        else:
            images = record.get("image", [])
            images = [images] if isinstance(images, str) else images
            sample = builder.build(record["conversations"], images=[(dataset / i).read_bytes() for i in images])
        lengths.append(len(sample))
    assert lengths[0] == 3502  # as test_sample pins it for this picture and conversation
    assert sum(lengths) == mixed["tokens"] and max(lengths) == mixed["maxTokens"]


def test_meta_only_checks_the_meta_file_alone(dataset, run):
    code, out, _ = run("validate", "--meta-only", str(dataset / "meta.json"))
    assert code == 0
    assert out.splitlines() == [
        f"{dataset}/meta.json: valid, 2 dataset(s)",
        f"  mixed: {dataset}/mixed.jsonl (images under {dataset}, repeat 0.5)",
        f"  guide: {dataset}/guide.json (images under {dataset}, repeat 1.5)",
    ]


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        (None, "{meta}: cannot read the meta file: {meta}: no such file"),
        ('{\n  "a": {"root": "/data",}\n}\n', "{meta}:2:25: invalid JSON"),
        ("{}", "at least 1 item"),
        ('{"a": {"root": "/d", "annotation": "t.jsonl", "repeat_time": 0, "weight_decay": 1}}', "a.repeat_time: "),
        ('{"a": {"annotation": "gone.jsonl"}}', "a.annotation: cannot read {folder}/gone.jsonl"),
        ('{"a": {"annotation": "broken.json"}}', "a.annotation: {folder}/broken.json:1: the JSON array is not closed"),
        ("[" * 100_000 + "]" * 100_000, "{meta}: invalid JSON: maximum recursion depth exceeded"),
        ('{"a":\n {"root": "caf\xe9"}}', "{meta}:2: not UTF-8 text (byte 0xe9)"),
    ],
)
def test_unusable_input_exits_2(run, tmp_path, meta, problem):
    path = tmp_path / "meta.json"
    if meta is not None:
        path.write_text(meta, encoding="latin-1")
    (tmp_path / "broken.json").write_text('[{"a": 1}')
    code, out, err = run("validate", str(path))
    assert code == 2 and out == ""
    assert problem.format(meta=path, folder=tmp_path) in err


def test_a_tokenizer_that_cannot_be_loaded_is_bad_input(dataset, run, tmp_path):
    code, _, err = run("validate", "--tokenizer", str(tmp_path / "none"), str(dataset / "meta.json"))
    assert code == 2 and err.startswith(f"--tokenizer: cannot load a tokenizer from {tmp_path / 'none'}")


def test_an_original_layout_tokenizer_loads_without_a_prompt_or_its_code(dataset, run, tmp_path):
    """InternVL's releases name their classes in config.json's auto_map: transformers must neither
    ask on a terminal whether to run that code nor run it, here with stdin closed as in a pod."""
    folder = original_folder(tmp_path / "original", train_tokenizer(), tokenizer_code=False)
    command = [str(Path(sys.executable).parent / "internvl-data"), "validate", str(dataset / "meta.json")]
    done = subprocess.run(
        [*command, "--tokenizer", str(folder)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert "custom code" not in done.stdout + done.stderr
    assert not list(folder.glob("*.ran"))
    assert (done.returncode, done.stdout) == run(
        "validate", "--tokenizer", str(dataset / "tokenizer"), str(dataset / "meta.json")
    )[:2]


def test_convert_a_json_array_to_json_lines_with_lengths(dataset, run, tmp_path):
    output = tmp_path / "out" / "guide.jsonl"
    code, out, _ = run("convert", str(dataset / "guide.json"), str(output), "--tokenizer", str(dataset / "tokenizer"))
    assert code == 0
    assert out.splitlines() == [
        f"{output}: 2 of 2 samples from {dataset}/guide.json (json)",
        "  2 with their token length",
    ]
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["length"] for record in written] == [313, 207]
    assert written[0]["conversations"] == [
        {"from": "system", "value": "You are helpful."},
        {"from": "human", "value": "Describe the image."},
        {"from": "gpt", "value": "A cat."},
    ]
    assert {key: value for key, value in written[0].items() if key not in ("length", "conversations")} == {
        "image": "images/b.png"
    }


def test_convert_keeps_every_object_and_reports_problems(dataset, run, tmp_path):
    output = tmp_path / "mixed.jsonl"
    code, out, _ = run("convert", "--format", "json", str(dataset / "mixed.jsonl"), str(output))
    result = json.loads(out)
    assert code == 0
    assert (result["samples"], result["written"], result["withLength"]) == (13, 12, 0)  # the broken line is left out
    assert result["badSamples"]["byKind"] == {"conversation": 2, "json": 1, "placeholder": 1}
    lines = output.read_text().splitlines()
    assert len(lines) == 12 and all("length" not in json.loads(line) for line in lines)
    assert run("convert", "--strict", str(dataset / "mixed.jsonl"), str(output))[0] == 1


def test_stats_draws_its_png(dataset, run, tmp_path, monkeypatch):
    drawn: list[dict] = []
    draw = plots.stats_png

    def recorded_stats_png(path, **inputs):
        drawn.append(inputs)
        return draw(path, **inputs)

    monkeypatch.setattr(plots, "stats_png", recorded_stats_png)
    png = tmp_path / "stats.png"
    code, out, _ = run(
        "stats", str(dataset / "meta.json"), "--png", str(png), "--tokenizer", str(dataset / "tokenizer"),
        "--output", "json",
    )  # fmt: skip
    result = json.loads(out)
    assert code == 0 and result["png"] == str(png)
    with Image.open(png) as image:
        assert (image.format, image.size) == ("PNG", (1200, 900))
        assert image.text["Title"] == f"{dataset}/meta.json: 15 samples in 2 dataset(s)"
        assert len(image.convert("RGB").getcolors(1 << 16)) > 10  # something is drawn
    assert result["datasets"]["mixed"]["tokens"] == 19151
    # every bad sample is drawn by its problem, and each dataset's samples by kind, bad ones included
    (inputs,) = drawn
    assert inputs["bad"] == {"conversation": 2, "image": 1, "json": 1, "missing": 1, "path": 1, "placeholder": 1}
    assert inputs["datasets"]["mixed"]["bad"] == 7 and inputs["max_length"] is not None
    code, out, _ = run("stats", str(dataset / "meta.json"), "--png", str(png))
    assert code == 0
    assert out.splitlines() == [
        f"{png}: {dataset}/meta.json: 15 samples in 2 dataset(s)",
        "  mixed: bad 7, frames 2, image 1, multi-image 1, text 1, video 1",
        "  guide: image 1, text 1",
        "  tiles per sample: min 0, median 8, max 32",
    ]


@pytest.mark.parametrize("measured", [False, True], ids=["decoded", "tokenized"])
def test_decompression_bombs_are_bad_images(dataset, run, tmp_path, measured):
    """Past twice Pillow's limit Pillow refuses the image; below, the pixel limit does (Pillow's own
    by default, where Pillow would only warn)."""
    folder = tmp_path / "bombs"
    folder.mkdir()
    (folder / "huge.png").write_bytes(bomb_png(20000, 20000))
    (folder / "large.png").write_bytes(bomb_png(10000, 9000))
    Image.new("RGB", (64, 48), "red").save(folder / "red.png")
    lines = [
        {"image": name, "conversations": GOOD[0][1]["conversations"]} for name in ("red.png", "huge.png", "large.png")
    ]
    (folder / "bombs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "meta.json").write_text(json.dumps({"bombs": {"root": ".", "annotation": "bombs.jsonl"}}))
    tokenizer = ["--tokenizer", str(dataset / "tokenizer")] if measured else []
    code, out, err = run("validate", *tokenizer, str(folder / "meta.json"))
    assert (code, err) == (0, "")
    assert [line for line in out.splitlines()[1:] if not line.startswith("    tokens:")] == [
        f"  bombs: 3 samples in {folder}/bombs.jsonl; image 1; bad 2 (image 2)",
        "bad samples by kind:",
        "  image: 2",
        f"    {folder}/bombs.jsonl:2: cannot open image: Image size (400000000 pixels) exceeds limit of 178956970 "
        "pixels, could be decompression bomb DOS attack.",
        f"    {folder}/bombs.jsonl:3: 10000x9000 image: 90,000,000 pixels, more than the limit of 89,478,485 "
        "(data.maxImagePixels; a decompression bomb?)",
    ]
