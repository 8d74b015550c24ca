"""seal-trl: Self-Adapting Language Models (SEAL) for Hugging Face TRL."""
