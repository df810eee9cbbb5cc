"""The ``internvl2_5`` chat template: prompt text, token ids, image tokens and loss labels.

Every catalog model (InternVL 2.5 and 3, 1B to 78B) is fine-tuned with InternVL's ``internvl2_5``
template (reference: internvl-recipe.md §4), a ChatML dialect::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n ...

The system message is InternVL's default (Chinese) unless the sample starts with its own
``system`` turn. Each ``<image>`` of a user turn, left to right, becomes ``<img>`` +
``<IMG_CONTEXT>`` × (tokens per tile × the image's tiles) + ``</img>``; tokens per tile follow
from the tile size, the vision patch size and the pixel-shuffle ratio (448, 14, 0.5 → 256).

Tokenization follows ``preprocess_internvl2_5``: each turn's text (header, content and separator
together) is tokenized on its own without special tokens, and the pieces are concatenated, so no
token spans two turns. Models whose LLM tokenizer starts sequences with a BOS token (InternLM2,
InternLM2.5, InternLM3: ``<s>``) get one BOS at the very start; Qwen2.5-based ones get none.

Labels are -100 everywhere except the content of assistant turns and the ``<|im_end|>`` that ends
each of them: the BOS, the system and user turns, the ``<|im_start|>assistant\\n`` header and the
newline after ``<|im_end|>`` are masked. InternVL masks as many leading tokens of an assistant
turn as its header alone tokenizes to; if the answer's first characters merge with the header's
newline (an answer starting with blank lines, for some tokenizers), this module tokenizes the
header and the rest separately so that no answer token is masked. The attention mask covers the
sequence's true length; it is never derived from token ids (InternVL's ``input_ids != 0``
hides every real token with id 0, "!" in Qwen's vocabulary).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from internvl_trainer.config import MODEL_NAMES
from internvl_trainer.data.errors import ConversationError, PlaceholderError

IGNORE_INDEX = -100
"""Label of tokens that carry no loss."""

IMAGE_PLACEHOLDER = "<image>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMAGE_TOKENS = (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)
"""Tokens that only the image expansion may produce; sample text holding them is refused."""

DEFAULT_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
"""InternVL's default system message of the internvl2_5 template."""


def tokens_per_tile(image_size: int = 448, patch_size: int = 14, downsample_ratio: float = 0.5) -> int:
    """LLM tokens one tile becomes: (image_size / patch_size)² patches, pixel-shuffled by the ratio."""
    return int((image_size // patch_size) ** 2 * downsample_ratio**2)


# ---------------------------------------------------------------------------------------------
# template and models


@dataclass(frozen=True)
class ChatTemplate:
    """A ChatML-style conversation template (InternVL's MPT separator style)."""

    name: str
    system_message: str
    system_prefix: str = "<|im_start|>system\n"
    user_prefix: str = "<|im_start|>user\n"
    assistant_prefix: str = "<|im_start|>assistant\n"
    separator: str = "<|im_end|>\n"
    control_tokens: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")
    """Tokens that structure the conversation; sample text holding them is refused."""

    def segment(self, role: Role, text: str) -> str:
        """One turn as text: header, content, separator."""
        prefix = {"system": self.system_prefix, "user": self.user_prefix, "assistant": self.assistant_prefix}[role]
        return prefix + text + self.separator

    def prompt(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> str:
        """The whole conversation as text, the default system message first unless the turns have
        their own; with ``add_generation_prompt``, ending in the assistant header."""
        turns = with_system(turns, self.system_message)
        text = "".join(self.segment(role, content) for role, content in turns)
        return text + self.assistant_prefix if add_generation_prompt else text


INTERNVL2_5 = ChatTemplate(name="internvl2_5", system_message=DEFAULT_SYSTEM_MESSAGE)

LlmFamily = Literal["qwen2", "internlm2", "internlm3"]

LLM_FAMILIES: dict[str, LlmFamily] = {
    "InternVL2_5-1B": "qwen2",  # Qwen2.5-0.5B-Instruct
    "InternVL2_5-2B": "internlm2",  # internlm2_5-1_8b-chat
    "InternVL2_5-4B": "qwen2",  # Qwen2.5-3B-Instruct
    "InternVL2_5-8B": "internlm2",  # internlm2_5-7b-chat
    "InternVL2_5-26B": "internlm2",  # internlm2_5-20b-chat
    "InternVL2_5-38B": "qwen2",  # Qwen2.5-32B-Instruct
    "InternVL2_5-78B": "qwen2",  # Qwen2.5-72B-Instruct
    "InternVL3-1B": "qwen2",  # Qwen2.5-0.5B
    "InternVL3-2B": "qwen2",  # Qwen2.5-1.5B
    "InternVL3-8B": "qwen2",  # Qwen2.5-7B
    "InternVL3-9B": "internlm3",  # internlm3-8b-instruct
    "InternVL3-14B": "qwen2",  # Qwen2.5-14B
    "InternVL3-38B": "qwen2",  # Qwen2.5-32B
    "InternVL3-78B": "qwen2",  # Qwen2.5-72B
}
"""The LLM family behind each catalog model."""

BOS_TOKENS: dict[LlmFamily, str | None] = {"qwen2": None, "internlm2": "<s>", "internlm3": "<s>"}
"""The token each family's tokenizer starts a sequence with (``add_bos_token``), if any."""

TEMPLATES: dict[str, ChatTemplate] = {name: INTERNVL2_5 for name in MODEL_NAMES}
"""The fine-tuning template of each catalog model: internvl2_5 for all of them."""


def llm_family(model_name: str) -> LlmFamily:
    """The LLM family of a catalog model."""
    try:
        return LLM_FAMILIES[model_name]
    except KeyError:
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(MODEL_NAMES)}") from None


def bos_token(model_name: str) -> str | None:
    """The BOS token a catalog model's sequences start with, or None."""
    return BOS_TOKENS[llm_family(model_name)]


def template_for(model_name: str) -> ChatTemplate:
    """The chat template a catalog model is fine-tuned with."""
    llm_family(model_name)
    return TEMPLATES[model_name]


# ---------------------------------------------------------------------------------------------
# conversations

Role = Literal["system", "user", "assistant"]
Turn = tuple[Role, str]

ROLE_NAMES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
"""Role names of InternVL's data (human, gpt) and of the chat format (user, assistant)."""


def conversation_turns(conversations: Sequence[Mapping[str, Any]]) -> list[Turn]:
    """(role, text) turns of InternVL's ``conversations`` list (``from``/``value`` keys, or
    ``role``/``content``). A system turn may only come first. Raises ConversationError."""
    turns: list[Turn] = []
    for index, message in enumerate(conversations):
        name = message.get("from", message.get("role"))
        text = message.get("value", message.get("content"))
        role = ROLE_NAMES.get(name) if isinstance(name, str) else None
        if role is None:
            raise ConversationError(
                f"turn {index}: unknown role {name!r} (expected human, gpt, user, assistant, system)"
            )
        if not isinstance(text, str):
            raise ConversationError(f"turn {index}: the text must be a string, not {type(text).__name__}")
        if role == "system" and index != 0:
            raise ConversationError(f"turn {index}: a system turn may only come first")
        turns.append((role, text))
    return turns


def with_system(turns: Sequence[Turn], default: str) -> list[Turn]:
    """``turns`` starting with a system turn: the sample's own, or ``default``."""
    if turns and turns[0][0] == "system":
        return list(turns)
    return [("system", default), *turns]


def count_placeholders(turns: Sequence[Turn], placeholder: str = IMAGE_PLACEHOLDER) -> int:
    """How often ``placeholder`` occurs in the user turns (the only ones InternVL expands)."""
    return sum(text.count(placeholder) for role, text in turns if role == "user")


def insert_placeholder(turns: Sequence[Turn], placeholder: str) -> list[Turn]:
    """``turns`` with ``placeholder + "\\n"`` put before the first user turn's text, unless a user
    turn already holds it (InternVL's rule for single-image and video samples)."""
    turns = list(turns)
    if count_placeholders(turns, placeholder):
        return turns
    for index, (role, text) in enumerate(turns):
        if role == "user":
            turns[index] = (role, f"{placeholder}\n{text}")
            return turns
    raise ConversationError("the conversation has no user turn to hold the media")


# ---------------------------------------------------------------------------------------------
# token ids and labels


@dataclass
class Encoded:
    """One sample as the model sees it."""

    input_ids: torch.Tensor
    """(length,) int64 token ids."""
    labels: torch.Tensor
    """(length,) int64: the token id where the loss applies, IGNORE_INDEX elsewhere."""
    attention_mask: torch.Tensor
    """(length,) int64 ones: the sample's true length (padding is the collator's business)."""
    image_tokens: list[int] = field(default_factory=list)
    """<IMG_CONTEXT> tokens of each image, in order."""
    media_end: int = 0
    """Position just after the last ``</img>`` (0 without images): truncation never cuts before it."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def supervised_tokens(self) -> int:
        """Tokens that carry loss."""
        return int((self.labels != IGNORE_INDEX).sum())

    def truncated(self, max_length: int) -> Encoded | None:
        """The first ``max_length`` tokens, or None when that would cut into an image block or
        leave no token to learn from."""
        if len(self) <= max_length:
            return self
        if self.media_end > max_length:
            return None
        cut = Encoded(
            self.input_ids[:max_length].clone(),
            self.labels[:max_length].clone(),
            self.attention_mask[:max_length].clone(),
            list(self.image_tokens),
            self.media_end,
        )
        return cut if cut.supervised_tokens else None


@dataclass
class Tokenized:
    """A conversation tokenized with one ``<IMG_CONTEXT>`` per image, before the expansion that
    depends on tile counts: lengths under any tile budget are cheap to compute from it."""

    ids: list[int]
    labels: list[int]
    slots: list[int]
    """Positions of each image's single context token in ``ids``."""
    context_id: int

    def length(self, image_tokens: Sequence[int]) -> int:
        """The sequence length once image i has ``image_tokens[i]`` context tokens."""
        self._check(image_tokens)
        return len(self.ids) + sum(image_tokens) - len(image_tokens)

    def expand(self, image_tokens: Sequence[int]) -> Encoded:
        """The sample with image i's context token repeated ``image_tokens[i]`` times."""
        self._check(image_tokens)
        ids: list[int] = []
        labels: list[int] = []
        start = 0
        for slot, count in zip(self.slots, image_tokens, strict=True):
            ids += self.ids[start:slot]
            labels += self.labels[start:slot]
            ids += [self.context_id] * count
            labels += [IGNORE_INDEX] * count
            start = slot + 1
        media_end = len(ids) + 1 if self.slots else 0  # the </img> right after the last slot
        ids += self.ids[start:]
        labels += self.labels[start:]
        length = len(ids)
        return Encoded(
            input_ids=torch.tensor(ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            attention_mask=torch.ones(length, dtype=torch.long),
            image_tokens=list(image_tokens),
            media_end=media_end,
        )

    def _check(self, image_tokens: Sequence[int]) -> None:
        if len(image_tokens) != len(self.slots):
            raise PlaceholderError(f"{len(self.slots)} <image> placeholders but {len(image_tokens)} images")


class ConversationEncoder:
    """Turns conversations into token ids and labels with a chat template and a tokenizer.

    ``tokenizer`` is a transformers tokenizer (callable on a string or a list of strings, with
    ``get_vocab``) that knows the template's control tokens and InternVL's image tokens as added
    tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        template: ChatTemplate = INTERNVL2_5,
        bos_token: str | None = None,
        tokens_per_tile: int = 256,
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.tokens_per_tile = tokens_per_tile
        vocab = tokenizer.get_vocab()
        needed = [*IMAGE_TOKENS, *template.control_tokens] + ([bos_token] if bos_token else [])
        missing = [token for token in needed if token not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the tokens {', '.join(missing)}")
        self.img_start_id, self.img_end_id, self.context_id = (vocab[token] for token in IMAGE_TOKENS)
        self.bos_id = vocab[bos_token] if bos_token else None
        block = self._ids(IMG_START_TOKEN + IMG_CONTEXT_TOKEN + IMG_END_TOKEN)
        if block != [self.img_start_id, self.context_id, self.img_end_id]:
            raise ValueError(f"the tokenizer splits the image tokens: {block}")
        self._assistant_prefix = self._ids(template.assistant_prefix)
        # Tokens after the end-of-turn token: the separator's newline, masked like the header.
        self._separator_tail = len(self._ids(template.separator)) - 1
        self._reserved = (*IMAGE_TOKENS, *template.control_tokens)

    @classmethod
    def for_model(cls, tokenizer: Any, model_name: str, tokens_per_tile: int = 256) -> ConversationEncoder:
        """The encoder of a catalog model: its template and its LLM family's BOS handling."""
        return cls(
            tokenizer,
            template=template_for(model_name),
            bos_token=bos_token(model_name),
            tokens_per_tile=tokens_per_tile,
        )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _batch_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def tokenize(self, turns: Sequence[Turn], images: int) -> Tokenized:
        """``turns`` tokenized with one context token per image. Raises PlaceholderError when the
        user turns do not hold exactly ``images`` placeholders or any text holds a reserved token,
        and ConversationError when no assistant turn gives something to learn."""
        turns = with_system(turns, self.template.system_message)
        for role, text in turns:
            for token in self._reserved:
                if token in text:
                    raise PlaceholderError(f"a {role} turn holds the reserved token {token}")
        found = count_placeholders(turns)
        if found != images:
            raise PlaceholderError(f"{found} {IMAGE_PLACEHOLDER} placeholders in the user turns but {images} images")
        if not any(role == "assistant" for role, _ in turns):
            raise ConversationError("the conversation has no assistant turn to learn from")
        block = IMG_START_TOKEN + IMG_CONTEXT_TOKEN + IMG_END_TOKEN
        segments = [
            self.template.segment(role, text.replace(IMAGE_PLACEHOLDER, block) if role == "user" else text)
            for role, text in turns
        ]
        pieces = self._batch_ids(segments)
        ids: list[int] = [] if self.bos_id is None else [self.bos_id]
        labels: list[int] = [] if self.bos_id is None else [IGNORE_INDEX]
        for (role, text), piece in zip(turns, pieces, strict=True):
            if role == "assistant":
                piece, piece_labels = self._assistant(text, piece)
            else:
                piece_labels = [IGNORE_INDEX] * len(piece)
            ids += piece
            labels += piece_labels
        slots = [position for position, token in enumerate(ids) if token == self.context_id]
        return Tokenized(ids=ids, labels=labels, slots=slots, context_id=self.context_id)

    def _assistant(self, text: str, piece: list[int]) -> tuple[list[int], list[int]]:
        prefix = self._assistant_prefix
        if piece[: len(prefix)] != prefix:
            # The answer's first characters merged with the header's newline: keep them apart.
            piece = prefix + self._ids(text + self.template.separator)
        labels = list(piece)
        labels[: len(prefix)] = [IGNORE_INDEX] * len(prefix)
        if self._separator_tail:
            labels[-self._separator_tail :] = [IGNORE_INDEX] * self._separator_tail
        return piece, labels

    def encode(self, turns: Sequence[Turn], tiles_per_image: Sequence[int] = ()) -> Encoded:
        """Token ids, labels and attention mask of ``turns`` whose images have these tile counts."""
        tokenized = self.tokenize(turns, len(tiles_per_image))
        return tokenized.expand([tiles * self.tokens_per_tile for tiles in tiles_per_image])
