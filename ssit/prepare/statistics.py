"""Reference channel statistics of preprocessed fundus crops.

The mean and standard deviation, per RGB channel in [0, 1], of EyePACS photographs after the
fundus crop: the normalisation pre-training and grading use unless told otherwise. (The shard
writer records the statistics of each data set it writes in its ``manifest.json``.)
"""

from __future__ import annotations

EYEPACS_MEAN: tuple[float, float, float] = (0.4258, 0.2974, 0.2129)
EYEPACS_STD: tuple[float, float, float] = (0.2767, 0.2024, 0.1686)
