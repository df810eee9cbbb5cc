"""The chat templates of InternVL's fine-tuning code: prompt text, token ids, image tokens and loss
labels.

InternVL 2.5, 3 and the Qwen3-based InternVL3.5 (1B to 241B-A28B) are fine-tuned with InternVL's
``internvl2_5`` template (reference: internvl-recipe.md §4; InternVL3.5's scripts pass
``--conv_style internvl2_5``), a ChatML dialect::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n ...

InternVL3.5-GPT-OSS is fine-tuned with ``internvl3_5_gpt_oss``, GPT-OSS's harmony format
(InternVL's ``internvl_chat_gpt_oss/internvl/train/dataset.py``)::

    <|start|>system<|message|>{system}<|end|><|start|>user<|message|>{question}<|end|>
    <|start|>assistant<|channel|>final<|message|>{answer}<|return|>

where an assistant turn before the last ends with ``<|end|>`` instead of ``<|return|>``: the rule
that InternVL's ``preprocess_internvl3_5_gpt_oss`` states in its comment and its conversation
template's ``MPT_TWO`` style applies. (Its code tests a loop variable left over from the image
expansion instead of the turn's index, and fails on text-only samples; its ``_with_think`` variant
ends every assistant turn with ``<|return|>``. A single-turn answer ends with ``<|return|>`` in
both this module and ``_with_think``.)

The system message is the template's default (InternVL's Chinese one for ``internvl2_5``, the
harmony header with ``Reasoning: low`` and the ``final`` channel only for ``internvl3_5_gpt_oss``)
unless the sample starts with its own ``system`` turn. Each ``<image>`` of a user turn, left to
right, becomes ``<img>`` + ``<IMG_CONTEXT>`` × (tokens per tile × the image's tiles) + ``</img>``;
tokens per tile follow from the tile size, the vision patch size and the pixel-shuffle ratio (448,
14, 0.5 → 256).

Thinking samples are written as InternVL3.5's data writes them: the assistant turn's text is
``<think>{reasoning}</think>{answer}`` (nothing but blanks before ``<think>``, one think block, an
answer after it), usually with the model card's thinking system prompt as the sample's system
turn. ``internvl2_5`` trains the text as it is; ``internvl3_5_gpt_oss`` writes the reasoning to
harmony's ``analysis`` channel and the answer to ``final``, both stripped, as InternVL's
``preprocess_internvl3_5_gpt_oss_with_think`` does (InternVL's finetune script selects the variant
without thinking, which would leave the tags as text in the ``final`` channel)::

    <|start|>assistant<|channel|>analysis<|message|>{reasoning}<|end|>
    <|start|>assistant<|channel|>final<|message|>{answer}<|return|>

A malformed thinking answer (an unclosed block, two blocks, text before ``<think>``, no answer
after ``</think>``) is a bad sample (``ConversationError``).

Tokenization follows InternVL's preprocess functions: each turn's text (header, content and end
together) is tokenized on its own without special tokens, and the pieces are concatenated, so no
token spans two turns. Models whose LLM tokenizer starts sequences with a BOS token (InternLM2,
InternLM2.5, InternLM3: ``<s>``) get one BOS at the very start; Qwen2.5-, Qwen3- and GPT-OSS-based
ones get none.

Labels are -100 everywhere except in assistant turns, where InternVL masks the header
(``<|im_start|>assistant\\n``; harmony's ``<|start|>assistant``, so that the channel tokens,
the analysis turn's end and the final turn's header are learned) and whatever follows the
turn's end token (``internvl2_5``'s newline after ``<|im_end|>``; nothing in harmony). InternVL
masks as many leading tokens of an assistant turn as its header alone tokenizes to; if the
answer's first characters merge with the header's newline (an answer starting with blank lines,
for some tokenizers), this module tokenizes the header and the rest separately so that no answer
token is masked. The attention mask covers the sequence's true length; it is never derived from
token ids (InternVL's ``input_ids != 0`` hides every real token with id 0, "!" in Qwen's
vocabulary).
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

HARMONY_SYSTEM_MESSAGE = (
    "You are InternVL, a large language model trained by Shanghai AI Laboratory.\n"
    "Knowledge cutoff: 2024-06\n"
    "Current date: 2025-08-06\n\n"
    "Reasoning: low\n\n"
    "# Valid channels: final. Channel must be included for every message."
)
"""InternVL's default system message of the internvl3_5_gpt_oss template (its conversation.py)."""

THINK_START = "<think>"
THINK_END = "</think>"
FINAL_CHANNEL = "<|channel|>final<|message|>"
"""What opens a harmony answer's ``final`` channel."""


def tokens_per_tile(image_size: int = 448, patch_size: int = 14, downsample_ratio: float = 0.5) -> int:
    """LLM tokens one tile becomes: (image_size / patch_size)² patches, pixel-shuffled by the ratio."""
    return int((image_size // patch_size) ** 2 * downsample_ratio**2)


def split_thinking(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) of a thinking answer ``<think>{reasoning}</think>{answer}``, None for an
    answer without thinking. Raises ConversationError when the think block is malformed."""
    starts, ends = text.count(THINK_START), text.count(THINK_END)
    if not starts and not ends:
        return None
    if starts != 1 or ends != 1:
        raise ConversationError(
            f"a thinking answer holds one {THINK_START}…{THINK_END} block, "
            f"not {starts} {THINK_START} and {ends} {THINK_END}"
        )
    before, rest = text.split(THINK_START)
    if before.strip():
        raise ConversationError(f"a thinking answer starts with {THINK_START}, not with {before.strip()[:40]!r}")
    reasoning, answer = rest.split(THINK_END)
    if not answer.strip():
        raise ConversationError(f"a thinking answer needs an answer after {THINK_END}")
    return reasoning, answer


# ---------------------------------------------------------------------------------------------
# templates and models


@dataclass(frozen=True)
class ChatTemplate:
    """A conversation template: each turn a header, its content and an end (InternVL's MPT and
    MPT_TWO separator styles)."""

    name: str
    system_message: str
    system_prefix: str = "<|im_start|>system\n"
    user_prefix: str = "<|im_start|>user\n"
    assistant_prefix: str = "<|im_start|>assistant\n"
    """The assistant header: the part of an assistant turn InternVL masks."""
    separator: str = "<|im_end|>\n"
    last_separator: str | None = None
    """What ends the conversation's last assistant turn, when not ``separator``."""
    channels: bool = False
    """Harmony channels: an answer goes to the ``final`` channel, a thinking answer's reasoning to
    the ``analysis`` channel before it."""
    control_tokens: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")
    """Tokens that structure the conversation; sample text holding them is refused."""

    def answer(self, text: str) -> str:
        """An assistant turn's content as the template writes it. Raises ConversationError for a
        malformed thinking answer."""
        thinking = split_thinking(text)
        if not self.channels:
            return text
        if thinking is None:
            return FINAL_CHANNEL + text
        reasoning, answer = thinking
        analysis = f"<|channel|>analysis<|message|>{reasoning.strip()}{self.separator}"
        return f"{analysis}{self.assistant_prefix}{FINAL_CHANNEL}{answer.strip()}"

    @property
    def headers(self) -> dict[Role, str]:
        """Each role's turn header."""
        return {"system": self.system_prefix, "user": self.user_prefix, "assistant": self.assistant_prefix}

    def end(self, last: bool) -> str:
        """What ends an assistant turn: the last one's end, or the separator."""
        return self.last_separator if last and self.last_separator is not None else self.separator

    def segments(self, turns: Sequence[Turn]) -> list[str]:
        """Each turn as text: header, content, end."""
        assistants = [index for index, (role, _) in enumerate(turns) if role == "assistant"]
        last = assistants[-1] if assistants else -1
        headers = self.headers
        return [
            headers[role] + self.answer(text) + self.end(index == last)
            if role == "assistant"
            else headers[role] + text + self.separator
            for index, (role, text) in enumerate(turns)
        ]

    def prompt(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> str:
        """The whole conversation as text, the default system message first unless the turns have
        their own; with ``add_generation_prompt``, ending in the assistant header."""
        text = "".join(self.segments(with_system(turns, self.system_message)))
        return text + self.assistant_prefix if add_generation_prompt else text


INTERNVL2_5 = ChatTemplate(name="internvl2_5", system_message=DEFAULT_SYSTEM_MESSAGE)

INTERNVL3_5_GPT_OSS = ChatTemplate(
    name="internvl3_5_gpt_oss",
    system_message=HARMONY_SYSTEM_MESSAGE,
    system_prefix="<|start|>system<|message|>",
    user_prefix="<|start|>user<|message|>",
    assistant_prefix="<|start|>assistant",
    separator="<|end|>",
    last_separator="<|return|>",
    channels=True,
    control_tokens=("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>"),
)

LlmFamily = Literal["qwen2", "qwen3", "internlm2", "internlm3", "gpt_oss"]

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
    "InternVL3_5-1B": "qwen3",  # Qwen3-0.6B
    "InternVL3_5-2B": "qwen3",  # Qwen3-1.7B
    "InternVL3_5-4B": "qwen3",  # Qwen3-4B
    "InternVL3_5-8B": "qwen3",  # Qwen3-8B
    "InternVL3_5-14B": "qwen3",  # Qwen3-14B
    "InternVL3_5-38B": "qwen3",  # Qwen3-32B
    "InternVL3_5-30B-A3B": "qwen3",  # Qwen3-30B-A3B (MoE; Qwen3's tokenizer)
    "InternVL3_5-241B-A28B": "qwen3",  # Qwen3-235B-A22B (MoE; Qwen3's tokenizer)
    "InternVL3_5-GPT-OSS-20B-A4B-Preview": "gpt_oss",  # gpt-oss-20b
}
"""The LLM family (its tokenizer and chat format) behind each catalog model."""

BOS_TOKENS: dict[LlmFamily, str | None] = {
    "qwen2": None,
    "qwen3": None,
    "internlm2": "<s>",
    "internlm3": "<s>",
    "gpt_oss": None,
}
"""The token each family's tokenizer starts a sequence with (``add_bos_token``), if any."""

TEMPLATES: dict[LlmFamily, ChatTemplate] = {
    "qwen2": INTERNVL2_5,
    "qwen3": INTERNVL2_5,
    "internlm2": INTERNVL2_5,
    "internlm3": INTERNVL2_5,
    "gpt_oss": INTERNVL3_5_GPT_OSS,
}
"""The fine-tuning template of each family, as InternVL's scripts pass it (``--conv_style``)."""


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
    return TEMPLATES[llm_family(model_name)]


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


def check_thinking(turns: Sequence[Turn]) -> None:
    """Raise ConversationError naming the turn when an assistant turn is a malformed thinking answer."""
    for index, (role, text) in enumerate(turns):
        if role == "assistant":
            try:
                split_thinking(text)
            except ConversationError as error:
                raise ConversationError(f"turn {index}: {error}") from None


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
        # Tokens after the end-of-turn token (internvl2_5's newline), masked like the header.
        self._tail = {last: len(self._ids(template.end(last))) - 1 for last in (False, True)}
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
        and ConversationError when no assistant turn gives something to learn or a thinking answer
        is malformed (naming the turn as the sample numbers it)."""
        check_thinking(turns)
        turns = with_system(turns, self.template.system_message)
        for role, text in turns:
            for token in self._reserved:
                if token in text:
                    raise PlaceholderError(f"a {role} turn holds the reserved token {token}")
        found = count_placeholders(turns)
        if found != images:
            raise PlaceholderError(f"{found} {IMAGE_PLACEHOLDER} placeholders in the user turns but {images} images")
        assistants = [index for index, (role, _) in enumerate(turns) if role == "assistant"]
        if not assistants:
            raise ConversationError("the conversation has no assistant turn to learn from")
        block = IMG_START_TOKEN + IMG_CONTEXT_TOKEN + IMG_END_TOKEN
        segments = self.template.segments(
            [(role, text.replace(IMAGE_PLACEHOLDER, block) if role == "user" else text) for role, text in turns]
        )
        pieces = self._batch_ids(segments)
        ids: list[int] = [] if self.bos_id is None else [self.bos_id]
        labels: list[int] = [] if self.bos_id is None else [IGNORE_INDEX]
        for index, ((role, _), segment, piece) in enumerate(zip(turns, segments, pieces, strict=True)):
            if role == "assistant":
                piece, piece_labels = self._assistant(segment, piece, last=index == assistants[-1])
            else:
                piece_labels = [IGNORE_INDEX] * len(piece)
            ids += piece
            labels += piece_labels
        slots = [position for position, token in enumerate(ids) if token == self.context_id]
        return Tokenized(ids=ids, labels=labels, slots=slots, context_id=self.context_id)

    def _assistant(self, segment: str, piece: list[int], last: bool) -> tuple[list[int], list[int]]:
        prefix = self._assistant_prefix
        if piece[: len(prefix)] != prefix:
            # The answer's first characters merged with the header's newline: keep them apart.
            piece = prefix + self._ids(segment[len(self.template.assistant_prefix) :])
        labels = list(piece)
        labels[: len(prefix)] = [IGNORE_INDEX] * len(prefix)
        tail = self._tail[last]
        if tail:
            labels[-tail:] = [IGNORE_INDEX] * tail
        return piece, labels

    def encode(self, turns: Sequence[Turn], tiles_per_image: Sequence[int] = ()) -> Encoded:
        """Token ids, labels and attention mask of ``turns`` whose images have these tile counts."""
        tokenized = self.tokenize(turns, len(tiles_per_image))
        return tokenized.expand([tiles * self.tokens_per_tile for tiles in tiles_per_image])
