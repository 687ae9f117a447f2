"""Helpers shared by the tests: toy models and data, reference runtimes, scripts."""

from pathlib import Path

# The photos shipped inside the package (deeplab/photos/, `deeplab examples`).
PHOTOS = Path(__file__).resolve().parents[2] / "deeplab" / "photos"
