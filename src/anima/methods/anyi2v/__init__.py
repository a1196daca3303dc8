"""AnyI2V: training-free motion control of any conditional image with box trajectories.

(AnyI2V, appendix.) Built in parts, one job a module: `boxes` derives the boxes and query
points from the MotionSpec; `loading` gives the AnimateDiff components (SD1.5 + motion adapter,
or tiny random ones) and the release's DDIM; `inversion` inverts the conditional image (one
frame, motion modules off) and keeps the decoder features at t = 201; `injection` puts them into
frame 0 of the conditional half on the first steps, frames 1.. attending to frame 0's keys and
values; `pipeline` is `AnyI2VPipeline`, AnimateDiff sampling at any size and length (sliding
windows) with that injection. The latent optimisation along the boxes comes next.
"""
