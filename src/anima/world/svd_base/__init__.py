"""A tiny Stable Video Diffusion base model trained from scratch on toy clips
(`anima.world.svd_base.train`, ``anima train svd-base``)."""
