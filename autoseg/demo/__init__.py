"""Bundled demo data (24 Hippocampus cases, CC-BY-SA 4.0; see the LICENSE.md beside it)."""
from pathlib import Path

DEMO_DATASET = Path(__file__).parent / "Dataset004_Hippocampus24"
