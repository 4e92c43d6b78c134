"""Stand-alone worker for :mod:`gpumosaic.fidelity`: MediaPipe Pose on a batch of images.

Not imported by gpumosaic: it runs as a subprocess under the detector's own Python (a separate virtual
environment with ``mediapipe==0.10.21``, which pins ``numpy < 2``), so the package never depends on
MediaPipe. It imports only numpy and mediapipe.

Usage::

    DETECTOR_PYTHON detector_worker.py IN.npz OUT.npz     # detect
    DETECTOR_PYTHON detector_worker.py --version           # prints the mediapipe version (a probe)

``IN.npz`` holds ``images``: uint8 (N, H, W, 3) RGB. ``OUT.npz`` receives ``landmarks``: float32 (N, 33, 3)
``[x_px, y_px, visibility]`` in pixels of the input image (NaN where no person was found), ``detected``: bool
(N,), and ``version``: the mediapipe version string.

Settings: legacy ``mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
enable_segmentation=False, min_detection_confidence=0.5)``, each image on its own (no tracking), the same as
the labeller of the shipped Sports2D labels. Complexity 1's model ships inside the wheel, so nothing is
downloaded.
"""

import sys


def main(argv):
    import mediapipe as mp

    if argv[:1] == ["--version"]:
        print(mp.__version__)
        return 0
    if len(argv) != 2:
        print("usage: detector_worker.py IN.npz OUT.npz | --version", file=sys.stderr)
        return 2
    import numpy as np

    with np.load(argv[0], allow_pickle=False) as data:
        images = data["images"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        print(f"expected images as uint8 (N, H, W, 3), got {images.shape} {images.dtype}", file=sys.stderr)
        return 2
    n, height, width = images.shape[:3]
    landmarks = np.full((n, 33, 3), np.nan, dtype=np.float32)
    detected = np.zeros(n, dtype=bool)
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                min_detection_confidence=0.5) as pose:
        for k in range(n):
            result = pose.process(np.ascontiguousarray(images[k]))
            if result.pose_landmarks is None:
                continue
            detected[k] = True
            landmarks[k] = [[lm.x * width, lm.y * height, lm.visibility] for lm in result.pose_landmarks.landmark]
    np.savez(argv[1], landmarks=landmarks, detected=detected, version=np.array(mp.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
