"""X-Dyna: human image animation from a driving pose and face video.

Driving inputs (one job a module): `keypoints` (the `DrivingKeypoints` container, OpenPose
JSON in/out, toy-world figures), `extract` (keypoints from images and videos with mediapipe,
an optional extra), `align` (driving skeleton -> reference person), `pose_map` (the Pose
ControlNet condition: the body skeleton without head) and `face` (the S-Face ControlNet
condition: eye + mouth patches and the face crop of the driving frame).

Generation: `adapter` (the Dynamics-Adapter), `reference_frame` (the reference as a clean frame
0: skipped by the motion modules, zero ControlNet residuals), `pipeline` (`XDynaPipeline`),
`loading` (components from a weights directory or tiny, with the optional IP-Adapter-Plus of
`anima.models.ip_adapter`), `method` (the ``xdyna`` method and its spec ``pose`` section).
Training: `dataset`, `train` (``anima train xdyna``). Release checkpoints: `convert`
(``anima weights convert xdyna``).
"""
