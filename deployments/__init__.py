"""One Ray Serve deployment per model: request schema -> model call -> output files."""
