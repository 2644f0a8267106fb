"""The shapes world: a procedural world of balls and boxes, and a tiny SD1.5-format model pretrained on it.

It lets anyone measure on a CPU what the method is for: a learned token attends to its own
object and generates it without the other objects of its training photos.
"""
