"""Judging results: CLIP-I, CLIP-T, KID and attention scores, and the pictures that explain a run."""
