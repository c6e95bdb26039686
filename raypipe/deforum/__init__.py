"""Deforum's animation language, without a model: keyframe schedules (schedule.py), settings
files and objects (settings.py), camera warps (warps.py), colour coherence (colour.py) and frame
noise (noise.py). The stage that runs them on Stable Diffusion is raypipe/stages/deforum.py."""
