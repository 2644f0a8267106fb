"""Cross-attention: capturing maps inside ComfyUI's UNet, a token's maps during sampling, localisation measures, heatmaps."""
