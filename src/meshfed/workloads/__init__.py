"""The echo/client program every backend runs (one stdlib-only file: echo.py)."""
