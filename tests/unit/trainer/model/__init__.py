"""Tests of internvl_trainer.model: layouts, loading, freezing, LoRA, merge and export."""
