"""AnyI2V: training-free motion control of any conditional image with box trajectories.

(AnyI2V, appendix.) Built in parts: `boxes` derives the boxes and query points from the
MotionSpec.
"""
