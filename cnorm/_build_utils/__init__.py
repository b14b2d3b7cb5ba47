"""Build-time helpers of setup.py, loaded by file path (cnorm cannot be imported before
it is built)."""
