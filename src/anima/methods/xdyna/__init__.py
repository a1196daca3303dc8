"""X-Dyna (paper 004): human image animation from a driving pose and face video.

Driving-input side (one job a module): `keypoints` (the `DrivingKeypoints` container, OpenPose
JSON in/out, toy-world figures), `extract` (keypoints from images and videos with mediapipe,
an optional extra), `align` (driving skeleton -> reference person), `pose_map` (the Pose
ControlNet condition: the body skeleton without head) and `face` (the S-Face ControlNet
condition: eye + mouth patches and the face crop of the driving frame).
"""
