"""Build-time helpers of setup.py (loaded by file path: cnorm is not importable before it is built)."""
