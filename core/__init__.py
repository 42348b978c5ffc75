"""Monohuman core: one photo of a person in, a 3D body mesh out. No bpy here."""
