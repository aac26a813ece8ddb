"""Pixel normalisation statistics, applied by the readers (the stored images stay uint8, unnormalised).

Per-channel (R, G, B) mean and std of images scaled to [0, 1]. Grayscale X-rays are repeated to 3 channels for
these; with ``channels=1`` the readers use the average of the three means and of the three stds.
"""

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision / Keras ImageNet models
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI CLIP, BiomedCLIP
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # plain [0, 1]
}


def mean_std(name: str, channels: int) -> tuple[list[float], list[float]]:
    """Mean and std lists of length ``channels`` (1 or 3) for a statistics set."""
    if name not in NORMALIZATION:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATION)}, not {name!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    mean, std = NORMALIZATION[name]
    if channels == 1:
        return [sum(mean) / 3], [sum(std) / 3]
    return list(mean), list(std)
