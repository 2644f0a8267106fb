"""Weight files: safetensors reading and writing, trained results, applying them to a model, LoRA export."""
