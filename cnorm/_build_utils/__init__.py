"""Build-time helpers of setup.py, loaded there by file path (the cnorm package itself
cannot be imported before its extensions are built)."""
