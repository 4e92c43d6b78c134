"""Re-create ``sports2d_mediapipe.json``: MediaPipe Pose landmarks of every frame of Sports2D's ``demo.mp4``.

Not part of the package's runtime (gpumosaic never imports mediapipe). Run it once in a throw-away
environment (mediapipe 0.10.21 needs numpy < 2)::

    python3 -m venv /tmp/mpenv
    /tmp/mpenv/bin/pip install mediapipe==0.10.21 'numpy<2' opencv-python-headless
    /tmp/mpenv/bin/python label_sports2d_mediapipe.py PATH/TO/Sports2D/Demo/demo.mp4 sports2d_mediapipe.json

Settings: legacy ``mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1)`` (complexities 0
and 2 download their model at run time), each frame labelled on its own (no tracking), frames read
with ``cv2.VideoCapture`` and passed as RGB. Landmarks are stored in pixels of the frame
(``x = lm.x * width``, ``y = lm.y * height``) with MediaPipe's ``visibility``; a frame where no person was
found is stored as ``null``.
"""

import datetime
import hashlib
import json
import sys

import cv2
import mediapipe as mp

LANDMARKS = [lm.name.lower() for lm in mp.solutions.pose.PoseLandmark]


def main(video: str, out: str) -> None:
    digest = hashlib.sha256(open(video, "rb").read()).hexdigest()
    cap = cv2.VideoCapture(video)
    frames, width, height = {}, None, None
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                min_detection_confidence=0.5) as pose:
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            height, width = bgr.shape[:2]
            result = pose.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if result.pose_landmarks is None:
                frames[str(index)] = None
            else:
                frames[str(index)] = [[round(lm.x * width, 2), round(lm.y * height, 2), round(lm.visibility, 4)]
                                      for lm in result.pose_landmarks.landmark]
            index += 1
    record = {
        "format": "gpumosaic-real-labels",
        "source": {"package": "sports2d==0.8.34", "file": "Sports2D/Demo/demo.mp4", "sha256": digest,
                   "frames": index, "width": width, "height": height},
        "provenance": {
            "labeller": f"mediapipe=={mp.__version__}",
            "settings": "mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, "
                        "enable_segmentation=False, min_detection_confidence=0.5); frames as RGB",
            "date": datetime.date.today().isoformat(),
            "licence": "labels: produced by the gpumosaic authors with MediaPipe (Apache-2.0); "
                       "video: Sports2D (BSD-3-Clause)",
        },
        "landmarks": LANDMARKS,
        "columns": ["x_px", "y_px", "visibility"],
        "frames": frames,
    }
    with open(out, "w") as f:
        json.dump(record, f, separators=(",", ":"))
    found = sum(v is not None for v in frames.values())
    print(f"labelled {found} of {index} frames -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
