"""The distributed pipeline. Only ``runner`` imports Ray; everything else is plain Python."""
