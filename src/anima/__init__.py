"""anima: animate a single image into a video under precise 3D motion control."""

__version__ = "0.1.0"
