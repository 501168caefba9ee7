"""Prompt learning: LoRA, prompt tuning and prefix tuning adapters, trained apart from the base model."""
