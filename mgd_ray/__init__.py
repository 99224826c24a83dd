"""mgd_ray."""
