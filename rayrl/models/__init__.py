"""Models: the embedded tiny Qwen3 model and tokenizer, loading by name, the supervised warm-start."""
