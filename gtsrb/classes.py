"""The 43 GTSRB classes: human-readable names and how a mirror image relabels them.

Class ids are the folder numbers of the official dataset (``00000`` .. ``00042``).
Every place that shows a class (logs, reports, overlays) goes through
:func:`class_name` so that people read "Stop", not "14".
"""

from __future__ import annotations

GTSRB_CLASS_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)",  # 0
    "Speed limit (30km/h)",  # 1
    "Speed limit (50km/h)",  # 2
    "Speed limit (60km/h)",  # 3
    "Speed limit (70km/h)",  # 4
    "Speed limit (80km/h)",  # 5
    "End of speed limit (80km/h)",  # 6
    "Speed limit (100km/h)",  # 7
    "Speed limit (120km/h)",  # 8
    "No passing",  # 9
    "No passing for vehicles over 3.5 t",  # 10
    "Right-of-way at the next intersection",  # 11
    "Priority road",  # 12
    "Yield",  # 13
    "Stop",  # 14
    "No vehicles",  # 15
    "Vehicles over 3.5 t prohibited",  # 16
    "No entry",  # 17
    "General caution",  # 18
    "Dangerous curve to the left",  # 19
    "Dangerous curve to the right",  # 20
    "Double curve",  # 21
    "Bumpy road",  # 22
    "Slippery road",  # 23
    "Road narrows on the right",  # 24
    "Road work",  # 25
    "Traffic signals",  # 26
    "Pedestrians",  # 27
    "Children crossing",  # 28
    "Bicycles crossing",  # 29
    "Beware of ice/snow",  # 30
    "Wild animals crossing",  # 31
    "End of all speed and passing limits",  # 32
    "Turn right ahead",  # 33
    "Turn left ahead",  # 34
    "Ahead only",  # 35
    "Go straight or right",  # 36
    "Go straight or left",  # 37
    "Keep right",  # 38
    "Keep left",  # 39
    "Roundabout mandatory",  # 40
    "End of no passing",  # 41
    "End of no passing by vehicles over 3.5 t",  # 42
)
NUM_GTSRB_CLASSES = len(GTSRB_CLASS_NAMES)

# Signs that look the same in a mirror: a horizontal flip keeps their label.
_MIRROR_SYMMETRIC = (11, 12, 13, 15, 17, 18, 22, 26, 30, 35)
# Pairs that turn into each other in a mirror: a flip swaps their labels.
_MIRROR_PAIRS = ((19, 20), (33, 34), (36, 37), (38, 39))


def gtsrb_hflip_map() -> list[int]:
    """Label of each class after a horizontal flip, or -1 where a mirror image is no real sign.

    A plain random flip would teach the model that "turn left" looks like
    "turn right"; the augmentation only flips the images this map allows.
    """
    mapping = [-1] * NUM_GTSRB_CLASSES
    for c in _MIRROR_SYMMETRIC:
        mapping[c] = c
    for a, b in _MIRROR_PAIRS:
        mapping[a], mapping[b] = b, a
    return mapping


def class_name(index: int, names: tuple[str, ...] | list[str] = GTSRB_CLASS_NAMES) -> str:
    """Readable name of a class id; falls back to the number for unknown ids."""
    return names[index] if 0 <= index < len(names) else str(index)
