"""Fine-tuning recipes (one module each) and WiSE-FT; the finetune stage picks one by name."""
