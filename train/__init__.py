"""Monohuman training: dataset generation (Blender, Anny bodies, scans), voxelisation, training and evaluation."""
