"""Text conditioning: our word tokenizer and the text encoders (small from scratch, or frozen CLIP)."""
