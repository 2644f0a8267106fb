"""Headless tooling around the real ComfyUI host: server lifecycle, workflow conversion, fixtures.

Used by the tests, the demo and users who batch-run workflows. Never imported by ComfyUI itself.
"""
