"""LeviTor: 3D trajectory control of SVD with K-means control points (paper 003)."""
