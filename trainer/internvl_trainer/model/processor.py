"""The tokenizer and processor saved with every model: InternVL's special tokens, the
``internvl2_5`` chat template, and an image processor that needs no torchvision.

- Special tokens: the nine InternVL adds (``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<quad>``,
  ``</quad>``, ``<ref>``, ``</ref>``, ``<box>``, ``</box>``), and the named ones transformers'
  InternVL processor reads (``start_image_token``, ``end_image_token``, ``context_image_token``),
  which survive ``save_pretrained``. ``<video>`` is never added to the vocabulary: InternVL replaces
  it in the text by one ``<image>`` line per frame before tokenizing, so a vocabulary has it only
  when the base had it (the ``-hf`` releases). It is named ``video_token`` only then, because
  transformers adds every named token to the vocabulary when it loads a tokenizer; otherwise the
  processor knows ``<video>`` as text alone (``InternVLCpuProcessor``).
- Loading never runs, nor asks to run, a folder's own code (``trust_remote_code=False``):
  original-layout folders name InternVL's classes in ``auto_map``, and a tokenizer class that
  exists only as remote code (InternLM2's) is read by transformers' generic class from its
  ``tokenizer.json``.
- Chat template: the fine-tuning template (reference: internvl-recipe.md §4.1, §10.2), with
  InternVL's default system message when a conversation has none, so that inference sees what
  training saw. An image item becomes ``<IMG_CONTEXT>\\n`` and a video ``<video>\\n``; the processor
  expands them to ``<img>`` + ``<IMG_CONTEXT>`` × tokens + ``</img>``.
- ``InternVLCpuProcessor``: transformers' ``InternVLProcessor`` without its video-processor slot,
  which requires torchvision (reference: environment.md §2.3), with ``GotOcr2ImageProcessorPil``
  (InternVL's tiling; ImageNet mean and std).
- Tile limits: ``with_tile_limits`` and ``retile_saved`` give a processor, or the one saved in a
  folder, a run's ``data.minTiles`` and ``data.maxTiles``, which a fine-tuned model is published with.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

from transformers import (
    AutoTokenizer,
    GotOcr2ImageProcessorPil,
    InternVLProcessor,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    TokenizersBackend,
)
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from internvl_trainer.config import DEFAULT_MAX_TILES
from internvl_trainer.data.template import FINAL_CHANNEL, INTERNVL2_5, INTERNVL3_5_GPT_OSS, ChatTemplate

log = logging.getLogger(__name__)

INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
"""The special tokens InternVL's fine-tuning adds (reference: internvl-recipe.md §1.7)."""

VIDEO_TOKEN = "<video>"
"""The video placeholder in text: named ``video_token`` only in vocabularies that hold it."""

NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
}
"""The named special tokens transformers' InternVL processor reads from the tokenizer (besides
``video_token``, see ``named_tokens``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _jinja_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def chat_template(template: ChatTemplate = INTERNVL2_5) -> str:
    """A fine-tuning template as a Jinja chat template (what ``apply_chat_template`` runs): the
    template's default system message unless the messages start with their own, each turn its
    header, content and end (the last assistant turn the template's last end), and with
    ``add_generation_prompt`` the assistant header. Harmony templates put answers in the ``final``
    channel."""
    t = template
    answer = _jinja_string(FINAL_CHANNEL if t.channels else "")
    return (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{{{- {_jinja_string(t.system_prefix + t.system_message + t.separator)} -}}}}"
        "{%- endif -%}"
        f"{{%- set headers = {json.dumps(t.headers, ensure_ascii=False)} -%}}"
        "{%- for message in messages -%}"
        "{{- headers[message['role']] -}}"
        f"{{%- if message['role'] == 'assistant' -%}}{{{{- {answer} -}}}}{{%- endif -%}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for item in message['content'] -%}"
        f"{{%- if item['type'] == 'image' -%}}{{{{- {_jinja_string('<IMG_CONTEXT>' + chr(10))} -}}}}"
        f"{{%- elif item['type'] == 'video' -%}}{{{{- {_jinja_string(VIDEO_TOKEN + chr(10))} -}}}}"
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        f"{{%- if message['role'] == 'assistant' and loop.last -%}}{{{{- {_jinja_string(t.end(last=True))} -}}}}"
        f"{{%- else -%}}{{{{- {_jinja_string(t.separator)} -}}}}{{%- endif -%}}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {_jinja_string(t.assistant_prefix)} -}}}}{{%- endif -%}}"
    )


def template_of(tokenizer: PreTrainedTokenizerBase) -> ChatTemplate:
    """The fine-tuning template a tokenizer's model uses, told from its vocabulary: GPT-OSS's
    harmony tokens, or else InternVL's ``internvl2_5`` (``data.template.TEMPLATES``)."""
    vocabulary = tokenizer.get_vocab()
    harmony = all(token in vocabulary for token in INTERNVL3_5_GPT_OSS.control_tokens)
    return INTERNVL3_5_GPT_OSS if harmony else INTERNVL2_5


def missing_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """InternVL's special tokens that the tokenizer's vocabulary lacks."""
    vocabulary = tokenizer.get_vocab()
    return [token for token in INTERNVL_TOKENS if token not in vocabulary]


def named_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """The named tokens for ``tokenizer``: ``NAMED_TOKENS``, and ``video_token`` when its vocabulary
    holds ``<video>`` (naming it otherwise would add it the next time the tokenizer is loaded)."""
    if VIDEO_TOKEN in tokenizer.get_vocab():
        return {**NAMED_TOKENS, "video_token": VIDEO_TOKEN}
    return dict(NAMED_TOKENS)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Give a tokenizer InternVL's special tokens (added when missing), the named ones the processor
    reads, and the chat template. Returns the tokens added: the model's embeddings must then grow
    (``load.fit_embeddings``). Released checkpoints have them all, so usually nothing is added."""
    added = missing_tokens(tokenizer)
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
        log.info("added %d special tokens to the tokenizer: %s", len(added), ", ".join(added))
    missing_names = {
        name: token for name, token in named_tokens(tokenizer).items() if getattr(tokenizer, name, None) != token
    }
    if missing_names:
        # The public route is the ``extra_special_tokens`` argument of the constructor; a loaded
        # tokenizer gets the same registration through the method the constructor calls.
        tokenizer._set_model_specific_special_tokens(missing_names)
    tokenizer.chat_template = chat_template(template_of(tokenizer))
    return added


def load_tokenizer(folder: str | Path, *, original_layout: bool | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder, prepared with ``prepare_tokenizer``, its vocabulary as saved.
    The folder's own code is never run nor asked about. In the original layout (told from
    config.json when ``original_layout`` is None), config.json (``internvl_chat``, unknown to
    transformers) is not read."""
    folder = Path(folder)
    if original_layout is None:
        original_layout = _describes_original_layout(folder)
    config = PreTrainedConfig() if original_layout else None
    code_only = _code_only_tokenizer_class(folder)
    if code_only is None:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), config=config, trust_remote_code=False)
    elif (folder / "tokenizer.json").is_file():
        tokenizer = TokenizersBackend.from_pretrained(str(folder))
    else:
        raise ValueError(
            f"{folder}: tokenizer_config.json names {code_only}, which exists only as the folder's own code"
            " and is never run; without it the tokenizer is read from tokenizer.json, which the folder lacks"
        )
    prepare_tokenizer(tokenizer)
    return tokenizer


def _describes_original_layout(folder: Path) -> bool:
    from internvl_trainer.model.original_config import is_original

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_original(config)


def _code_only_tokenizer_class(folder: Path) -> str | None:
    """The tokenizer class a folder's tokenizer_config.json names when transformers lacks it and
    only the folder's code (``auto_map``) has it, as InternLM2's ``InternLM2Tokenizer``."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not (isinstance(auto_map, (list, tuple)) or (isinstance(auto_map, dict) and "AutoTokenizer" in auto_map)):
        return None
    name = str(config.get("tokenizer_class") or "")
    if name and any(tokenizer_class_from_name(n) is not None for n in (name, name.removesuffix("Fast"))):
        return None
    return name or "a tokenizer class in auto_map"


def has_tokenizer(folder: str | Path) -> bool:
    folder = Path(folder)
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


class InternVLCpuProcessor(InternVLProcessor):
    """InternVLProcessor without the video-processor slot, whose classes all need torchvision.

    Its attributes are the image processor and the tokenizer (transformers reads them from this
    signature), so ``save_pretrained`` and ``from_pretrained`` round-trip without torchvision. A
    tokenizer that does not name a ``video_token`` (its vocabulary lacks ``<video>``) gets
    ``<video>`` as a plain attribute, which is never saved nor added to the vocabulary: the parent
    class reads the placeholder's text from the tokenizer."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        if tokenizer is not None and getattr(tokenizer, "video_token", None) is None:
            tokenizer.video_token = VIDEO_TOKEN
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            image_seq_length=image_seq_length,
            chat_template=chat_template,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> InternVLCpuProcessor:
        """transformers' loading, with the folder's own code never run nor asked about (an
        original-layout folder names InternVL's classes in config.json's ``auto_map``)."""
        kwargs["trust_remote_code"] = False
        return super().from_pretrained(*args, **kwargs)


def image_processor(
    image_size: int = 448, min_tiles: int = 1, max_tiles: int = DEFAULT_MAX_TILES
) -> GotOcr2ImageProcessorPil:
    """InternVL's dynamic-resolution preprocessing: tiles of ``image_size``, a thumbnail when an
    image gives more than one tile (always, as InternVL's ``use_thumbnail``), ImageNet mean and std."""
    return GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=min_tiles,
        max_patches=max_tiles,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def build_processor(
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_size: int = 448,
    image_seq_length: int = 256,
    min_tiles: int = 1,
    max_tiles: int = DEFAULT_MAX_TILES,
) -> InternVLCpuProcessor:
    """A processor for ``tokenizer`` (prepared here) with InternVL's tiling and chat template."""
    prepare_tokenizer(tokenizer)
    return InternVLCpuProcessor(
        image_processor=image_processor(image_size, min_tiles, max_tiles),
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=tokenizer.chat_template,
    )


def load_processor(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_size: int,
    image_seq_length: int,
    min_tiles: int = 1,
    max_tiles: int = DEFAULT_MAX_TILES,
) -> InternVLCpuProcessor:
    """The processor of a model folder: its saved image-processor settings when it has them
    (``processor_config.json`` or ``preprocessor_config.json``), otherwise InternVL's defaults with
    the given sizes. The tokenizer, the sequence length and the chat template are always the given
    ones, so a folder's own (for instance a template without the system message) is replaced."""
    folder = Path(folder)
    prepare_tokenizer(tokenizer)
    images = None
    if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
        try:
            images = GotOcr2ImageProcessorPil.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError, TypeError) as error:
            log.warning(
                "%s: its image processor settings cannot be read (%s); using InternVL's defaults", folder, error
            )
    if images is None:
        images = image_processor(image_size, min_tiles, max_tiles)
    return InternVLCpuProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=tokenizer.chat_template,
    )


class TileLimits(NamedTuple):
    """Fewest and most tiles per image (InternVL's ``min_dynamic_patch`` and ``max_dynamic_patch``)."""

    min_tiles: int
    max_tiles: int


def with_tile_limits(processor: InternVLCpuProcessor, limits: TileLimits) -> InternVLCpuProcessor:
    """A copy of ``processor`` that tiles within ``limits``: a fine-tuned model's processor must
    tile as its run did (``data.minTiles``, ``data.maxTiles``), whatever its base folder said."""
    images = copy.deepcopy(processor.image_processor)
    images.min_patches, images.max_patches = limits
    return InternVLCpuProcessor(
        image_processor=images,
        tokenizer=processor.tokenizer,
        image_seq_length=processor.image_seq_length,
        chat_template=processor.chat_template,
    )


def retile_saved(folder: str | Path, limits: TileLimits) -> None:
    """Give the processor saved in ``folder``, when it holds one, the tile ``limits`` (the folder's
    other files stay as they are)."""
    if (Path(folder) / "processor_config.json").is_file():
        with_tile_limits(InternVLCpuProcessor.from_pretrained(str(folder)), limits).save_pretrained(str(folder))
