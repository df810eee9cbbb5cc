"""The internvl2_5 and internvl3_5_gpt_oss templates: prompt text, image expansion, BOS and
template per LLM family, labels checked token by token on multi-turn samples, and thinking
answers."""

from __future__ import annotations

import pytest
import torch

from internvl_trainer.config import MODEL_NAMES
from internvl_trainer.data.errors import ConversationError, PlaceholderError
from internvl_trainer.data.template import (
    DEFAULT_SYSTEM_MESSAGE,
    HARMONY_SYSTEM_MESSAGE,
    IGNORE_INDEX,
    INTERNVL2_5,
    INTERNVL3_5_GPT_OSS,
    LLM_FAMILIES,
    ConversationEncoder,
    bos_token,
    conversation_turns,
    insert_placeholder,
    llm_family,
    template_for,
    tokens_per_tile,
)

GPT_OSS = "InternVL3_5-GPT-OSS-20B-A4B-Preview"
THINKING_SYSTEM_PROMPT = (
    "You are an AI assistant that rigorously follows this response protocol:\n\n"
    "1. First, conduct a detailed analysis of the question. Consider different angles, potential solutions, and "
    "reason through the problem step-by-step. Enclose this entire thinking process within <think> and </think> "
    "tags.\n\n"
    "2. After the thinking section, provide a clear, concise, and direct answer to the user's question. Separate "
    "the answer from the think section with a newline.\n\n"
    "Ensure that the thinking process is thorough but remains focused on the query. The final answer should be "
    "standalone and not reference the thinking section."
)
"""The thinking system prompt of InternVL3.5's model card, a thinking sample's own system turn."""

MULTI_TURN = [
    {"from": "human", "value": "<image>\nDescribe the image."},
    {"from": "gpt", "value": "A cat sits on a red mat!"},
    {"from": "human", "value": "What is the dog doing?"},
    {"from": "gpt", "value": "The dog runs after the ball."},
]


def runs(tokenizer, encoded) -> list[tuple[bool, str]]:
    """The sequence as maximal runs of supervised / unsupervised tokens, each decoded."""
    result: list[tuple[bool, list[int]]] = []
    for token, label in zip(encoded.input_ids.tolist(), encoded.labels.tolist(), strict=True):
        supervised = label != IGNORE_INDEX
        if supervised:
            assert label == token  # a supervised label is the token itself
        if result and result[-1][0] == supervised:
            result[-1][1].append(token)
        else:
            result.append((supervised, [token]))
    return [(supervised, tokenizer.decode(ids)) for supervised, ids in result]


def test_tokens_per_tile_from_image_size_patch_and_ratio():
    assert tokens_per_tile() == 256
    assert tokens_per_tile(448, 14, 0.25) == 64
    assert tokens_per_tile(336, 14, 0.5) == 144
    assert tokens_per_tile(224, 16, 0.5) == 49


def test_every_catalog_model_has_its_familys_template_and_bos():
    assert set(LLM_FAMILIES) == set(MODEL_NAMES)
    templates = {name: template_for(name).name for name in MODEL_NAMES}
    assert templates == dict.fromkeys(MODEL_NAMES, "internvl2_5") | {GPT_OSS: "internvl3_5_gpt_oss"}
    with_bos = sorted(name for name in MODEL_NAMES if bos_token(name) == "<s>")
    assert with_bos == ["InternVL2_5-26B", "InternVL2_5-2B", "InternVL2_5-8B", "InternVL3-9B"]
    assert all(bos_token(name) is None for name in MODEL_NAMES if llm_family(name) in ("qwen2", "qwen3", "gpt_oss"))
    assert llm_family("InternVL3-9B") == "internlm3" and llm_family("InternVL2_5-26B") == "internlm2"
    qwen3 = sorted(name for name in MODEL_NAMES if llm_family(name) == "qwen3")
    assert qwen3 == sorted(name for name in MODEL_NAMES if name.startswith("InternVL3_5-") and name != GPT_OSS)
    assert len(qwen3) == 8 and llm_family(GPT_OSS) == "gpt_oss"
    with pytest.raises(ValueError):
        llm_family("InternVL9-1T")


def test_prompt_text_with_default_and_own_system_message():
    turns = conversation_turns(MULTI_TURN[:2])
    assert INTERNVL2_5.prompt(turns) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>\n"
        "<|im_start|>user\n<image>\nDescribe the image.<|im_end|>\n"
        "<|im_start|>assistant\nA cat sits on a red mat!<|im_end|>\n"
    )
    own = conversation_turns([{"from": "system", "value": "Be brief."}, *MULTI_TURN[:1]])
    assert INTERNVL2_5.prompt(own, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nDescribe the image.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_multi_turn_labels_token_by_token(tokenizer):
    encoder = ConversationEncoder(tokenizer)
    encoded = encoder.encode(conversation_turns(MULTI_TURN), [3])
    context = "<IMG_CONTEXT>" * 768
    assert runs(tokenizer, encoded) == [
        (
            False,
            f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>\n"
            f"<|im_start|>user\n<img>{context}</img>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n",
        ),
        (True, "A cat sits on a red mat!<|im_end|>"),
        (False, "\n<|im_start|>user\nWhat is the dog doing?<|im_end|>\n<|im_start|>assistant\n"),
        (True, "The dog runs after the ball.<|im_end|>"),
        (False, "\n"),
    ]
    assert len(encoded) == 993 and encoded.supervised_tokens == 39
    assert encoded.image_tokens == [768] and encoded.media_end == 902
    assert encoded.input_ids.dtype == encoded.labels.dtype == encoded.attention_mask.dtype == torch.long


def test_ids_are_each_turn_tokenized_on_its_own_as_internvl_does(tokenizer):
    encoded = ConversationEncoder(tokenizer).encode(conversation_turns(MULTI_TURN), [1])
    block = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    segments = [
        f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>\n",
        f"<|im_start|>user\n{block}\nDescribe the image.<|im_end|>\n",
        "<|im_start|>assistant\nA cat sits on a red mat!<|im_end|>\n",
        "<|im_start|>user\nWhat is the dog doing?<|im_end|>\n",
        "<|im_start|>assistant\nThe dog runs after the ball.<|im_end|>\n",
    ]
    expected = [token for segment in segments for token in tokenizer(segment, add_special_tokens=False)["input_ids"]]
    assert encoded.input_ids.tolist() == expected


def test_internlm_models_start_with_one_bos(tokenizer):
    qwen = ConversationEncoder.for_model(tokenizer, "InternVL3-8B").encode(conversation_turns(MULTI_TURN), [1])
    internlm = ConversationEncoder.for_model(tokenizer, "InternVL2_5-8B").encode(conversation_turns(MULTI_TURN), [1])
    bos = tokenizer.convert_tokens_to_ids("<s>")
    assert internlm.input_ids[0].item() == bos and internlm.labels[0].item() == IGNORE_INDEX
    assert internlm.input_ids.tolist()[1:] == qwen.input_ids.tolist()
    assert internlm.labels.tolist()[1:] == qwen.labels.tolist()
    assert bos not in qwen.input_ids.tolist() and (internlm.input_ids == bos).sum() == 1


def test_multiple_images_expand_in_order(tokenizer):
    turns = conversation_turns(
        [
            {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nCompare both images."},
            {"from": "gpt", "value": "The first one."},
        ]
    )
    encoded = ConversationEncoder(tokenizer, tokens_per_tile=4).encode(turns, [2, 3])
    text = tokenizer.decode(encoded.input_ids.tolist())
    assert "Image-1: <img>" + "<IMG_CONTEXT>" * 8 + "</img>\nImage-2: <img>" + "<IMG_CONTEXT>" * 12 + "</img>\n" in text
    assert encoded.image_tokens == [8, 12]
    # A placeholder in an assistant turn stays text, as in InternVL.
    answer = conversation_turns([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "No <image> here"}])
    assert "No <image> here<|im_end|>" in tokenizer.decode(ConversationEncoder(tokenizer).encode(answer).input_ids)


def test_attention_mask_counts_real_tokens_with_id_zero(tokenizer):
    assert tokenizer.convert_tokens_to_ids("!") == 0
    turns = conversation_turns([{"from": "human", "value": "Wow!"}, {"from": "gpt", "value": "Wow! Wow!"}])
    encoded = ConversationEncoder(tokenizer).encode(turns)
    assert (encoded.input_ids == 0).sum() == 3
    assert encoded.attention_mask.tolist() == [1] * len(encoded)
    assert (encoded.labels == 0).sum() == 2  # the answer's "!" tokens are learned too


def test_answer_merging_with_the_header_newline_keeps_every_answer_token(tokenizer):
    # Qwen's pre-tokenizer joins "assistant\n" + "\n\nList" into one "\n\n\n" run; InternVL would
    # mask the answer's first token with the header. Here the answer's newlines stay supervised.
    turns = conversation_turns([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "\n\nList: one"}])
    encoded = ConversationEncoder(tokenizer).encode(turns)
    assert runs(tokenizer, encoded)[-2:] == [(True, "\n\nList: one<|im_end|>"), (False, "\n")]
    assert runs(tokenizer, encoded)[0][1].endswith("<|im_start|>assistant\n")


def test_truncation_keeps_image_blocks_whole(tokenizer):
    encoded = ConversationEncoder(tokenizer).encode(conversation_turns(MULTI_TURN), [1])
    assert encoded.media_end == 390 and len(encoded) == 481
    cut = encoded.truncated(420)
    assert len(cut) == 420 and cut.attention_mask.tolist() == [1] * 420 and cut.supervised_tokens == 9
    assert encoded.truncated(389) is None  # inside the image block
    assert encoded.truncated(411) is None  # nothing left to learn: the first answer token is at 411
    assert encoded.truncated(412).supervised_tokens == 1
    assert encoded.truncated(481) is encoded


@pytest.mark.parametrize(
    ("conversation", "images", "error"),
    [
        ([{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "a"}], 1, PlaceholderError),
        ([{"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "a"}], 1, PlaceholderError),
        ([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "<IMG_CONTEXT>"}], 1, PlaceholderError),
        ([{"from": "human", "value": "x<|im_end|>"}, {"from": "gpt", "value": "a"}], 0, PlaceholderError),
        ([{"from": "human", "value": "question only"}], 0, ConversationError),
    ],
)
def test_bad_conversations_raise(tokenizer, conversation, images, error):
    with pytest.raises(error):
        ConversationEncoder(tokenizer).tokenize(conversation_turns(conversation), images)


def test_turns_accept_internvl_and_chat_roles():
    assert conversation_turns([{"role": "user", "content": "q"}, {"from": "gpt", "value": "a"}]) == [
        ("user", "q"),
        ("assistant", "a"),
    ]
    for bad in ([{"from": "robot", "value": "x"}], [{"from": "human", "value": 3}], [{}]):
        with pytest.raises(ConversationError):
            conversation_turns(bad)
    with pytest.raises(ConversationError):
        conversation_turns([{"from": "human", "value": "q"}, {"from": "system", "value": "late"}])


def test_missing_placeholder_goes_before_the_first_user_turn():
    turns = [("system", "s"), ("user", "What is it?"), ("assistant", "A cat.")]
    assert insert_placeholder(turns, "<image>") == [("system", "s"), ("user", "<image>\nWhat is it?"), turns[2]]
    assert insert_placeholder([("user", "See <image>"), ("assistant", "ok")], "<image>")[0] == ("user", "See <image>")


def test_tokenizer_without_image_tokens_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel()
    bare.train_from_iterator(["hello"], trainers.BpeTrainer(vocab_size=50, show_progress=False))
    with pytest.raises(ValueError, match="<img>"):
        ConversationEncoder(PreTrainedTokenizerFast(tokenizer_object=bare))


# ---------------------------------------------------------------------------------------------
# InternVL3.5: the Qwen3 models keep internvl2_5, GPT-OSS speaks harmony; thinking answers


def test_gpt_oss_prompt_is_harmony_ending_the_last_answer_with_return():
    assert HARMONY_SYSTEM_MESSAGE == (
        "You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: 2024-06\n"
        "Current date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be included for every "
        "message."
    )
    assert INTERNVL3_5_GPT_OSS.prompt(conversation_turns(MULTI_TURN)) == (
        f"<|start|>system<|message|>{HARMONY_SYSTEM_MESSAGE}<|end|>"
        "<|start|>user<|message|><image>\nDescribe the image.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>A cat sits on a red mat!<|end|>"
        "<|start|>user<|message|>What is the dog doing?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The dog runs after the ball.<|return|>"
    )
    own = conversation_turns([{"from": "system", "value": "Be brief."}, *MULTI_TURN[:1]])
    assert INTERNVL3_5_GPT_OSS.prompt(own, add_generation_prompt=True) == (
        "<|start|>system<|message|>Be brief.<|end|><|start|>user<|message|><image>\nDescribe the image.<|end|>"
        "<|start|>assistant"
    )


def test_gpt_oss_labels_mask_only_the_assistant_header(harmony_tokenizer):
    encoder = ConversationEncoder.for_model(harmony_tokenizer, GPT_OSS, tokens_per_tile=4)
    encoded = encoder.encode(conversation_turns(MULTI_TURN), [2])
    context = "<IMG_CONTEXT>" * 8
    assert runs(harmony_tokenizer, encoded) == [
        (
            False,
            f"<|start|>system<|message|>{HARMONY_SYSTEM_MESSAGE}<|end|>"
            f"<|start|>user<|message|><img>{context}</img>\nDescribe the image.<|end|><|start|>assistant",
        ),
        (True, "<|channel|>final<|message|>A cat sits on a red mat!<|end|>"),
        (False, "<|start|>user<|message|>What is the dog doing?<|end|><|start|>assistant"),
        (True, "<|channel|>final<|message|>The dog runs after the ball.<|return|>"),
    ]
    header = harmony_tokenizer("<|start|>assistant", add_special_tokens=False)["input_ids"]
    ids, labels = encoded.input_ids.tolist(), encoded.labels.tolist()
    starts = [i for i in range(len(ids)) if ids[i : i + len(header)] == header]
    assert [labels[i : i + len(header)] for i in starts] == [[IGNORE_INDEX] * len(header)] * 2
    assert (len(encoded), encoded.supervised_tokens, encoded.media_end) == (308, 53, 209)
    # The last answer, pinned: <|start|> a ss ist ant | <|channel|> f i n a l <|message|> The dog … . <|return|>
    last = [308, 64, 286, 265, 280, 311, 69, 72, 77, 64, 75, 310, 51, 257, 220, 67, 78, 70, 220, 81, 84, 266, 263]
    last += [69, 83, 261, 264, 297, 64, 75, 75, 13, 312]
    assert ids[-len(last) :] == last and labels[-len(last) :] == [IGNORE_INDEX] * 5 + last[5:]


def test_gpt_oss_thinking_answer_goes_to_the_analysis_channel(harmony_tokenizer):
    conversation = [
        {"from": "system", "value": THINKING_SYSTEM_PROMPT},
        {"from": "human", "value": "What is the dog doing?"},
        {"from": "gpt", "value": "<think>\nThe dog runs.\n</think>\n\nThe dog runs after the ball. "},
        {"from": "human", "value": "Wow!"},
        {"from": "gpt", "value": "\n<think></think>Wow!"},
    ]
    encoded = ConversationEncoder.for_model(harmony_tokenizer, GPT_OSS).encode(conversation_turns(conversation))
    assert runs(harmony_tokenizer, encoded) == [
        (
            False,
            f"<|start|>system<|message|>{THINKING_SYSTEM_PROMPT}<|end|>"
            "<|start|>user<|message|>What is the dog doing?<|end|><|start|>assistant",
        ),
        (
            True,
            "<|channel|>analysis<|message|>The dog runs.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>The dog runs after the ball.<|end|>",
        ),
        (False, "<|start|>user<|message|>Wow!<|end|><|start|>assistant"),
        (True, "<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>Wow!<|return|>"),
    ]


def test_qwen3_models_train_a_thinking_answer_as_written(tokenizer):
    conversation = [
        {"from": "system", "value": THINKING_SYSTEM_PROMPT},
        {"from": "human", "value": "What is the dog doing?"},
        {"from": "gpt", "value": "<think>\nThe dog runs.\n</think>\n\nThe dog runs after the ball."},
    ]
    encoded = ConversationEncoder.for_model(tokenizer, "InternVL3_5-8B").encode(conversation_turns(conversation))
    assert runs(tokenizer, encoded) == [
        (
            False,
            f"<|im_start|>system\n{THINKING_SYSTEM_PROMPT}<|im_end|>\n"
            "<|im_start|>user\nWhat is the dog doing?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (True, "<think>\nThe dog runs.\n</think>\n\nThe dog runs after the ball.<|im_end|>"),
        (False, "\n"),
    ]
    plain = ConversationEncoder.for_model(tokenizer, "InternVL3_5-30B-A3B").encode(conversation_turns(MULTI_TURN), [1])
    internvl3 = ConversationEncoder.for_model(tokenizer, "InternVL3-8B").encode(conversation_turns(MULTI_TURN), [1])
    assert (
        plain.input_ids.tolist() == internvl3.input_ids.tolist() and plain.labels.tolist() == internvl3.labels.tolist()
    )


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("<think>unclosed", "turn 1: a thinking answer holds one <think>…</think> block, not 1 <think> and 0 </think>"),
        ("no start</think>answer", "not 0 <think> and 1 </think>"),
        ("<think>a</think><think>b</think>c", "not 2 <think> and 2 </think>"),
        ("</think>x<think>", "turn 1: a thinking answer starts with <think>, not with '</think>x'"),
        ("Sure. <think>a</think>b", "turn 1: a thinking answer starts with <think>, not with 'Sure.'"),
        ("<think>a</think> \n", "turn 1: a thinking answer needs an answer after </think>"),
    ],
)
@pytest.mark.parametrize("model", ["InternVL3_5-8B", GPT_OSS])
def test_malformed_thinking_answers_are_bad_conversations(harmony_tokenizer, model, answer, message):
    turns = conversation_turns([{"from": "human", "value": "q"}, {"from": "gpt", "value": answer}])
    with pytest.raises(ConversationError) as caught:
        ConversationEncoder.for_model(harmony_tokenizer, model).tokenize(turns, 0)
    assert message in str(caught.value)


def test_gpt_oss_refuses_harmony_tokens_in_the_text_and_tokenizers_without_them(tokenizer, harmony_tokenizer):
    encoder = ConversationEncoder.for_model(harmony_tokenizer, GPT_OSS)
    for text in ("a<|channel|>", "b<|return|>", "<|start|>user"):
        with pytest.raises(PlaceholderError, match="reserved token"):
            encoder.tokenize(conversation_turns([{"from": "human", "value": "q"}, {"from": "gpt", "value": text}]), 0)
    with pytest.raises(ValueError, match="lacks the tokens <\\|start\\|>, <\\|end\\|>, <\\|message\\|>"):
        ConversationEncoder.for_model(tokenizer, GPT_OSS)


def test_the_tiny_tokenizer_speaks_harmony_on_request():
    from internvl_trainer.model.tiny import tiny_tokenizer

    harmony = tiny_tokenizer(harmony=True)
    encoded = ConversationEncoder.for_model(harmony, GPT_OSS).encode(conversation_turns(MULTI_TURN[:2]), [1])
    # The answer ends with the end of sequence, learned: generation stops where training ends.
    assert harmony.eos_token == "<|return|>"
    assert encoded.input_ids[-1].item() == encoded.labels[-1].item() == harmony.eos_token_id
    with pytest.raises(ValueError, match="lacks the tokens"):
        ConversationEncoder.for_model(tiny_tokenizer(), GPT_OSS)
