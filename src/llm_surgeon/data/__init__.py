"""Text sets (named sets and files) and calibration windows."""
