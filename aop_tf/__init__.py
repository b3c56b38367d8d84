"""aop_tf: Angle of Progression landmark detection on transperineal ultrasound.

Landmarks are always ordered PS1, PS2, FH1. Points are `(x, y)` = (column, row) in pixels of the
original image, origin top-left, pixel centres at integers.
"""

LANDMARK_NAMES = ("PS1", "PS2", "FH1")
NUM_LANDMARKS = len(LANDMARK_NAMES)

__version__ = "0.1.0"
