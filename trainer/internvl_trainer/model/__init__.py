"""The model side of the trainer: loading InternVL in either checkpoint layout, preparing it for
training (freezing, drop path, checkpointing, LoRA), and merging and exporting it.

Modules, one concept each:

- ``layouts``: the key table between the original ``InternVLChatModel`` layout and transformers'
  native ``InternVLForConditionalGeneration``, fused qkv/wqkv splitting, whole state dicts.
- ``original_config``: the original config.json and its native counterpart.
- ``load``: a folder (local, or an S3 prefix through the storage layer) → native model, tokenizer
  and processor; flash-attention 2 or sdpa.
- ``processor``: InternVL's special tokens, the ``internvl2_5`` chat template, a processor that
  needs no torchvision.
- ``drop_path``: stochastic depth for the native vision tower.
- ``activation_checkpointing``: non-reentrant checkpointing (torch and transformers only).
- ``freeze``: freeze flags, last N vision layers unfrozen, frozen vision pieces kept in eval mode.
- ``lora``: PEFT adapters by module-path pattern; merging.
- ``optim``: AdamW groups without decay for norms, biases and embeddings.
- ``moe``: the MoE blocks of Qwen3-MoE and GPT-OSS as ZeRO-3 leaves; their routers'
  load-balancing loss as InternVL adds it.
- ``prepare``: ``MethodConfig`` applied to a loaded model.
- ``export``: either layout written with tokenizer and processor, published with a manifest.
- ``checkpoint``: existing checkpoint folders merged (LoRA) or re-exported; what
  ``internvl-train merge`` and ``export`` run.
- ``tiny``: a tiny random model and tokenizer for the demo, benchmarks and tests.

Everything here imports torch; ``internvl_trainer.cli`` imports it only inside the commands that
need it.
"""
