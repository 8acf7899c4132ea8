"""curate: data curation steps for vehicle photo datasets (scan, dedupe, flag-noise, split, review)."""
